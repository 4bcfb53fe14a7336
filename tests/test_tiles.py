"""Tile writer and .vsvi reader: layout, round trips at mip 0 and through the pyramid."""

import json

import numpy as np
import pytest

from membrane_py.codes import read_png
from membrane_py.geometry import Box
from membrane_py.vastapi.descriptors import read_vsvi
from membrane_py.volumes.base import ArrayVolume
from membrane_py.volumes.open import open_volume
from membrane_py.volumes.synthetic import make_synthetic
from membrane_py.volumes.tiles import TileWriter, VsviVolume, tile_path

TILE = 128  # small tiles keep the tests fast; the layout is the same as for 1024


@pytest.fixture(scope="module")
def em():
    return make_synthetic((4, 300, 520), seed=3).em  # edges not multiples of the tile


def test_tile_path_layout(tmp_path):
    assert tile_path(tmp_path, 2, 7, 0, 11) == \
        tmp_path / "mip2" / "Sect_000007" / "sect_000007_r0_c11.png"


def test_write_read_back_identical_and_pyramid(tmp_path, em):
    w = TileWriter(tmp_path, em.shape, tile=TILE)
    w.write_block(Box.full(em.shape), em)
    assert w.grid() == (3, 5)
    edge = read_png(tile_path(tmp_path, 0, 1, 2, 4))
    assert edge.shape == (TILE, TILE)  # padded to a full tile
    assert (edge[300 - 2 * TILE:] == 0).all() and (edge[:, 520 - 4 * TILE:] == 0).all()
    assert w.exists_valid(1, 2, 4) and not w.exists_valid(9, 0, 0)
    top = w.build_pyramid()
    assert top == 3  # 520 >> 3 = 65 fits one 128 tile
    desc = w.write_descriptor(tmp_path / "em.vsvi", (40, 8, 8), "synthetic EM")
    v = read_vsvi(desc)
    assert (v.source_min_s, v.source_max_s, v.source_max_r, v.source_max_c) == (0, 3, 2, 4)
    assert (v.source_min_m, v.source_max_m) == (1, 3)
    assert v.source_file_name_template == "./mip0/Sect_%06d/sect_%06d_r%d_c%d.png"

    vol = VsviVolume(desc)
    assert vol.shape == em.shape and vol.voxel_size == (40.0, 8.0, 8.0)
    assert vol.name == "synthetic EM" and vol.dtype == np.uint8
    np.testing.assert_array_equal(vol.read(Box.full(em.shape)), em)
    box = Box(1, 3, 17, 250, 100, 499)
    np.testing.assert_array_equal(vol.read(box), em[box.slices()])
    ref = ArrayVolume(em)
    full = Box.full(vol.shape_at(1))
    np.testing.assert_array_equal(vol.read(full, 1), ref.read(full, 1))
    for mip in (2, 3):  # each level is the rounded 2x mean of the one below: within 1 grey
        full = Box.full(vol.shape_at(mip))
        diff = vol.read(full, mip).astype(int) - ref.read(full, mip)
        assert np.abs(diff).max() <= 1
    assert tile_path(tmp_path, 1, 0, 1, 2).exists()  # pyramid tiles really were read
    assert open_volume(desc).shape == em.shape


def test_partial_z_and_missing_tiles_read_black(tmp_path, em):
    w = TileWriter(tmp_path, em.shape, tile=TILE)
    w.write_block(Box(2, 4, 0, 256, 0, 256), em[2:4, :256, :256])
    desc = w.write_descriptor(tmp_path / "part.vsvi", (40, 8, 8), "part")
    raw = json.loads(desc.read_text())
    assert (raw["SourceMinS"], raw["SourceMaxS"], raw["OffsetZ"]) == (0, 3, 0)  # whole volume
    assert (raw["SourceMinM"], raw["SourceMaxM"]) == (0, 0)  # no pyramid built
    out = VsviVolume(desc).read(Box.full(em.shape))
    np.testing.assert_array_equal(out[2:4, :256, :256], em[2:4, :256, :256])
    assert not out[:2].any() and not out[2:4, 256:].any() and not out[:, :, 256:].any()


def test_writer_at_mip1_described_and_read_at_mip1(tmp_path, em):
    small = ArrayVolume(em).read(Box.full((4, 150, 260)), 1)
    w = TileWriter(tmp_path, em.shape, mip=1, tile=TILE)
    w.write_block(Box.full(small.shape), small)
    w.build_pyramid(labels=False)
    desc = w.write_descriptor(tmp_path / "m1.vsvi", (40, 8, 8), "mip1 layer")
    v = read_vsvi(desc)
    assert (v.source_min_m, v.source_max_m) == (1, 3)  # 260 -> 130 -> 65 px wide
    assert (v.target_data_size_y, v.target_data_size_x) == (300, 520)
    vol = VsviVolume(desc)
    np.testing.assert_array_equal(vol.read(Box.full(small.shape), 1), small)
    assert not vol.read(Box(0, 1, 0, 8, 0, 8), 0).any()  # mip 0 was never written


def test_rgb_and_label_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 200, 130, 3), dtype=np.uint8)
    w = TileWriter(tmp_path / "rgb", rgb.shape[:3], tile=TILE, channels=3)
    w.write_block(Box.full(rgb.shape[:3]), rgb)
    tile = read_png(tile_path(tmp_path / "rgb", 0, 1, 0, 0))
    np.testing.assert_array_equal(tile[:TILE, :TILE], rgb[1, :TILE, :TILE])  # RGB, not BGR
    vol = VsviVolume(w.write_descriptor(tmp_path / "rgb.vsvi", (1, 1, 1), "rgb"))
    assert vol.channels == 3
    np.testing.assert_array_equal(vol.read(Box.full(rgb.shape[:3])), rgb)

    labels = rng.integers(1, 5, (1, 256, 256), dtype=np.uint8)
    w = TileWriter(tmp_path / "lab", labels.shape, tile=TILE)
    w.write_block(Box.full(labels.shape), labels)
    w.build_pyramid(labels=True)
    mip1 = read_png(tile_path(tmp_path / "lab", 1, 0, 0, 0))
    np.testing.assert_array_equal(mip1, labels[0, ::2, ::2])  # nearest, never blended


def test_write_block_rejects_misaligned_boxes(tmp_path):
    w = TileWriter(tmp_path, (2, 300, 300), tile=TILE)
    with pytest.raises(ValueError, match="start 10 is not a multiple"):
        w.write_block(Box(0, 1, 10, 128, 0, 128), np.zeros((1, 118, 128), np.uint8))
    with pytest.raises(ValueError, match="end 200 is neither"):
        w.write_block(Box(0, 1, 0, 128, 0, 200), np.zeros((1, 128, 200), np.uint8))
    with pytest.raises(ValueError, match="does not match box shape"):
        w.write_block(Box(0, 1, 0, 128, 256, 300), np.zeros((1, 128, 40), np.uint8))
    with pytest.raises(ValueError, match="no tiles written"):
        w.write_descriptor(tmp_path / "x.vsvi", (1, 1, 1), "x")


def test_stale_temporaries_removed_but_tiles_kept(tmp_path):
    from membrane_py.volumes.tiles import remove_stale_temporaries, tile_path

    tile = tile_path(tmp_path, 0, 3, 0, 1)
    tile.parent.mkdir(parents=True)
    tile.write_bytes(b"png")
    stale = tile.parent / f".{tile.name}.abc123.tmp"
    stale.write_bytes(b"half a tile")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and tile.read_bytes() == b"png"

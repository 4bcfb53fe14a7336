"""Volume sources: image folders, TIFF, HDF5 (+ .h5.gz), zarr, open_volume, real data."""

import gzip
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from membrane_py.geometry import Box
from membrane_py.volumes import (
    ArrayVolume,
    Hdf5Volume,
    ImageFolderVolume,
    TiffVolume,
    ZarrVolume,
    open_volume,
)
from membrane_py.volumes.hdf5 import cache_dir

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test data absent: {DATA}")


def _stack(seed=0, shape=(5, 40, 60), dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)


def test_image_folder_natural_order_and_lazy_reads(tmp_path):
    vol = _stack()
    for z in range(5):  # names whose text order differs from their numeric order
        cv2.imwrite(str(tmp_path / f"sec{[2, 10, 1, 33, 7][z]}.png"), vol[z])
    order = np.argsort([2, 10, 1, 33, 7])
    src = ImageFolderVolume(tmp_path, voxel_size=(30, 4, 4))
    names = ["sec1.png", "sec2.png", "sec7.png", "sec10.png", "sec33.png"]
    assert [p.name for p in src.files] == names
    assert src.shape == (5, 40, 60) and src.dtype == np.uint8 and src.voxel_size == (30, 4, 4)
    np.testing.assert_array_equal(src.read(Box(1, 4, 3, 30, 5, 50)), vol[order][1:4, 3:30, 5:50])


def test_image_folder_odd_size_named(tmp_path):
    cv2.imwrite(str(tmp_path / "1.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(tmp_path / "2.png"), np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="2.png is 12x10"):
        ImageFolderVolume(tmp_path)


def test_rgb_labels_become_ids_and_rgb_em_keeps_channels(tmp_path):
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[:, :4] = (1, 2, 3)
    rgb[:, 4:] = (0, 1, 255)
    for z in range(2):
        cv2.imwrite(str(tmp_path / f"{z}.png"), cv2.cvtColor(rgb[z], cv2.COLOR_RGB2BGR))
    labels = ImageFolderVolume(tmp_path, is_label=True).read(Box.full((2, 8, 8)))
    assert labels.dtype == np.uint32
    assert set(np.unique(labels)) == {1 * 65536 + 2 * 256 + 3, 256 + 255}
    em = ImageFolderVolume(tmp_path)
    assert em.channels == 3
    np.testing.assert_array_equal(em.read(Box.full((2, 8, 8))), rgb)


def test_tiff_round_trip(tmp_path):
    vol = _stack(1, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    src = open_volume(tmp_path / "v.tif")
    assert isinstance(src, TiffVolume) and src.shape == vol.shape and src.dtype == np.uint16
    np.testing.assert_array_equal(src.read(Box(0, 5, 0, 40, 0, 60)), vol)
    mip1 = ArrayVolume(vol).read(Box(0, 2, 0, 20, 0, 30), mip=1)
    np.testing.assert_array_equal(src.read(Box(0, 2, 0, 20, 0, 30), mip=1), mip1)


def test_hdf5_dataset_choice_and_gzip_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    vol = _stack(2)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = vol
        f["transforms"] = np.zeros((4, 2), np.int64)
    assert Hdf5Volume(tmp_path / "a.h5").dataset == "raw"  # the only 3D dataset
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["one"], f["two"] = vol, vol
    with pytest.raises(ValueError, match="one .*two"):
        Hdf5Volume(tmp_path / "b.h5")
    two = open_volume(f"{tmp_path / 'b.h5'}:two")
    np.testing.assert_array_equal(two.read(Box.full(vol.shape)), vol)

    gz = tmp_path / "c.h5.gz"
    gz.write_bytes(gzip.compress((tmp_path / "a.h5").read_bytes()))
    src = open_volume(gz)
    np.testing.assert_array_equal(src.read(Box.full(vol.shape)), vol)
    cached = list(cache_dir().iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("_c.h5")
    assert cache_dir() == tmp_path / "cache" / "membrane-py" / "gunzip"
    mtime = cached[0].stat().st_mtime_ns
    open_volume(gz)  # second open reuses the cache
    assert cached[0].stat().st_mtime_ns == mtime


def test_zarr_round_trip(tmp_path):
    vol = _stack(3)
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=vol.shape, chunks=(2, 16, 16),
                        dtype=vol.dtype)
    z[:] = vol
    src = open_volume(tmp_path / "a.zarr")
    assert isinstance(src, ZarrVolume)
    np.testing.assert_array_equal(src.read(Box(1, 3, 5, 35, 7, 59)), vol[1:3, 5:35, 7:59])
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("em", shape=vol.shape, dtype=vol.dtype)[:] = vol
    g.create_array("seg", shape=vol.shape, dtype=np.uint32)[:] = vol
    with pytest.raises(ValueError, match="arrays: .*em"):
        open_volume(tmp_path / "g.zarr")
    seg = open_volume(f"{tmp_path / 'g.zarr'}:seg", labels=True)
    assert seg.is_label and seg.dtype == np.uint32


def test_open_volume_specs_and_errors(tmp_path):
    em = open_volume("synthetic:4x64x96:5")
    gt = open_volume("synthetic:4x64x96:5", labels=True)
    assert em.shape == gt.shape == (4, 64, 96) and gt.is_label and gt.dtype == np.uint32
    assert em.name == "synthetic EM" and gt.name == "synthetic ground truth"
    assert open_volume("synthetic:4x64x96:5") is em  # memoised
    with pytest.raises(ValueError, match="synthetic:ZxYxX"):
        open_volume("synthetic:4x64")
    with pytest.raises(FileNotFoundError, match="nothere.*accepted forms"):
        open_volume(tmp_path / "nothere.tif")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported volume"):
        open_volume(tmp_path / "x.txt")


@needs_data
def test_real_isbi_and_fib25():
    em = open_volume(DATA / "isbi2012" / "images")
    assert em.shape == (20, 512, 512) and em.dtype == np.uint8
    labels = open_volume(DATA / "isbi2012" / "labels", labels=True)
    assert labels.shape == (20, 512, 512) and labels.is_label
    assert set(np.unique(labels.read(Box(0, 1, 0, 512, 0, 512)))) <= {0, 255}
    fib = open_volume(DATA / "fib25_sample2" / "grayscale")
    assert fib.shape == (250, 250, 250) and fib.files[0].name == "iso.2600.png"
    gt = open_volume(f"{DATA / 'fib25_sample2' / 'groundtruth.h5.gz'}:stack", labels=True)
    assert gt.shape == (250, 250, 250) and gt.dtype == np.int32
    assert gt.read(Box(0, 1, 0, 250, 0, 250)).max() > 0

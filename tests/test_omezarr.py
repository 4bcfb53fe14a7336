"""OME-Zarr 0.4: the metadata layout, and both writers (prediction levels, instance ids) read
back through open_volume with their arrays and voxel sizes."""

import json

import numpy as np
import pytest

from membrane_py.edit.instances import write_instances
from membrane_py.geometry import Box
from membrane_py.predict.writers import Output, ZarrLevels
from membrane_py.volumes.omezarr import multiscales, open_multiscale
from membrane_py.volumes.open import open_volume


def _zattrs(path):
    """The group attributes as stored on disk (zarr format 2), read without zarr."""
    assert (path / ".zgroup").is_file()
    return json.loads((path / ".zattrs").read_text())["multiscales"][0]


def test_multiscales_fields():
    ms = multiscales("layer", 3, (40, 8, 6), mip=1, metadata={"job": 7})[0]
    assert ms["version"] == "0.4" and ms["name"] == "layer" and ms["type"] == "mean"
    assert ms["axes"] == [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    # level i is mip 1 + i: y and x are 8 and 6 nm times 2, 4, 8
    assert [d["coordinateTransformations"] for d in ms["datasets"]] == [
        [{"type": "scale", "scale": s}] for s in
        ([40.0, 16.0, 12.0], [40.0, 32.0, 24.0], [40.0, 64.0, 48.0])]
    assert ms["metadata"]["mip"] == 1 and ms["metadata"]["job"] == 7
    rgb = multiscales("c", 1, (1, 2, 3), channels=True, labels=True, origin=(2, 10, 20))[0]
    assert rgb["axes"][0] == {"name": "c", "type": "channel"} and rgb["type"] == "nearest"
    assert rgb["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 2.0, 3.0]},
        {"type": "translation", "translation": [1.0, 2.0, 20.0, 60.0]}]


def test_prediction_levels_read_back(tmp_path):
    rng = np.random.default_rng(1)
    out = Output("probability", "probability", "membranes", (1,))
    levels = ZarrLevels(tmp_path / "p.zarr", out, (2, 100, 150), 1, 2, 64, (40.0, 8.0, 8.0))
    level0 = rng.integers(1, 256, (2, 128, 192), dtype=np.uint8)  # 2 x 3 tiles, edges cropped
    for z in range(2):
        for r in range(2):
            for c in range(3):
                levels.write(0, (z, r, c), level0[z, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64])
    ms = _zattrs(tmp_path / "p.zarr")
    assert ms["name"] == "membranes" and ms["metadata"]["mip"] == 1
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[40.0, 16.0, 16.0], [40.0, 32.0, 32.0]]
    vol = open_volume(tmp_path / "p.zarr")
    assert vol.shape == (2, 100, 150) and vol.voxel_size == (40.0, 16.0, 16.0)
    np.testing.assert_array_equal(vol.read(Box.full(vol.shape)), level0[:, :100, :150])
    top = open_volume(f"{tmp_path / 'p.zarr'}:1")
    assert top.shape == (2, 50, 75) and top.voxel_size == (40.0, 32.0, 32.0)
    assert not top.read(Box.full(top.shape)).any()  # unwritten level reads 0 = missing
    assert open_volume(tmp_path / "p.zarr", voxel_size=(1, 2, 3)).voxel_size == (1, 2, 3)
    with pytest.raises(ValueError, match="holds other data"):  # resume into another volume
        ZarrLevels(tmp_path / "p.zarr", out, (2, 100, 151), 1, 2, 64, (40.0, 8.0, 8.0))


def test_rgb_prediction_reads_channels_last(tmp_path):
    out = Output("rgb", "rgb", "three", (0, 1, 2))
    levels = ZarrLevels(tmp_path / "c.zarr", out, (1, 20, 30), 0, 1, 32, (30.0, 4.0, 4.0))
    tile = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    levels.write(0, (0, 0, 0), tile)
    assert [a["name"] for a in _zattrs(tmp_path / "c.zarr")["axes"]] == ["c", "z", "y", "x"]
    vol = open_volume(tmp_path / "c.zarr")
    assert vol.channels == 3 and vol.voxel_size == (30.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.read(Box(0, 1, 5, 15, 3, 30))[0], tile[5:15, 3:30])


def test_instances_read_back_and_replace_atomically(tmp_path):
    labels = np.random.default_rng(2).integers(0, 9000, (2, 40, 50)).astype(np.uint32)
    box = Box(1, 3, 10, 50, 20, 70)  # at mip 1
    path = tmp_path / "ids.zarr"
    for _ in range(2):  # the second write replaces the first
        write_instances(labels, path, volume_shape=(4, 200, 300), box=box, mip=1,
                        voxel_size=(40, 8, 8), name="instances (2d)", attrs={"job": {"a": 1}})
    ms = _zattrs(path)
    assert ms["version"] == "0.4" and ms["type"] == "nearest"
    assert ms["datasets"] == [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [40.0, 16.0, 16.0]},
        {"type": "translation", "translation": [40.0, 160.0, 320.0]}]}]
    assert ms["metadata"]["box_zyx"] == [1, 3, 10, 50, 20, 70] and ms["metadata"]["job"] == {"a": 1}
    vol = open_volume(path, labels=True)
    # placed in the whole volume at its recorded box (mip 1), voxel size of mip 0
    assert vol.dtype == np.uint32 and vol.voxel_size == (40.0, 8.0, 8.0)
    assert vol.shape == (4, 200, 300)
    np.testing.assert_array_equal(vol.read(box, 1), labels)
    np.testing.assert_array_equal(vol.read(box.to_mip0(1))[:, ::2, ::2], labels)
    assert not vol.read(Box(0, 1, 0, 200, 0, 300)).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.zarr"]  # no temporaries left


def test_failed_instance_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("membrane_py.edit.instances.open_multiscale", fail)
    with pytest.raises(RuntimeError):
        write_instances(np.zeros((1, 4, 4), np.uint32), tmp_path / "x.zarr", volume_shape=(1, 4, 4),
                        box=Box(0, 1, 0, 4, 0, 4), mip=0, voxel_size=(1, 1, 1), name="x")
    assert list(tmp_path.iterdir()) == []


def test_open_multiscale_chunks_one_section_by_one_tile(tmp_path):
    arrays = open_multiscale(tmp_path / "a.zarr", (3, 2000, 700), 2, np.uint8, (1, 1, 1))
    assert [a.chunks for a in arrays] == [(1, 1024, 700), (1, 1000, 350)]
    assert json.loads((tmp_path / "a.zarr" / "0" / ".zarray").read_text())[
        "dimension_separator"] == "/"

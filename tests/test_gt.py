"""Ground-truth conversions and label import (synthetic exact truth + real data)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from membrane_py.augment import labels as L
from membrane_py.cli import app
from membrane_py.geometry import Box
from membrane_py.volumes.base import ArrayVolume

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _brute_membrane(ids: np.ndarray, t: int) -> np.ndarray:
    """Reference: a pixel is membrane when its t x t window (clipped) holds >1 id."""
    ny, nx = ids.shape
    lo = t // 2
    out = np.ones(ids.shape, np.uint8)
    for y in range(ny):
        for x in range(nx):
            win = ids[max(0, y - lo): y - lo + t, max(0, x - lo): x - lo + t]
            if np.unique(win).size > 1:
                out[y, x] = 2
    return out


@pytest.fixture(scope="module")
def synth():
    from membrane_py.volumes.synthetic import MEMBRANE_THICKNESS, make_synthetic

    return make_synthetic((2, 192, 192), seed=3), MEMBRANE_THICKNESS


def test_membrane_matches_synthetic_truth_exactly(synth):
    s, t = synth
    for z in range(s.instances.shape[0]):
        np.testing.assert_array_equal(L.instances_to_membrane(s.instances[z], t), s.membranes[z])


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_membrane_matches_brute_force(t):
    ids = np.random.default_rng(t).integers(0, 4, (3, 4)).repeat(5, 0).repeat(5, 1)
    np.testing.assert_array_equal(L.instances_to_membrane(ids, t), _brute_membrane(ids, t))


def test_wide_ids_do_not_saturate():
    ids = np.zeros((8, 8), np.uint32)
    ids[:, :4], ids[:, 4:] = 2**32 - 1, 2**32 - 2
    out = L.instances_to_membrane(ids, 3)
    assert (out[:, 3:5] == 2).all() and (out[:, :3] == 1).all()
    u8 = np.full((8, 8), 255, np.uint8)
    u8[:, 4:] = 254
    assert (L.instances_to_membrane(u8, 3)[:, 3:5] == 2).all()


def test_fill_ecs_and_unknown():
    ids = np.ones((10, 10), np.int32)
    ids[:, 5:] = 3
    ids[0:2] = 0
    filled = L.instances_to_membrane(ids, 3, fill_ecs=True)
    assert (filled[0:2] == 2).all()
    unk = L.instances_to_membrane(ids, 3, unknown_id=0)
    assert (unk[0:2] == 0).all()
    # no membrane against the unknown region, only between the two cells
    assert (unk[2, :4] == 1).all() and (unk[2:, 4:6] == 2).all()
    # on every side: painted cells inside an unpainted frame (the squares a user labels)
    framed = np.zeros((12, 12), np.int64)
    framed[2:10, 2:6], framed[2:10, 6:10] = 5, 7
    for turn in range(4):
        got = np.rot90(L.instances_to_membrane(np.rot90(framed, turn), 3, unknown_id=0), -turn)
        expected = np.where(framed == 0, 0, 1)
        expected[2:10, 5:7] = 2
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="both"):
        L.instances_to_membrane(ids, 3, fill_ecs=True, unknown_id=0)
    with pytest.raises(ValueError, match="integer"):
        L.instances_to_membrane(ids.astype(np.float32))


def test_skeleton_variants(synth):
    s, _ = synth
    mem = s.membranes[0].copy()
    mem[:40] = 0  # unknown rows
    with_unknown = L.membrane_to_skeleton(mem, has_unknown=True, filter_size=1)
    assert set(np.unique(with_unknown)) == {0, 1, 2}
    assert (with_unknown[:40] == 0).all() and (with_unknown[40:] > 0).all()
    # skeleton bands sit inside cells: mostly non-membrane pixels
    assert (s.membranes[0][with_unknown == 2] == 1).mean() > 0.8
    no_unknown = L.membrane_to_skeleton(s.membranes[0], has_unknown=False)
    assert set(np.unique(no_unknown)) == {1, 2}
    outs = [L.membrane_to_skeleton(s.membranes[0], filter_size=f) for f in (1, 3, 5)]
    assert not np.array_equal(outs[0], outs[2])  # the filter option has an effect
    with pytest.raises(ValueError, match="two values"):
        L.membrane_to_skeleton(np.arange(16).reshape(4, 4) % 4)


def test_rgb_label_image_import(tmp_path):
    ids = np.array([[0, 1, 256], [65536, 70000, 16777215]], np.int64)
    rgb = np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], -1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(L.read_label_image(tmp_path / "a.png"), ids)


def test_values_and_maps():
    raw = np.array([[0, 255], [255, 7]])
    with pytest.raises(ValueError, match=r"\[7\]"):
        L.map_values(raw, {0: 2, 255: 1})
    np.testing.assert_array_equal(L.map_values(raw, {0: 2, 255: 1, 7: 0}), [[2, 1], [1, 0]])
    np.testing.assert_array_equal(L.values_to_classes(raw, [255, 7]), [[0, 1], [1, 2]])


def test_stack_readers(tmp_path):
    import h5py
    import tifffile

    vol = np.random.default_rng(0).integers(0, 9, (3, 16, 20)).astype(np.int32)
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["stack"] = vol
    np.testing.assert_array_equal(L.read_label_stack(f"{tmp_path / 'gt.h5'}:stack"), vol)
    np.testing.assert_array_equal(L.read_label_stack(tmp_path / "gt.h5"), vol)
    tifffile.imwrite(tmp_path / "gt.tif", vol.astype(np.uint16), photometric="minisblack")
    np.testing.assert_array_equal(L.read_label_stack(tmp_path / "gt.tif"), vol)
    (tmp_path / "pngs").mkdir()
    for z in range(3):
        cv2.imwrite(str(tmp_path / "pngs" / f"s{z}.png"), vol[z].astype(np.uint8))
    np.testing.assert_array_equal(L.read_label_stack(tmp_path / "pngs"), vol)
    src = ArrayVolume(vol.astype(np.uint16), is_label=True)
    box = Box(1, 3, 2, 10, 4, 12)
    np.testing.assert_array_equal(L.read_volume_labels(src, box), vol[box.slices()])
    with pytest.raises(ValueError, match="unknown ground-truth source"):
        L.read_label_stack(tmp_path / "gt.csv")


def test_cli_gt_membrane_and_skeleton(tmp_path, synth):
    s, t = synth
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "sec0.png"), s.instances[0].astype(np.uint16))
    r = CliRunner().invoke(app, ["gt", "membrane", str(tmp_path / "in"), str(tmp_path / "mem"),
                                 "--thickness", str(t)])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "mem" / "sec0_border.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, s.membranes[0])
    r = CliRunner().invoke(app, ["gt", "skeleton", str(tmp_path / "mem"), str(tmp_path / "sk"),
                                 "--filter-size", "5"])
    assert r.exit_code == 0, r.output
    sk = cv2.imread(str(tmp_path / "sk" / "sec0_border_skel.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(sk)) == {1, 2}


@pytest.mark.realdata
def test_gala_instances_to_membranes():
    path = DATA / "gala" / "train-gt.lzf.h5"
    if not path.exists():
        pytest.skip(f"real data absent: {path}")
    gt = L.read_label_stack(f"{path}:stack")
    assert gt.shape == (50, 100, 200)
    mem = L.instances_to_membrane(gt[0], 3, fill_ecs=True)
    assert set(np.unique(mem)) == {1, 2}
    assert (mem[gt[0] == 0] == 2).all()  # gala's 0 = boundary becomes membrane
    assert 0.1 < (mem == 2).mean() < 0.6
    unk = L.instances_to_membrane(gt[0], 3, unknown_id=0)
    assert ((unk == 0) == (gt[0] == 0)).all()


@pytest.mark.realdata
def test_isbi_binary_labels():
    path = DATA / "isbi2012" / "labels" / "00.png"
    if not path.exists():
        pytest.skip(f"real data absent: {path}")
    raw = L.read_label_image(path)
    classes = L.binary_to_classes(raw, membrane_value=0)
    np.testing.assert_array_equal(classes, L.map_values(raw, {0: 2, 255: 1}))
    assert 0.1 < (classes == 2).mean() < 0.4  # membranes are a minority


def test_cli_gt_import_modes(tmp_path):
    (tmp_path / "bin").mkdir()
    mask = np.full((40, 50), 255, np.uint8)
    mask[:, 20:23] = 0  # ISBI style: 0 = membrane
    cv2.imwrite(str(tmp_path / "bin" / "a.png"), mask)
    r = CliRunner().invoke(app, ["gt", "import", str(tmp_path / "bin"), str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "out" / "a_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, np.where(mask == 0, 2, 1))

    ids = np.zeros((40, 50), np.uint16)
    ids[5:15, 5:15], ids[20:30, 30:45] = 7, 300  # 0 stays unknown
    (tmp_path / "ids").mkdir()
    cv2.imwrite(str(tmp_path / "ids" / "b.png"), ids)
    r = CliRunner().invoke(app, ["gt", "import", str(tmp_path / "ids"), str(tmp_path / "o2"),
                                 "--mode", "values"])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "o2" / "b_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out, np.select([ids == 7, ids == 300], [1, 2], 0))

    r = CliRunner().invoke(app, ["gt", "import", str(tmp_path / "ids"), str(tmp_path / "o3"),
                                 "--mode", "map", "--label-map", "0:0,7:3"])
    assert r.exit_code == 2 and "[300]" in r.output  # an unmapped value is named, nothing written
    assert not list(tmp_path.glob("o3/*.png"))
    r = CliRunner().invoke(app, ["gt", "import", str(tmp_path / "ids"), str(tmp_path / "o4"),
                                 "--box", "1,2,3"])
    assert r.exit_code == 2 and "6 comma-separated integers" in r.output


def test_cli_gt_membrane_from_vast_box(tmp_path, vast_server):
    """Ground truth read from a served segmentation layer, restricted to a box."""
    from membrane_py.volumes.synthetic import MEMBRANE_THICKNESS, make_synthetic

    truth = make_synthetic((8, 256, 256), seed=0).instances
    box = Box(2, 4, 10, 110, 20, 220)
    spec = f"vast://{vast_server.host}:{vast_server.port}"
    vast_box = ",".join(map(str, box.to_vast()))
    r = CliRunner().invoke(app, ["gt", "membrane", spec, str(tmp_path / "mem"), "--thickness",
                                 str(MEMBRANE_THICKNESS), "--box", vast_box])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "mem").glob("*.png"))
    assert [f.name for f in files] == ["vast_0002_border.png", "vast_0003_border.png"]
    for z, f in zip((2, 3), files, strict=True):
        expect = L.instances_to_membrane(truth[z][box.y0:box.y1, box.x0:box.x1], MEMBRANE_THICKNESS)
        np.testing.assert_array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), expect)
    r = CliRunner().invoke(app, ["gt", "membrane", spec, str(tmp_path / "m2"),
                                 "--box", "0,300,0,10,0,1"])
    assert r.exit_code == 2 and "outside the volume" in r.output


def test_label_format_detection_and_class_limit():
    mask = np.full((10, 10), 255)
    mask[:2] = 0  # membrane is the rarer value
    assert L.detect_label_format([mask]) == "isbi"
    assert L.detect_label_format([255 - mask]) == "codes"  # 255 rarer: membrane white
    classes, k = L.convert_labels([255 - mask])
    assert k == 2 and (classes[0] == np.where(mask == 0, 2, 1)).all()  # the same membranes
    half = np.repeat([[0, 255]], 5, axis=0)
    with pytest.raises(ValueError, match="ambiguous; pass --label-format isbi"):
        L.detect_label_format([half])
    assert L.detect_label_format([np.array([[0, 128, 255]])]) == "codes"
    assert L.convert_labels([np.array([[0, 128, 255]])])[1] == 3
    assert L.detect_label_format([np.array([[0, 1, 2]])]) == "classes"
    many = np.arange(20).reshape(4, 5)
    with pytest.raises(ValueError, match="so 19 classes, more than --max-classes 16"):
        L.convert_labels([many], "classes")
    classes, k = L.convert_labels([many], "classes", max_classes=20)  # asked for explicitly
    assert k == 19 and classes[0].max() == 19
    with pytest.raises(ValueError, match="only class"):
        L.convert_labels([np.array([[0, 1, 1]])])

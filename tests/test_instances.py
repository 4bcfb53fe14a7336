"""2D instance segmentation: windows stitch to the unwindowed result, cleanup rules, combining
runs, and the instance outputs (zarr, TIFF, RGB tiles + .vsvi, the `membrane instances` CLI).

Probability maps are derived from the synthetic volume's exact instance ground truth
(blurred membrane band plus smooth noise), so the expected segmentation is known.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from membrane_py.cli import app
from membrane_py.codes import rgb_to_ids
from membrane_py.edit.instances import InstanceJob, run_instances, write_instances
from membrane_py.geometry import Box
from membrane_py.segment.instances import (
    InstanceConfig,
    combine_predictions,
    membrane_map_from_labels,
    segment_section,
    segment_stack,
    to_probability,
)
from membrane_py.train.metrics import rand_info_scores
from membrane_py.volumes.open import open_volume
from membrane_py.volumes.synthetic import make_synthetic


@pytest.fixture(scope="module")
def synthetic():
    s = make_synthetic((3, 384, 384), seed=2)
    return s, membrane_map_from_labels(s.instances, noise=0.1, seed=1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: the same 0 pixels and a one-to-one id correspondence."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def test_windows_give_the_whole_section_result(synthetic):
    _, prob = synthetic
    whole = segment_section(prob[0], InstanceConfig(window=4096))
    windowed = segment_section(prob[0], InstanceConfig(window=96, halo=32))
    assert whole.max() > 50
    # objects really cross the 96-px window borders, with one id on both sides
    crossing = np.intersect1d(windowed[:, 95], windowed[:, 96])
    assert np.count_nonzero(crossing) > 5
    assert same_partition(whole, windowed)
    # 8-bit maps (with many equal values) stitch exactly too: ties break by global position
    u8 = (1 + prob[1] * 254).astype(np.uint8)
    assert same_partition(segment_section(u8, InstanceConfig(window=4096)),
                          segment_section(u8, InstanceConfig(window=128, halo=32)))


def test_segmentation_matches_ground_truth_and_cleanup_rules(synthetic):
    s, prob = synthetic
    cfg = InstanceConfig(h=0.1, window=192, halo=48)
    labels = segment_section(prob[0], cfg)
    gt = s.instances[0] * (s.membranes[0] == 1)  # cell interiors
    assert rand_info_scores(labels, gt)["adapted_rand_error"] < 0.03
    assert not labels[prob[0] > cfg.membrane_threshold].any()
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= cfg.min_size and np.array_equal(np.unique(labels)[1:],
                                                           np.arange(1, labels.max() + 1))
    # a larger h gives fewer seeds
    assert segment_section(prob[0], InstanceConfig(h=0.02, window=4096)).max() > labels.max()


def test_segment_stack_ids_are_unique_per_volume(synthetic):
    _, prob = synthetic
    stack = segment_stack(prob[:2], InstanceConfig(h=0.1))
    assert stack.dtype == np.uint32
    assert not np.intersect1d(np.unique(stack[0])[1:], np.unique(stack[1])[1:]).size


def test_combine_and_probability_conversion():
    a = np.array([[0.2, 0.9]], np.float32)
    b = np.array([[0.6, 0.1]], np.float32)
    np.testing.assert_allclose(combine_predictions([a, b]), [[0.7 * 0.6 + 0.3 * 0.2,
                                                              0.7 * 0.9 + 0.3 * 0.1]])
    np.testing.assert_allclose(combine_predictions([a, b], (0, 0, 1)), [[0.4, 0.5]])
    with pytest.raises(ValueError, match="sum"):
        combine_predictions([a, b], (0.5, 0.2, 0.0))
    with pytest.raises(ValueError, match="shape"):
        combine_predictions([a, np.zeros((2, 2), np.float32)])
    # 8-bit tiles: (v - 1) / 254, missing 0 -> membrane
    np.testing.assert_allclose(to_probability(np.array([0, 255, 128, 1], np.uint8)),
                               [1, 1, 0.5, 0])
    np.testing.assert_allclose(to_probability(np.array([0.25], np.float32), invert=True), [0.75])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_probability(np.array([3.0]))
    with pytest.raises(ValueError, match="halo"):
        InstanceConfig(halo=4)


@pytest.mark.parametrize("name", ["out.zarr", "out.tif", "tiles"])
def test_outputs_read_back(tmp_path, name):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5000, (2, 70, 90)).astype(np.uint32)
    box = Box(1, 3, 20, 90, 30, 120)
    path = write_instances(labels, tmp_path / name, volume_shape=(4, 100, 150), box=box, mip=0,
                           voxel_size=(40, 8, 8), name="test", colors="ids")
    vol = open_volume(path, labels=True)
    assert vol.shape == (4, 100, 150)  # every form opens as the whole volume, placed
    data, around = vol.read(box), vol.read(Box(0, 1, 0, 100, 0, 150))
    if name == "tiles":
        assert path.suffix == ".vsvi"
        data, around = rgb_to_ids(data), rgb_to_ids(around)
    assert not around.any()
    np.testing.assert_array_equal(data, labels)


def test_instances_job_and_cli(tmp_path, synthetic):
    s, prob = synthetic
    import tifffile

    tifffile.imwrite(tmp_path / "prob.tif", (1 + prob * 254).astype(np.uint8),
                     photometric="minisblack")
    job = InstanceJob([str(tmp_path / "prob.tif")] * 2, str(tmp_path / "a.zarr"), mode="2d",
                      box=[0, 199, 0, 149, 0, 1],
                      instances=InstanceConfig(h=0.1, window=128, halo=32))
    again = InstanceJob.from_dict(json.loads(job.to_json()))
    assert again == job
    result = run_instances(job)
    assert result.box == Box(0, 2, 0, 150, 0, 200)
    written = open_volume(result.path, labels=True)
    assert written.shape == prob.shape and written.read(result.box).max() > 10
    out = CliRunner().invoke(app, ["instances", str(tmp_path / "prob.tif"), "-o",
                                   str(tmp_path / "cli"), "--mode", "3d", "--h", "0.1",
                                   "--colors", "palette", "--box", "0,127,0,127,0,2"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "cli" / "cli.vsvi").is_file()
    bad = CliRunner().invoke(app, ["instances", str(tmp_path / "prob.tif"), "-o", "x.zarr",
                                   "--weights", "1,1,0"])
    assert bad.exit_code != 0 and "sum" in bad.output

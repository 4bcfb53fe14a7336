"""3D agglomeration: overlap linking rules, recovery of 3D objects from their 2D pieces, the
3D watershed, and (when ../shared/data is there) real FIB-SEM ground truth from gala."""

import numpy as np
import pytest

from membrane_py.segment.agglomerate import (
    AgglomerationConfig,
    agglomerate,
    link_sections,
    watershed_3d,
)
from membrane_py.segment.instances import (
    InstanceConfig,
    grow_into_membranes,
    membrane_map_from_labels,
    segment_stack,
)
from membrane_py.train.metrics import rand_info_scores
from membrane_py.volumes.synthetic import make_synthetic


def test_link_thresholds():
    a = np.zeros((10, 10), np.int64)
    b = np.zeros((10, 10), np.int64)
    a[:, :5], a[:, 5:] = 1, 2
    b[:, :4], b[:, 4:] = 7, 8  # 7 continues 1; 8 continues 2 and touches 1 in one column
    cfg = AgglomerationConfig(min_overlap_px=5, min_overlap_fraction=0.5)
    assert sorted(map(tuple, link_sections(a, b, cfg))) == [(1, 7), (2, 8)]
    # the 10-px contact 1-8 is 20 % of the smaller segment (50 px): linked only at 0.2
    low = AgglomerationConfig(min_overlap_px=5, min_overlap_fraction=0.2)
    assert (1, 8) in map(tuple, link_sections(a, b, low))
    assert link_sections(a, b, AgglomerationConfig(min_overlap_px=51)).size == 0
    with pytest.raises(ValueError, match="fraction"):
        AgglomerationConfig(min_overlap_fraction=0)


def test_splits_and_joins_stay_one_object():
    seg = np.zeros((3, 8, 8), np.uint32)
    seg[0, :, :] = 1
    seg[1, :, :4], seg[1, :, 4:] = 2, 3  # one neurite splits in two ...
    seg[2, :, :] = 4  # ... and joins again
    out = agglomerate(seg, AgglomerationConfig(min_overlap_px=4))
    assert np.unique(out).tolist() == [1]


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic((6, 256, 256), seed=4)


def test_agglomeration_recovers_3d_objects(synthetic):
    gt = synthetic.instances * (synthetic.membranes == 1)
    prob = membrane_map_from_labels(synthetic.instances)
    segs = segment_stack(prob, InstanceConfig(h=0.1))
    objects = agglomerate(segs)
    flat = rand_info_scores(segs, gt)
    linked = rand_info_scores(objects, gt)
    assert objects.max() < segs.max() / 3
    assert linked["adapted_rand_error"] < 0.1 < flat["adapted_rand_error"]
    assert linked["vi_merge"] < 0.2


def test_watershed_3d(synthetic):
    gt = synthetic.instances * (synthetic.membranes == 1)
    prob = membrane_map_from_labels(synthetic.instances)
    labels = watershed_3d(prob, InstanceConfig(h=0.1), min_size=200)
    assert labels.dtype == np.uint32 and labels.max() > 20
    assert not labels[prob > 0.71].any()
    # objects span several sections
    spans = [len(np.unique(np.nonzero(labels == i)[0])) for i in range(1, 11)]
    assert max(spans) >= 4
    assert rand_info_scores(labels, gt)["adapted_rand_error"] < 0.3


@pytest.mark.realdata
def test_gala_ground_truth_membranes(shared_data):
    import h5py

    with h5py.File(shared_data / "gala" / "train-gt.lzf.h5") as f:
        gt = f["stack"][:20].astype(np.int64)
    prob = membrane_map_from_labels(gt, noise=0.05)
    objects = agglomerate(segment_stack(prob, InstanceConfig(h=0.1, min_size=20)))
    scores = rand_info_scores(grow_into_membranes(objects, prob), gt)
    assert scores["adapted_rand_error"] < 0.1 and scores["vi_merge"] < 0.3, scores

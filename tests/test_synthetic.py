"""Synthetic EM: determinism, ground-truth consistency and EM-like statistics."""

import time

import numpy as np
import pytest
from scipy import ndimage

from membrane_py.volumes.synthetic import MEMBRANE_THICKNESS, make_synthetic, synthetic_volumes


@pytest.fixture(scope="module")
def syn():
    return make_synthetic((6, 384, 384), seed=1)


def test_deterministic_and_seed_dependent():
    a, b = make_synthetic((3, 128, 160), seed=4), make_synthetic((3, 128, 160), seed=4)
    for name in ("em", "instances", "membranes", "mito"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert not np.array_equal(a.em, make_synthetic((3, 128, 160), seed=5).em)


def test_types_shapes_and_ids(syn):
    assert syn.em.dtype == np.uint8 and syn.instances.dtype == np.uint32
    assert syn.membranes.dtype == np.uint8 and syn.mito.dtype == np.uint8
    assert syn.em.shape == syn.instances.shape == syn.membranes.shape == (6, 384, 384)
    ids = np.unique(syn.instances)
    assert ids[0] == 1 and ids[-1] == len(ids) < 65536  # compact 1..N, no background
    assert set(np.unique(syn.membranes)) == {1, 2} and set(np.unique(syn.mito)) == {0, 1}
    assert syn.voxel_size == (40.0, 8.0, 8.0)


def test_membrane_is_exactly_the_instance_boundary_band(syn):
    size = (1, MEMBRANE_THICKNESS, MEMBRANE_THICKNESS)
    band = (ndimage.grey_erosion(syn.instances, size=size)
            != ndimage.grey_dilation(syn.instances, size=size))
    np.testing.assert_array_equal(syn.membranes == 2, band)
    assert not (syn.mito.astype(bool) & band).any()  # mitochondria lie inside cells


def test_cells_continue_across_sections(syn):
    same = (syn.instances[1:] == syn.instances[:-1]).mean()
    assert 0.6 < same < 0.99  # cells drift slowly, they do not jump or stand still


def test_em_like_statistics(syn):
    em, mem, mito = syn.em.astype(float), syn.membranes == 2, syn.mito == 1
    cyto = ~mem & ~mito
    assert 0.05 < mem.mean() < 0.30
    assert 0.001 < mito.mean() < 0.1
    assert em[mem].mean() < em[cyto].mean() - 40
    assert em[mito].mean() < em[cyto].mean() - 25
    assert em[cyto].std() > 10  # grainy texture and noise, not flat cartoon regions
    means = em.mean(axis=(1, 2))
    assert means.std() > 0.5  # section-to-section brightness drift


def test_small_volume_is_fast_and_volumes_memoised():
    t = time.perf_counter()
    make_synthetic((8, 256, 256))
    assert time.perf_counter() - t < 2.0
    em, gt = synthetic_volumes((2, 64, 64), 0)
    assert synthetic_volumes((2, 64, 64), 0)[0] is em
    assert em.name == "synthetic EM" and gt.name == "synthetic ground truth" and gt.is_label

"""The public API of ``membrane_py.segment``, each function against an answer known by
construction (hand-drawn arrays, hand-computed numbers, or scikit-image as an independent
reference), never against its own earlier output."""

import numpy as np
import pytest
from skimage.measure import label as sk_label

import membrane_py.segment as seg
from membrane_py.events import Cancelled, CancelToken
from membrane_py.segment import (
    AgglomerationConfig,
    InstanceConfig,
    agglomerate,
    combine_predictions,
    fill_region,
    grow_into_membranes,
    link_sections,
    membrane_map_from_labels,
    mix64,
    remove_small,
    segment_section,
    segment_stack,
    to_probability,
    watershed_3d,
)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: the same 0 pixels and a one-to-one id correspondence."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def grid_map(n: int = 3, cell: int = 20, line: int = 1) -> np.ndarray:
    """Float membrane map: an n x n grid of cell x cell squares (0) split by lines (1)."""
    size = n * cell + (n - 1) * line
    prob = np.zeros((size, size), np.float32)
    for k in range(1, n):
        a = k * cell + (k - 1) * line
        prob[a:a + line, :] = 1
        prob[:, a:a + line] = 1
    return prob


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# -- package surface ---------------------------------------------------------------------

def test_public_api_is_documented_and_exported():
    assert sorted(seg.__all__) == sorted(set(seg.__all__))
    for name in seg.__all__:
        obj = getattr(seg, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 40, name
        assert not name.startswith("_")
    assert "VAST" in seg.__doc__ and "h-minima" in seg.__doc__


# -- to_probability ----------------------------------------------------------------------

def test_to_probability_8bit_formula():
    u8 = np.array([[0, 1, 51], [128, 204, 255]], np.uint8)
    # the tile code: v = 1 + round(254 p), so p = (v - 1) / 254; 0 = missing -> membrane
    expected = np.array([[1.0, 0.0, 50 / 254], [0.5, 203 / 254, 1.0]], np.float32)
    out = to_probability(u8)
    assert out.dtype == np.float32 and out.shape == u8.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)
    # dark-membrane maps: 1 - p, and a missing pixel (0) is still membrane
    inv = to_probability(u8, invert=True)
    np.testing.assert_allclose(inv, [[1.0, 1.0, 204 / 254], [0.5, 51 / 254, 0.0]], atol=1e-7)


def test_to_probability_16bit_and_float():
    u16 = np.array([0, 13107, 65535], np.uint16)
    np.testing.assert_allclose(to_probability(u16), [0.0, 0.2, 1.0], atol=1e-7)
    f = np.array([0.25, np.nan, 1.0], np.float64)
    out = to_probability(f)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.25, 1.0, 1.0])  # NaN = missing = membrane
    np.testing.assert_allclose(to_probability(f, invert=True), [0.75, 1.0, 0.0])
    np.testing.assert_array_equal(to_probability(np.full((2, 2), np.nan)), np.ones((2, 2)))
    for bad in (np.array([1.5]), np.array([1, 2], np.int32), np.zeros((1, 2, 2, 3), np.uint8)):
        with pytest.raises(ValueError):
            to_probability(bad)


# -- combine_predictions -----------------------------------------------------------------

def test_combine_predictions_hand_computed():
    runs = [np.array([0.2, 0.8]), np.array([0.6, 0.4]), np.array([0.4, 0.0])]
    # max = [0.6, 0.8], min = [0.2, 0.0], mean = [0.4, 0.4]
    default = combine_predictions(runs)
    assert default.dtype == np.float32
    np.testing.assert_allclose(default, [0.7 * 0.6 + 0.3 * 0.2, 0.7 * 0.8], atol=1e-6)
    np.testing.assert_allclose(combine_predictions(runs, (0, 0, 1)), [0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(combine_predictions(runs, (0.5, 0.25, 0.25)),
                               [0.5 * 0.6 + 0.25 * 0.2 + 0.25 * 0.4, 0.5 * 0.8 + 0.25 * 0.4],
                               atol=1e-6)
    np.testing.assert_array_equal(combine_predictions([runs[0]], (0, 1, 0)),
                                  runs[0].astype(np.float32))
    with pytest.raises(ValueError, match="summing to 1"):
        combine_predictions(runs, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="shape"):
        combine_predictions([np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError):
        combine_predictions([])


# -- mix64 -------------------------------------------------------------------------------

def _splitmix64_finaliser(v: int) -> int:
    """Reference in plain Python integers (published splitmix64 constants)."""
    m = (1 << 64) - 1
    v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9 & m
    v = (v ^ (v >> 27)) * 0x94D049BB133111EB & m
    return v ^ (v >> 31)


def test_mix64_deterministic_and_spreading():
    ids = np.arange(10_000, dtype=np.uint64)
    before = ids.copy()
    h = mix64(ids)
    assert h.dtype == np.uint64 and h.shape == ids.shape
    np.testing.assert_array_equal(ids, before)  # input untouched
    np.testing.assert_array_equal(h, mix64(ids))
    assert [int(x) for x in h[:5]] == [_splitmix64_finaliser(i) for i in range(5)]
    assert int(mix64(np.array([2**64 - 1], np.uint64))[0]) == _splitmix64_finaliser(2**64 - 1)
    # consecutive ids: all distinct, and distinct even in their lowest 24 bits (colours)
    assert np.unique(h).size == ids.size
    assert np.unique(h & np.uint64(0xFFFFFF)).size > 0.99 * ids.size
    # every output bit is about as often 1 as 0
    bits = (h[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.all(np.abs(bits.mean(0) - 0.5) < 0.05)
    assert mix64(np.array([[3]])).shape == (1, 1)


# -- remove_small ------------------------------------------------------------------------

def test_remove_small_exact_threshold():
    labels = np.zeros((6, 10), np.int32)
    labels[0, :3] = 1  # 3 px
    labels[2, :5] = 2  # 5 px (exactly min_size: kept)
    labels[4, :4] = 7  # 4 px, split into two pieces: sizes count per id, not per piece
    labels[5, 6:10] = 7  # ... 8 px in all: kept
    labels[5, 0] = 9  # 1 px
    expected = labels.copy()
    expected[(labels == 1) | (labels == 9)] = 0
    out = remove_small(labels, 5)
    assert out is labels  # in place
    np.testing.assert_array_equal(out, expected)
    assert np.array_equal(remove_small(expected.copy(), 1), expected)
    assert remove_small(expected.copy(), 9).max() == 0


# -- segment_section / segment_stack -----------------------------------------------------

@pytest.mark.parametrize("window, halo", [(4096, 256), (16, 16)])
def test_segment_section_squares_between_membranes(window, halo):
    prob = grid_map(3, 20, 1)  # 9 squares of 400 px, lines of membrane between them
    labels = segment_section(prob, InstanceConfig(window=window, halo=halo))
    assert labels.dtype == np.uint32 and labels.shape == prob.shape
    assert np.unique(labels[labels > 0]).tolist() == list(range(1, 10))
    # independent reference: the 4-connected components of the non-membrane pixels
    assert same_partition(labels, sk_label(prob < 0.5, connectivity=1))


def test_segment_section_8bit_two_halves():
    u8 = np.full((30, 41), 3, np.uint8)  # near-0 probability (0 itself means "missing")
    u8[:, 20] = 255
    labels = segment_section(u8)
    left, right = labels[:, :20], labels[:, 21:]
    assert np.unique(left).size == 1 and np.unique(right).size == 1
    assert {int(left[0, 0]), int(right[0, 0])} == {1, 2}
    assert not labels[:, 20].any()


def test_segment_section_h_decides_seeds_and_min_size_drops():
    prob = np.full((40, 60), 0.3, np.float32)
    prob[[0, -1], :] = prob[:, [0, -1]] = 1.0  # one closed cell
    prob[18:22, 13:17] = prob[18:22, 43:47] = 0.0  # two dips, 0.3 deep
    two = segment_section(prob, InstanceConfig(h=0.1, min_size=10))
    assert np.unique(two[two > 0]).size == 2  # 0.3 > h: each dip seeds a segment
    assert two[20, 15] != two[20, 45]
    shallow = prob.copy()
    shallow[shallow == 0] = 0.27  # dips 0.03 deep, shallower than h
    one = segment_section(shallow, InstanceConfig(h=0.1, min_size=10))
    np.testing.assert_array_equal(one > 0, shallow < 0.71)
    assert np.unique(one[one > 0]).tolist() == [1]
    # the whole cell (38 x 58 px) is under min_size 3000: dropped
    assert segment_section(shallow, InstanceConfig(h=0.1, min_size=3000)).max() == 0
    with pytest.raises(ValueError):
        segment_section(prob[None])


def test_segment_stack_ids_unique_and_progress():
    sec = grid_map(2, 20, 2)  # 4 squares
    prob = np.stack([sec, sec, np.ones_like(sec)])  # last section: all membrane
    events = []
    labels = segment_stack(prob, InstanceConfig(), progress=events.append)
    assert labels.dtype == np.uint32
    assert np.unique(labels[0][labels[0] > 0]).tolist() == [1, 2, 3, 4]
    assert np.unique(labels[1][labels[1] > 0]).tolist() == [5, 6, 7, 8]
    assert labels[2].max() == 0
    for z in range(2):
        assert same_partition(labels[z], sk_label(sec < 0.5, connectivity=1))
    assert [(e.done, e.total) for e in events] == [(1, 3), (2, 3), (3, 3)]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        segment_stack(prob, cancel=token)
    with pytest.raises(ValueError):
        segment_stack(sec)


# -- grow_into_membranes -----------------------------------------------------------------

def test_grow_into_membranes_tiles_each_section():
    prob = np.zeros((2, 10, 13), np.float32)
    prob[:, :, 5], prob[:, :, 6], prob[:, :, 7] = 0.8, 1.0, 0.8  # a 3-px membrane band
    labels = np.zeros((2, 10, 13), np.uint32)
    labels[0, :, :5], labels[0, :, 8:] = 4, 9
    grown = grow_into_membranes(labels, prob)
    assert labels[0, :, 5:8].max() == 0  # input untouched
    assert grown.dtype == labels.dtype
    assert (grown[0, :, :6] == 4).all() and (grown[0, :, 7:] == 9).all()
    assert set(np.unique(grown[0, :, 6]).tolist()) <= {4, 9}
    assert grown[1].max() == 0  # nothing to grow from


# -- membrane_map_from_labels ------------------------------------------------------------

def test_membrane_map_from_labels_band_and_blur():
    labels = np.ones((1, 12, 16), np.int32)
    labels[0, :, 8:] = 2  # boundary between columns 7 and 8
    labels[0, 0, 0] = 0  # id 0 counts as membrane
    sharp = membrane_map_from_labels(labels, thickness=3, blur=0)
    assert sharp.dtype == np.float32 and sharp.shape == labels.shape
    expected = np.zeros((12, 16), np.float32)
    expected[:, 7:9] = 1  # pixels whose 3 x 3 neighbourhood holds two ids
    expected[:2, :2] = 1  # around the 0 pixel
    np.testing.assert_array_equal(sharp[0], expected)
    soft = membrane_map_from_labels(np.ones((1, 12, 16), np.int32) + (labels > 1), blur=1.5)
    row = soft[0, 6]
    assert row.min() >= 0 and row.max() <= 1 and row.argmax() in (7, 8)
    assert np.all(np.diff(row[:8]) >= 0) and np.all(np.diff(row[8:]) <= 0)
    assert row[0] < 0.01 and row[-1] < 0.01
    a = membrane_map_from_labels(labels, noise=0.2, seed=3)
    np.testing.assert_array_equal(a, membrane_map_from_labels(labels, noise=0.2, seed=3))
    assert not np.array_equal(a, membrane_map_from_labels(labels, noise=0.2, seed=4))


# -- link_sections / agglomerate ---------------------------------------------------------

def test_same_disc_in_consecutive_sections_is_one_object():
    shape = (40, 40)
    stack = np.zeros((4, *shape), np.uint32)
    for z, ids in enumerate([(1, 2), (3, 4), (5, 6), (7, 0)]):
        stack[z][disc(shape, 10, 10, 6)] = ids[0]
        if ids[1]:
            stack[z][disc(shape, 28, 28, 6)] = ids[1]
    pairs = link_sections(stack[0], stack[1])
    assert pairs.dtype == np.int64 and pairs.tolist() == [[1, 3], [2, 4]]
    objects = agglomerate(stack)
    assert objects.dtype == np.uint32
    # numbered by smallest 2D id: disc at (10, 10) has 2D id 1 -> object 1
    assert (objects[stack > 0] == np.where(stack[stack > 0] % 2 == 1, 1, 2)).all()
    assert not objects[stack == 0].any()
    # independent reference: the 3D connected components of the mask (discs stack exactly)
    assert same_partition(objects, sk_label(stack > 0, connectivity=1))


def test_disc_splitting_links_to_both_halves():
    shape = (40, 40)
    d = disc(shape, 20, 20, 10)
    stack = np.zeros((2, *shape), np.uint32)
    stack[0][d] = 1
    stack[1][d & (np.arange(40) < 20)[None, :]] = 2
    stack[1][d & (np.arange(40) > 20)[None, :]] = 3  # column 20 is a membrane in section 1
    # each half lies wholly inside the disc: overlap = 100 % of the smaller segment
    assert link_sections(stack[0], stack[1]).tolist() == [[1, 2], [1, 3]]
    objects = agglomerate(stack)
    assert np.unique(objects[objects > 0]).tolist() == [1]
    np.testing.assert_array_equal(objects > 0, stack > 0)


def test_neighbour_contact_and_gap_do_not_link():
    shape = (30, 30)
    a = np.zeros(shape, np.uint32)
    b = np.zeros(shape, np.uint32)
    a[5:25, 2:14] = 1  # 240 px
    b[5:25, 12:28] = 2  # shifted neighbour: 2 columns = 40 px overlap, 17 % of the smaller
    assert link_sections(a, b).size == 0
    assert link_sections(a, b, AgglomerationConfig(min_overlap_fraction=0.15)).tolist() == [[1, 2]]
    assert link_sections(a, b, AgglomerationConfig(min_overlap_px=41,
                                                   min_overlap_fraction=0.1)).size == 0
    # the same segment in sections 0 and 2 with nothing between: two objects
    stack = np.stack([a, np.zeros_like(a), a * 3])
    assert np.unique(agglomerate(stack)).tolist() == [0, 1, 2]
    assert agglomerate(np.zeros((2, 4, 4), np.uint32)).max() == 0
    with pytest.raises(ValueError):
        link_sections(a, b[:-1])
    with pytest.raises(ValueError):
        AgglomerationConfig(min_overlap_px=0)


def test_agglomerate_progress_and_cancel():
    stack = np.zeros((3, 8, 8), np.uint32)
    stack[0, 1:7, 1:7], stack[1, 1:7, 1:7], stack[2, 1:7, 1:7] = 1, 2, 3
    events = []
    assert np.unique(agglomerate(stack, progress=events.append)).tolist() == [0, 1]
    assert [(e.done, e.total) for e in events] == [(1, 2), (2, 2)]
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        agglomerate(stack, cancel=token)


# -- watershed_3d ------------------------------------------------------------------------

def test_watershed_3d_boxes_separated_by_a_membrane_plane():
    prob = np.zeros((6, 20, 21), np.float32)
    prob[:, :, 10] = 1.0  # plane between two 6 x 20 x 10 boxes (1200 voxels each)
    prob[0:3, 0:3, 0:3] = 1.0  # a closed 1-voxel pocket (membrane shell around (1, 1, 1))
    prob[1, 1, 1] = 0.0
    labels = watershed_3d(prob, InstanceConfig(h=0.05), min_size=500)
    assert labels.dtype == np.uint32 and labels.shape == prob.shape
    reference = sk_label(prob < 0.5, connectivity=1)  # 3 components: 2 boxes and the pocket
    reference[reference == reference[1, 1, 1]] = 0  # the pocket is under min_size
    assert same_partition(labels, reference)
    assert np.unique(labels).tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        watershed_3d(prob[0])


# -- fill_region -------------------------------------------------------------------------

def test_fill_inside_a_ring_is_exactly_its_interior():
    yy, xx = np.mgrid[:41, :41]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    prob = np.where((r2 >= 10**2) & (r2 < 13**2), 0.9, 0.1).astype(np.float32)
    mask = fill_region(prob, (20, 20))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, r2 < 10**2)
    np.testing.assert_array_equal(fill_region(prob, (0, 0)), r2 >= 13**2)  # the outside
    # a higher threshold turns the ring into cell: everything is one region
    assert fill_region(prob, (20, 20), threshold=0.95).all()


def test_fill_does_not_leak_through_a_diagonal_membrane():
    prob = np.eye(12, dtype=np.float32)  # one-pixel diagonal line, touching only at corners
    np.testing.assert_array_equal(fill_region(prob, (0, 5)), np.triu(np.ones((12, 12)), 1) > 0)
    with pytest.raises(ValueError, match="membrane"):
        fill_region(prob, (3, 3))
    with pytest.raises(ValueError, match="outside"):
        fill_region(prob, (12, 0))


def test_fill_3d_inside_a_hollow_box():
    prob = np.zeros((8, 8, 8), np.float32)
    prob[1:7, 1:7, 1:7] = 1.0
    prob[2:6, 2:6, 2:6] = 0.0
    expected = np.zeros(prob.shape, bool)
    expected[2:6, 2:6, 2:6] = True
    np.testing.assert_array_equal(fill_region(prob, (3, 4, 2)), expected)


# -- configs -----------------------------------------------------------------------------

def test_config_defaults_and_validation():
    cfg = InstanceConfig()
    assert (cfg.h, cfg.membrane_threshold, cfg.min_size) == (0.05, 0.71, 70)
    assert cfg.weights == (0.7, 0.3, 0.0)
    for bad in ({"h": 0}, {"h": 1.5}, {"membrane_threshold": 0}, {"min_size": -1},
                {"window": 8}, {"halo": 4}, {"weights": (1, 1, 0)}):
        with pytest.raises(ValueError):
            InstanceConfig(**bad)
    agg = AgglomerationConfig()
    assert (agg.min_overlap_px, agg.min_overlap_fraction) == (20, 0.5)

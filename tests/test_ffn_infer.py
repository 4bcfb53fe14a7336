"""Flood filling on toy volumes (a stand-in network that knows the objects) and the
ffn-infer job with the released model on a real crop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from membrane_py.ffn.canvas import FloodFiller, FloodOptions
from membrane_py.ffn.movement import FaceMaxQueue, face_max_moves
from membrane_py.ffn.seeds import peak_seeds

FOV, DELTAS = (9, 9, 9), (2, 2, 2)  # FOV = 4 deltas + 1, as the reference 33 and 8


def toy_labels() -> np.ndarray:
    """Two touching tubes along x (neurites) and a small cube in a (24, 40, 40) volume."""
    z, y = np.mgrid[:24, :40]
    labels = np.zeros((24, 40, 40), np.int32)
    for i, yc in ((1, 9), (2, 20)):
        labels[:, :, 3:37][(z - 12) ** 2 + (y - yc) ** 2 <= 5.5**2] = i
    labels[4:9, 30:35, 6:11] = 3
    return labels


def toy_image(labels: np.ndarray) -> np.ndarray:
    """100 x object id + the distance to the object's border (what the oracle reads)."""
    depth = np.zeros(labels.shape)
    for i in np.unique(labels[labels > 0]):
        depth += ndimage.distance_transform_edt(labels == i)
    return (100.0 * labels + depth).astype(np.float32)


def oracle(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Stands in for a trained network: the object under the FOV centre gets logit 2 + its
    depth (highest along the object's middle, as a trained FFN's are), the rest -4."""
    ids = images // 100
    c = tuple(s // 2 for s in images.shape[1:])
    centre = ids[(slice(None), *c)][:, None, None, None]
    return np.where((ids == centre) & (centre > 0), 2.0 + images % 100, -4.0).astype(np.float32)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_toy_objects_are_segmented(concurrency):
    labels = toy_labels()
    seeds = np.array([[12, 9, 20], [12, 20, 20], [6, 32, 8], [12, 9, 30]])
    filler = FloodFiller(toy_image(labels), oracle, FOV, DELTAS,
                         FloodOptions(min_segment_size=200), concurrency=concurrency)
    seg = filler.segment_all(seeds)
    assert seg.dtype == np.uint32
    # the two tubes are found (all but a flat end's rim, which no FOV centre reaches) and
    # apart; the 125-voxel cube is below min_segment_size
    assert filler.stats.objects == 2
    found = [seg[labels == obj] for obj in (1, 2)]
    assert all((f == f.max()).mean() > 0.98 and set(np.unique(f)) <= {0, f.max()}
               for f in found)
    assert found[0].max() != found[1].max() and not seg[labels == 0].any()
    assert not seg[labels == 3].any()
    # the fourth seed lies in tube 1, segmented already: skipped, no third bar-1 object
    assert filler.stats.rejected.get("too_small") == 1
    assert filler.stats.steps > 10 and filler.stats.calls <= filler.stats.steps




def leaky_oracle(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`oracle`, except that a FOV centred in tube 2 also claims tube 1's rim (2 px
    deep) with the highest logits, so the FOV moves there (a network that oversteps)."""
    out = oracle(images, masks)
    ids, depth = images // 100, images % 100
    c = tuple(s // 2 for s in images.shape[1:])
    in_tube2 = (ids[(slice(None), *c)] == 2)[:, None, None, None]
    return np.where(in_tube2 & (ids == 1) & (depth <= 2), 20.0, out).astype(np.float32)


def test_objects_grown_side_by_side_match_strict_order():
    """Tube 2's object, grown beside tube 1's, strays into tube 1, which strict order
    would have refused since tube 1 is committed first: it is started again, and the
    result is strict order's."""
    labels = toy_labels()
    seeds = np.array([[12, 9, 20], [12, 20, 20]])
    runs = {}
    for concurrency in (1, 2):
        filler = FloodFiller(toy_image(labels), leaky_oracle, FOV, DELTAS,
                             FloodOptions(min_segment_size=200), concurrency=concurrency)
        runs[concurrency] = filler.segment_all(seeds), filler.stats
    (strict, s1), (side, s2) = runs[1], runs[2]
    assert s1.restarts == 0 and s2.restarts >= 1 and s2.discarded_steps > 0
    assert s2.calls < s2.steps  # FOVs of the two objects did share network calls
    assert s1.objects == s2.objects == 2 and np.array_equal(strict, side)
    assert s2.steps == s1.steps + s2.discarded_steps


def test_doomed_objects_stop_early_with_identical_output():
    """With objects growing side by side, one whose seed an earlier object's commit covers
    is stopped at once (it would be rejected at commit anyway): same output, fewer steps."""
    labels = toy_labels()
    # the small cube (too small) ends first, so the tube-2 seed, on tube 2's rim next to
    # tube 1, starts later than the tube-1 seed and is still growing tube 2 when tube 1
    # is committed: its seed then borders an object, which strict order would have skipped
    seeds = np.array([[6, 32, 8], [12, 9, 20], [12, 15, 34]])
    runs = {}
    for early_stop in (False, True):
        filler = FloodFiller(toy_image(labels), oracle, FOV, DELTAS,
                             FloodOptions(min_segment_size=200), concurrency=2,
                             early_stop=early_stop)
        runs[early_stop] = filler.segment_all(seeds), filler.stats
    (seg0, before), (seg1, after) = runs[False], runs[True]
    assert np.array_equal(seg0, seg1) and after.objects == before.objects == 1
    assert before.rejected == after.rejected == {"too_small": 1, "covered": 1}
    assert after.stopped_early == 1 and before.stopped_early == 0
    assert after.steps < before.steps


def test_mask_stops_growth_and_thresholds_are_checked():
    labels = toy_labels()
    mask = np.zeros(labels.shape, bool)
    mask[:, :, 20:] = True  # no FOV centre in the right half
    filler = FloodFiller(toy_image(labels), oracle, FOV, DELTAS,
                         FloodOptions(min_segment_size=10), mask=mask)
    seg = filler.segment_all(np.array([[12, 9, 8]]))
    grown = seg[labels == 1] > 0
    assert 0.2 < grown.mean() < 0.8  # it stopped about where the FOVs could no longer go
    with pytest.raises(ValueError, match="strictly between"):
        FloodOptions(move_threshold=1.0)
    with pytest.raises(ValueError, match="smaller than the FFN field of view"):
        FloodFiller(np.zeros((5, 40, 40), np.float32), oracle, FOV, DELTAS)


def test_face_max_moves_and_queue():
    logits = np.full((9, 9, 9), -5.0, np.float32)
    logits[4, 4, 7] = 3.0  # +x face, 3 voxels from the centre
    logits[4, 2, 1] = 2.5  # -x face at y - 2
    moves = face_max_moves(logits, (3, 3, 3), threshold=2.0)
    assert moves == [(3.0, (0, 0, 3)), (2.5, (0, -2, -3))]
    q = FaceMaxQueue((10, 10, 10), (3, 3, 3), 2.0)
    assert q.pop(lambda p: True) == (10, 10, 10)
    q.update(logits, (10, 10, 10))
    q.queue.append((10, 10, 11))  # same grid cell as the start: skipped
    assert q.pop(lambda p: True) == (10, 10, 13)
    assert q.pop(lambda p: True) == (10, 8, 7)
    assert q.pop(lambda p: True) is None


def test_peak_seeds_are_in_cell_centres():
    labels = toy_labels()
    image = np.where(labels > 0, 1.0, -1.0).astype(np.float32)
    seeds = peak_seeds(image)
    assert len(seeds) > 0
    assert all(labels[tuple(s)] > 0 for s in seeds)
    assert [tuple(s) for s in seeds] == sorted(tuple(s) for s in seeds)


@pytest.mark.realdata
def test_infer_job_on_a_real_crop(shared_data, tmp_path):
    """The released model from one seed inside a large body of fib25_sample2 segments it
    (the job end to end: TF checkpoint import, seeds, canvas, npz output)."""
    import gzip
    import io

    import h5py

    from membrane_py.ffn.infer import FFNInferJob, run_ffn_infer

    root = shared_data / "fib25_sample2"
    x0, y0, z0 = 100, 100, 100
    with h5py.File(io.BytesIO(gzip.open(root / "groundtruth.h5.gz").read())) as f:
        gt = f["transforms"][:][:, 1][f["stack"][z0:z0 + 48, y0:y0 + 48, x0:x0 + 48]]
    depth = ndimage.distance_transform_edt(gt > 0)[16:32, 16:32, 16:32]
    z, y, x = (int(v) + 16 for v in np.unravel_index(np.argmax(depth), depth.shape))
    job = FFNInferJob(image=str(root / "grayscale"),
                      checkpoint=str(shared_data / "ffn_fib25_model/model.ckpt-27465036"),
                      output=str(tmp_path / "seg.npz"),
                      box=[x0, x0 + 47, y0, y0 + 47, z0, z0 + 47],
                      seeds=[[x0 + x, y0 + y, z0 + z]], concurrency=1, precision="bf16",
                      options=FloodOptions(min_segment_size=100))
    result = run_ffn_infer(job)
    seg = np.load(result.path)["segmentation"]
    assert result.n_objects == 1 and seg.shape == (48, 48, 48)
    obj = gt == gt[z, y, x]
    found = seg > 0
    assert (found & obj).sum() / (found | obj).sum() > 0.6 and result.fov_steps > 1
    with pytest.raises(ValueError, match="outside"):
        run_ffn_infer(FFNInferJob(image=job.image, checkpoint=job.checkpoint,
                                  output=job.output, box=job.box, seeds=[[0, 0, 0]]))


def test_subvolumes_are_reconciled():
    """Tubes crossing the border between two subvolumes keep one id each."""
    from membrane_py.ffn.subvolumes import segment_in_subvolumes

    labels = toy_labels()
    image = toy_image(labels)
    boxes = []

    def segment(box):
        boxes.append(box)
        sub = image[box.slices()]
        filler = FloodFiller(sub, oracle, FOV, DELTAS, FloodOptions(min_segment_size=100))
        return filler.segment_all(peak_seeds(np.where(sub > 0, 1.0, -1.0)))

    seg = segment_in_subvolumes(labels.shape, segment, (24, 40, 20), (0, 0, 6), FOV,
                                min_overlap=20)
    assert len(boxes) == 2 and boxes[0].x1 == 26 and boxes[1].x0 == 14
    for obj in (1, 2):
        ids = seg[labels == obj]
        assert (ids == ids.max()).mean() > 0.98 and set(np.unique(ids)) <= {0, ids.max()}
    assert seg[labels == 1].max() != seg[labels == 2].max()


def test_split_consensus():
    from membrane_py.ffn.consensus import split_consensus

    a = np.array([1, 1, 1, 1, 0, 2, 2, 2, 0, 0])
    b = np.array([5, 5, 6, 0, 7, 7, 7, 0, 0, 3])
    out = split_consensus(a, b, min_size=0)
    # a's largest pair keeps a's id, other pairs get new ids, b-only voxels stay empty
    assert list(out[[0, 1, 5, 6, 4, 8, 9]]) == [1, 1, 2, 2, 0, 0, 0]
    assert len({out[2], out[3], out[7]}) == 3 and min(out[2], out[3], out[7]) > 2
    assert list(split_consensus(a, b, min_size=2)) == [1, 1, 0, 0, 0, 2, 2, 0, 0, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        split_consensus(a, b[:5])


def test_forward_reverse_consensus_removes_an_order_dependent_merge():
    """A network that lets tube 1 leak into the end of tube 2 merges that end into tube 1
    in forward order only; the consensus keeps tube 1 clean."""
    from membrane_py.ffn.consensus import forward_reverse

    labels = toy_labels()
    labels[labels == 3] = 0
    labels[(labels == 2) & (np.arange(40) < 12)] = 3  # the end of tube 2, x < 12
    image = toy_image(labels)

    def leaky(images, masks):
        """The oracle, but the end of tube 2 also counts as part of any object, and from
        inside it only what the object already holds is kept."""
        ids = images // 100
        c = tuple(s // 2 for s in images.shape[1:])
        centre = ids[(slice(None), *c)][:, None, None, None]
        inside = np.where(centre == 3, (ids == 3) | (masks > 0), (ids == centre) | (ids == 3))
        return np.where(inside & (centre > 0), 2.0 + images % 100, -4.0).astype(np.float32)

    def filler_from(seeds):
        filler = FloodFiller(image, leaky, FOV, DELTAS, FloodOptions(min_segment_size=50))
        filler.segment_all(seeds)
        return filler

    forward = filler_from(np.array([[12, 9, 20], [12, 20, 30]]))  # tube 1 first
    seg = np.maximum(forward.segmentation, 0)
    tube1 = seg[12, 9, 20]
    assert forward.stats.objects == 2 and (seg[labels == 3] == tube1).mean() > 0.9
    labels_c, origins = forward_reverse(forward, filler_from, min_size=50)
    end = labels_c[labels == 3]
    assert (labels_c[labels == 1] == tube1).mean() > 0.95  # tube 1 keeps its id
    assert not (end == tube1).any() and (end > 0).mean() > 0.9  # the end is split off
    assert set(origins) == {1, 2}


def test_shift_mask_keeps_fovs_away_from_misalignment():
    from membrane_py.ffn.restrict import shift_block, shift_restriction

    labels = toy_labels()
    shift = np.zeros((2, 24, 20, 20), np.float32)  # y and x shifts at half resolution
    shift[1, :, :, 15] = 6.0  # a bad seam at x 30-31 (full resolution)
    block = shift_block(shift, (0, 0, 0), labels.shape, threshold=4, radius=(4, 4, 4),
                        scale=2)
    assert block.shape == labels.shape
    assert block[:, :, 26:36].all() and not block[:, :, :26].any()
    assert np.array_equal(block, shift_restriction(
        np.repeat(np.repeat(shift[1], 2, axis=1), 2, axis=2), 4, (4, 4, 4)))
    filler = FloodFiller(toy_image(labels), oracle, FOV, DELTAS,
                         FloodOptions(min_segment_size=10), mask=block)
    seg = filler.segment_all(np.array([[12, 9, 8]]))
    grown = seg[labels == 1] > 0
    xs = np.nonzero(seg)[2]
    assert grown.mean() > 0.5 and xs.max() <= 25 + FOV[2] // 2  # no FOV centre past x 25
    with pytest.raises(ValueError, match="does not cover"):
        shift_block(shift, (0, 0, 0), (24, 41, 40), scale=2)

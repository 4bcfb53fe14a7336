"""Flood filling of one volume: objects grown one FOV step at a time from seeds.

Each object starts from a seed with a logit canvas that is NaN ("not yet seen") except at
the seed, which is set to ``init_activation``. A FOV step crops the canvas around the current
position (NaN read as ``pad_value``), runs the network and *overwrites* the canvas there with
the new logits; with ``disco_seed_threshold`` set, voxels already judged outside the object
(below 0.5) are frozen and may not rise again ("disconnected voxel freezing", which keeps
objects from leaking back through a gap). The face-maximum queue
(:mod:`membrane_py.ffn.movement`) picks the next positions; the object ends when the queue
is empty or its seed voxel falls below ``move_threshold``. Then the canvas is binarised at
``segment_threshold`` inside the visited region, voxels of earlier objects are left alone,
and the rest becomes a new id unless it is smaller than ``min_segment_size``. Seeds closer
than ``min_boundary_dist`` to an existing object, in a masked region, or too near the volume
border for a whole FOV are skipped.

With ``concurrency`` 1 objects are grown strictly one after another, as the reference does.
With ``concurrency`` N, N objects grow side by side in separate canvases so that each
network call evaluates N FOVs in one batch (much faster where batches are, as on a GPU),
with the same result as strict order. Objects are committed in seed order; a seed that an
earlier object covered or came too close to is dropped at commit, as strict order would
have skipped it. An object reads the segmentation only when it moves (a FOV centre inside
an earlier object is refused), so it can only have gone astray if a FOV centre it visited
was claimed by an object committed while it grew: it is then started again from its seed.
Apart from floating-point differences between batched and single network calls,
concurrency changes only the speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.ffn.movement import FaceMaxQueue

#: predict(images, masks) -> logits, all (B, Z, Y, X) float32 (B FOVs in one call)
Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


@dataclass(frozen=True)
class FloodOptions:
    """Inference thresholds (probabilities, as the reference's config states them)."""

    init_activation: float = 0.95
    pad_value: float = 0.05
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_segment_size: int = 1000
    min_boundary_dist: tuple[int, int, int] = (1, 1, 1)  # z, y, x
    disco_seed_threshold: float | None = 0.0  # None turns voxel freezing off

    def __post_init__(self) -> None:
        for name in ("init_activation", "pad_value", "move_threshold", "segment_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got "
                                 f"{getattr(self, name)}")
        if self.min_segment_size < 0 or len(self.min_boundary_dist) != 3 or \
                min(self.min_boundary_dist) < 0:
            raise ValueError("min_segment_size must be >= 0 and min_boundary_dist three "
                             "values >= 0 (z, y, x)")


@dataclass
class _Object:
    start: tuple[int, int, int]
    slot: int
    queue: FaceMaxQueue
    lo: np.ndarray
    hi: np.ndarray
    iters: int = 0
    finished: bool = False
    visited: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class FloodStats:
    """What a run did: FOV steps, network calls, objects made, seeds rejected by reason."""

    steps: int = 0
    calls: int = 0
    objects: int = 0
    seeds: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    stopped_early: int = 0  # objects stopped once their rejection was certain
    restarts: int = 0  # objects started again after an earlier commit claimed their path
    discarded_steps: int = 0  # FOV steps of those objects thrown away
    network_s: float = 0.0
    total_s: float = 0.0

    def reject(self, why: str) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + 1


class FloodFiller:
    """Segments ``image`` (normalised float, z, y, x) with ``predict`` over FOVs of
    ``fov`` moved by ``deltas``. ``mask``: True where no FOV may be centred and no seed
    placed; ``seed_mask``: True where no seed is placed. ``early_stop`` (concurrency > 1):
    stop growing an object as soon as an earlier object's commit covers or borders its
    seed, since it is then rejected at commit anyway (False only to measure the saving)."""

    def __init__(self, image: np.ndarray, predict: Predict, fov: tuple[int, int, int],
                 deltas: tuple[int, int, int], options: FloodOptions | None = None, *,
                 mask: np.ndarray | None = None, seed_mask: np.ndarray | None = None,
                 concurrency: int = 1, early_stop: bool = True) -> None:
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        if any(s < f for s, f in zip(self.image.shape, fov, strict=True)):
            raise ValueError(f"the image {list(self.image.shape)} (z, y, x) is smaller than "
                             f"the FFN field of view {list(fov)}: use a larger volume or box")
        for name, m in (("mask", mask), ("seed_mask", seed_mask)):
            if m is not None and m.shape != self.image.shape:
                raise ValueError(f"{name} shape {m.shape} differs from the image "
                                 f"{self.image.shape}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.predict = predict
        self.radius = np.array([f // 2 for f in fov])
        self.deltas = tuple(int(d) for d in deltas)
        self.options = options = options or FloodOptions()
        self.mask, self.seed_mask = mask, seed_mask
        self.concurrency = concurrency
        self.early_stop = early_stop
        self.segmentation = np.zeros(self.image.shape, np.int32)
        self.origins: dict[int, tuple[int, int, int]] = {}
        self.stats = FloodStats()
        self._t_move = logit(options.move_threshold)
        self._t_seg = logit(options.segment_threshold)
        self._pad = np.float32(logit(options.pad_value))
        self._init = np.float32(logit(options.init_activation))
        self._canvases: list[np.ndarray] = []
        self._free: list[int] = []

    # -- positions -------------------------------------------------------------------------
    def _inside(self, pos) -> bool:
        p = np.asarray(pos)
        return bool(np.all(p >= self.radius) and np.all(p < np.array(self.image.shape)
                                                        - self.radius))

    def _fov(self, pos) -> tuple[slice, ...]:
        return tuple(slice(p - r, p + r + 1) for p, r in zip(pos, self.radius, strict=True))

    def _near_object(self, pos) -> bool:
        mbd = self.options.min_boundary_dist
        sel = tuple(slice(max(p - d, 0), p + d + 1) for p, d in zip(pos, mbd, strict=True))
        return bool(np.any(self.segmentation[sel] > 0))

    def _covered(self, pos) -> bool:
        """Whether an object committed while this seed's object grew (concurrency > 1)
        covers or borders the seed, which strict order would have skipped. Commits only
        add voxels, so once true it stays true."""
        return self.concurrency > 1 and (self.segmentation[pos] > 0 or
                                         self._near_object(pos))

    def _seed_ok(self, pos) -> bool:
        """Whether a seed may start here; marks it -1 when it is too close to an object."""
        if not self._inside(pos) or self.segmentation[pos] > 0:
            return False
        if (self.mask is not None and self.mask[pos]) or \
                (self.seed_mask is not None and self.seed_mask[pos]):
            return False
        if self._near_object(pos):
            self.stats.reject("too_close")
            self.segmentation[pos] = -1
            return False
        return True

    # -- one object --------------------------------------------------------------------------
    def _start(self, pos: tuple[int, int, int]) -> _Object:
        if not self._free:
            self._canvases.append(np.full(self.image.shape, np.nan, np.float32))
            self._free.append(len(self._canvases) - 1)
        slot = self._free.pop()
        self._canvases[slot][pos] = self._init
        queue = FaceMaxQueue(pos, self.deltas, self._t_move)
        return _Object(pos, slot, queue, np.array(pos), np.array(pos))

    def _extent(self, obj: _Object) -> tuple[slice, ...]:
        """The canvas box every FOV of ``obj`` so far lies in."""
        return tuple(slice(max(lo - r, 0), hi + r + 1)
                     for lo, hi, r in zip(obj.lo, obj.hi, self.radius, strict=True))

    def _restart_strayed(self, active: list[_Object]) -> None:
        """Start again every growing object that visited a FOV centre an object committed
        since then claims (strict order would have refused it there); objects whose seed
        is covered are left, as they are rejected at commit anyway."""
        for i, obj in enumerate(active):
            if not obj.visited or self._covered(obj.start):
                continue
            if not np.any(self.segmentation[tuple(np.array(obj.visited).T)] > 0):
                continue
            self._canvases[obj.slot][self._extent(obj)] = np.nan
            self._free.append(obj.slot)
            active[i] = self._start(obj.start)
            self.stats.restarts += 1
            self.stats.discarded_steps += obj.iters

    def _next(self, obj: _Object) -> tuple[int, int, int] | None:
        canvas = self._canvases[obj.slot]

        def valid(p) -> bool:
            return (self._inside(p) and canvas[p] >= self._t_move
                    and self.segmentation[p] <= 0)

        while True:
            if not canvas[obj.start] >= self._t_move:
                return None  # the seed got too weak
            pos = obj.queue.pop(valid)
            if pos is None or self.mask is None or not self.mask[pos]:
                return pos

    def _apply(self, obj: _Object, pos: tuple[int, int, int], logits: np.ndarray) -> None:
        canvas = self._canvases[obj.slot]
        sel = self._fov(pos)
        old = canvas[sel]
        disco = self.options.disco_seed_threshold
        if disco is not None and np.mean(logits >= self._t_move) > disco:
            with np.errstate(invalid="ignore"):
                frozen = (old < 0.0) & (logits > old)  # NaN compares False: unseen stays free
            logits = np.where(frozen, old, logits)
        canvas[sel] = logits
        obj.lo, obj.hi = np.minimum(obj.lo, pos), np.maximum(obj.hi, pos)
        obj.iters += 1
        obj.visited.append(pos)
        obj.queue.update(logits, pos)

    def _commit(self, obj: _Object) -> None:
        """Binarise the finished object into the segmentation (or reject it) and free its
        canvas."""
        canvas = self._canvases[obj.slot]
        sel = self._extent(obj)
        pos = obj.start
        if self._covered(pos):
            # an object committed meanwhile covers or borders this seed: sequentially it
            # would have been skipped
            self.stats.reject("covered")
            if self.segmentation[pos] == 0:
                self.segmentation[pos] = -1
        elif obj.iters == 0 or not canvas[pos] >= self._t_move:
            self.stats.reject("weak_seed")
            if self.segmentation[pos] == 0:
                self.segmentation[pos] = -1
        else:
            seg = self.segmentation[sel]
            new = (canvas[sel] >= self._t_seg) & (seg <= 0)
            if np.count_nonzero(new) < self.options.min_segment_size:
                self.stats.reject("too_small")
                if self.segmentation[pos] == 0:
                    self.segmentation[pos] = -1
            else:
                new_id = len(self.origins) + 1
                seg[new] = new_id
                self.origins[new_id] = tuple(int(v) for v in pos)
                self.stats.objects += 1
        canvas[sel] = np.nan
        self._free.append(obj.slot)

    # -- the whole volume ----------------------------------------------------------------------
    def segment_all(self, seeds: np.ndarray, progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None, task: str = "ffn") -> np.ndarray:
        """Flood-fill from each seed (z, y, x rows, in order); returns the uint32
        segmentation (0 = background)."""
        t0 = time.perf_counter()
        seeds = [tuple(int(v) for v in s) for s in np.asarray(seeds).reshape(-1, 3)]
        self.stats.seeds = len(seeds)
        fov = tuple(2 * int(r) + 1 for r in self.radius)
        active: list[_Object] = []
        next_seed, done_seeds = 0, 0
        while True:
            while len(active) < self.concurrency and next_seed < len(seeds):
                pos = seeds[next_seed]
                next_seed += 1
                if self._seed_ok(pos):
                    active.append(self._start(pos))
                else:
                    done_seeds += 1
            if not active:
                break
            check_cancel(cancel)
            requests = []
            for obj in active:
                if not obj.finished and self.early_stop and self._covered(obj.start):
                    obj.finished = True  # rejected at commit whatever it grows into
                    self.stats.stopped_early += 1
                pos = None if obj.finished else self._next(obj)
                if pos is None:
                    obj.finished = True
                else:
                    requests.append((obj, pos))
            if requests:
                images = np.empty((len(requests), *fov), np.float32)
                masks = np.empty_like(images)
                for i, (obj, pos) in enumerate(requests):
                    sel = self._fov(pos)
                    images[i] = self.image[sel]
                    masks[i] = np.nan_to_num(self._canvases[obj.slot][sel], nan=self._pad)
                t = time.perf_counter()
                logits = self.predict(images, masks)
                self.stats.network_s += time.perf_counter() - t
                self.stats.calls += 1
                self.stats.steps += len(requests)
                for (obj, pos), out in zip(requests, logits, strict=True):
                    self._apply(obj, pos, np.asarray(out, np.float32))
            committed = False
            while active and active[0].finished:
                self._commit(active.pop(0))
                committed = True
                done_seeds += 1
                report(progress, Event.progress(task, done_seeds, len(seeds),
                                                f"{self.stats.objects} objects, "
                                                f"{self.stats.steps} FOV steps"))
            if committed:
                self._restart_strayed(active)
        self.stats.total_s += time.perf_counter() - t0
        report(progress, Event.progress(task, len(seeds), len(seeds),
                                        f"{self.stats.objects} objects, "
                                        f"{self.stats.steps} FOV steps"))
        return np.maximum(self.segmentation, 0).astype(np.uint32)

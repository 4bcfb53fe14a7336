"""Follow VAST's view: predict what the user looks at while they browse, nearest first.

The job polls VAST's view (centre point, zoom, section) every ``poll`` seconds and keeps an
ordered queue of tiles at the displayed mip: the visible tiles of the current section (the
nearest to the centre first), then the same tiles ``sections`` above and below (the nearer
section first), then ``margin`` more rings of tiles around them. One tile at a time is read
with the job's context, predicted and written by the prediction runner's own pieces
(:func:`~membrane_py.predict.runner.prepare_run`, :func:`~membrane_py.volumes.blocks.read_chunks`,
:func:`~membrane_py.predict.runner.predict_block`, the runner's writer and layer refresher), so
a followed tile is byte-identical to ``membrane predict --chunk T,T,1`` with the same options.
When the view moves, the queue is rebuilt around the new view: queued tiles no longer near
it are dropped, and tiles already on disk (or known blank) are never predicted again.

VAST's API tells where the view is and its zoom, not the window size or how the zoom maps to
a mip; the job assumes a window of ``viewport`` (width, height) screen pixels showing one
voxel of the displayed mip per screen pixel, and that the displayed mip is
``max(0, -zoom) // zoom_per_mip`` (zoom 0 is 1:1 at mip 0; each ``zoom_per_mip`` steps out
halve x and y once), clipped to the volume's mips. ``mip`` fixes the mip instead.

Each predicted mip gets its own output folder ``<out>/mip<m>/`` (a complete prediction
folder: tiles, pyramid, ``.vsvi``, identity, loaded as the VAST layer
``"<layer_name> (mip m)"``), since a prediction folder holds tiles of one mip.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from membrane_py.events import (
    CancelToken,
    Event,
    ProgressCallback,
    check_cancel,
    report,
    warn,
)
from membrane_py.geometry import Box
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.predict.identity import JobMismatchError
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.predict.runner import Prepared, predict_block, prepare_run
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.blocks import Block, TileKey, read_chunks

TASK = "follow"


@dataclass(frozen=True)
class View:
    """Where VAST looks: the mip-0 centre (x, y, z) and the displayed mip."""

    x: int
    y: int
    z: int
    mip: int


def displayed_mip(zoom: int, zoom_per_mip: int, n_mips: int) -> int:
    """The mip VAST shows at ``zoom`` (see the module docstring for the assumption)."""
    return min(max(0, -zoom) // zoom_per_mip, n_mips - 1)


def view_order(view: View, shape: tuple[int, int, int], tile: int, viewport: tuple[int, int],
               sections: int, margin: int) -> list[tuple[int, TileKey]]:
    """The tiles (z, row, col) at ``view.mip`` to predict, nearest first, each with its
    group: 0 visible in the current section, 1 visible in the sections around, 2 the margin
    rings. ``shape`` is the volume's (z, y, x) size at that mip."""
    depth, height, width = shape
    m = view.mip
    cy, cx = view.y >> m, view.x >> m
    w, h = viewport
    rows, cols = -(-height // tile), -(-width // tile)
    y0, y1 = max(0, cy - h // 2), min(height, cy - h // 2 + h)
    x0, x1 = max(0, cx - w // 2), min(width, cx - w // 2 + w)
    if y0 >= y1 or x0 >= x1:  # the centre lies outside the volume: start at the nearest tile
        y0, x0 = min(max(cy, 0), height - 1), min(max(cx, 0), width - 1)
        y1, x1 = y0 + 1, x0 + 1
    r0, r1, c0, c1 = y0 // tile, -(-y1 // tile), x0 // tile, -(-x1 // tile)
    zs = sorted((z for z in range(view.z - sections, view.z + sections + 1) if 0 <= z < depth),
                key=lambda z: abs(z - view.z))

    def near(key: TileKey) -> tuple[int, float]:
        z, r, c = key
        dy, dx = (r + 0.5) * tile - cy, (c + 0.5) * tile - cx
        return abs(z - view.z), dy * dy + dx * dx

    visible = [(z, r, c) for z in zs for r in range(r0, r1) for c in range(c0, c1)]
    ring = [(z, r, c) for z in zs
            for r in range(max(0, r0 - margin), min(rows, r1 + margin))
            for c in range(max(0, c0 - margin), min(cols, c1 + margin))
            if not (r0 <= r < r1 and c0 <= c < c1)]
    here = sorted((k for k in visible if k[0] == view.z), key=near)
    around = sorted((k for k in visible if k[0] != view.z), key=near)
    return [(0, k) for k in here] + [(1, k) for k in around] + \
        [(2, k) for k in sorted(ring, key=near)]


@dataclass
class FollowJob(JobSpec):
    """Predict around VAST's view until cancelled (see the module docstring).

    ``predict`` holds the prediction settings (model, EM source, VAST address, layer,
    output folder, backend, test-time augmentation, outputs, ...); its ``region``, ``mip``
    and ``chunk`` are decided here (one tile per read). ``viewport`` is VAST's window
    (width, height) in screen pixels, ``sections`` how many sections above and below to
    predict, ``margin`` how many rings of tiles around the visible ones. ``poll``: seconds
    between view checks; ``max_seconds``: stop after this long (None: until cancelled).
    ``mip``: predict at this mip whatever the zoom (None: the displayed mip).
    """

    kind: ClassVar[str] = "follow"
    resumes: ClassVar[bool] = True

    predict: PredictJob
    viewport: list[int] = field(default_factory=lambda: [1920, 1080])
    sections: int = 1
    margin: int = 1
    poll: float = 0.5
    max_seconds: float | None = None
    mip: int | None = None
    zoom_per_mip: int = 1

    def __post_init__(self) -> None:
        p = self.predict
        checks = [
            (isinstance(p.checkpoint, str), "follow runs one model: give one checkpoint"),
            (p.vast_address is not None, "follow needs VAST to follow: give its address "
                                         "(--vast vast://HOST:PORT)"),
            (p.scheduler is None, "follow predicts in this process: drop the scheduler"),
            (not p.overwrite, "follow never recomputes written tiles: drop overwrite, or "
                              "follow into another folder"),
            (len(self.viewport) == 2 and min(self.viewport) >= 1,
             f"viewport must be width, height in screen pixels, got {self.viewport}"),
            (self.sections >= 0, f"sections must be >= 0, got {self.sections}"),
            (self.margin >= 0, f"margin must be >= 0 tiles, got {self.margin}"),
            (self.poll > 0, f"poll must be > 0 seconds, got {self.poll}"),
            (self.max_seconds is None or self.max_seconds > 0,
             f"max_seconds must be > 0, got {self.max_seconds}"),
            (self.mip is None or self.mip >= 0, f"mip must be >= 0, got {self.mip}"),
            (self.zoom_per_mip >= 1, f"zoom_per_mip must be >= 1, got {self.zoom_per_mip}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def at_mip(self, mip: int) -> PredictJob:
        """The prediction job of the tiles at ``mip``: its own folder and layer name."""
        p = self.predict
        return replace(p, mip=mip, out=str(Path(p.out) / f"mip{mip}"), region=RegionSpec(),
                       chunk=[1, p.tile, p.tile], layer_name=f"{p.layer_name} (mip {mip})")


@dataclass
class FollowResult(Result):
    """What following wrote: tiles per state, view changes seen, queued tiles dropped."""

    out: Path
    folders: list[Path]
    layers: list[int]
    tiles_written: int
    tiles_blank: int
    tiles_resumed: int
    views: int
    dropped: int
    seconds: float

    def summary(self) -> str:
        return (f"followed {self.views} view(s) for {self.seconds:.0f} s: "
                f"{self.tiles_written} tiles written, {self.tiles_blank} blank, "
                f"{self.tiles_resumed} already done, {self.dropped} queued tiles dropped "
                f"when the view moved\noutput folder(s): "
                + ", ".join(str(f) for f in self.folders))


class _Follower:
    """The state of one follow run: prepared outputs per mip, the queue, the counters."""

    def __init__(self, job: FollowJob, stack: ExitStack, client: VastClient,
                 progress: ProgressCallback | None) -> None:
        self.job, self.stack, self.client, self.progress = job, stack, client, progress
        self.runs: dict[int, Prepared] = {}
        self.blank: set[tuple[int, TileKey]] = set()
        self.written = self.n_blank = self.resumed = self.views = self.dropped = 0
        self.n_mips: int | None = None

    def flush(self) -> None:
        """Ask VAST now to reread what was written since its last refresh."""
        for run in self.runs.values():
            if run.refresher is not None:
                run.refresher.flush()

    def prepared(self, mip: int) -> Prepared:
        """The outputs at ``mip``, made on first use (the network is loaded once)."""
        if mip not in self.runs:
            loaded = next(iter(self.runs.values())).predictor if self.runs else None
            try:
                self.runs[mip] = prepare_run(self.job.at_mip(mip), self.stack, loaded,
                                             self.progress)
            except JobMismatchError as e:  # follow never overwrites: say what it can do
                raise JobMismatchError(e.problem, "follow into another folder (--out)") \
                    from None
            self.n_mips = self.runs[mip].volume.n_mips
        return self.runs[mip]

    def view(self) -> View:
        x, y, z = self.client.get_view_coordinates()
        if self.job.mip is not None:
            return View(x, y, z, self.job.mip)
        if self.n_mips is None:  # the volume's mip count, from the first prepared run
            self.prepared(0)
        mip = displayed_mip(self.client.get_view_zoom(), self.job.zoom_per_mip, self.n_mips)
        return View(x, y, z, mip)

    def queue(self, view: View) -> list[tuple[int, TileKey]]:
        run = self.prepared(view.mip)
        order = view_order(view, run.plan.shape, self.job.predict.tile,
                           tuple(self.job.viewport), self.job.sections, self.job.margin)
        return [(g, k) for g, k in order if (view.mip, k) not in self.blank
                and not run.writer.done(k)]

    def follow(self, start: float, cancel: CancelToken | None) -> None:
        """The loop: poll the view, rebuild the queue when it moved, predict the next tile."""
        job, progress = self.job, self.progress
        view, todo, changed, polled = None, [], 0.0, 0.0
        while job.max_seconds is None or time.monotonic() - start < job.max_seconds:
            check_cancel(cancel)
            if view is None or time.monotonic() - polled >= job.poll:
                polled = time.monotonic()
                now = self.view()
                if now != view:
                    new = self.queue(now)
                    keep = {(now.mip, k) for _, k in new}
                    dropped = sum(1 for _, k in todo if (view.mip, k) not in keep)
                    self.dropped += dropped
                    self.views += 1
                    view, todo, changed = now, new, time.monotonic()
                    visible = sum(1 for g, _ in todo if g == 0)
                    report(progress, Event(
                        "log", TASK, message=f"view at x={now.x} y={now.y} z={now.z}, mip "
                        f"{now.mip}: {len(todo)} tiles to predict ({visible} visible), "
                        f"{dropped} dropped", data={"view": [now.x, now.y, now.z],
                                                    "mip": now.mip, "queued": len(todo),
                                                    "visible": visible, "dropped": dropped}))
            if not todo:
                self.flush()  # everything near the view is written: show it all
                time.sleep(min(job.poll, 0.05))
                continue
            group, key = todo.pop(0)
            z, r, c = key
            where = f"section {z}, row {r}, column {c} at mip {view.mip}"
            report(progress, Event.progress(TASK, self.written, self.written + len(todo) + 1,
                                            f"predicting {where}", stage="predicting",
                                            tile=list(key), mip=view.mip, group=group))
            if self.predict_tile(view.mip, key):
                report(progress, Event.progress(
                    TASK, self.written, self.written + len(todo), f"wrote {where}",
                    stage="written", tile=list(key), mip=view.mip, group=group,
                    since_view_s=time.monotonic() - changed,
                    visible_left=sum(1 for g, _ in todo if g == 0)))

    def predict_tile(self, mip: int, key: TileKey) -> bool:
        """Read, predict and write one tile; True when a tile was written."""
        run, job = self.prepared(mip), self.job.at_mip(mip)
        z, r, c = key
        t, m = job.tile, job.margin
        _, h, w = run.plan.shape
        core = Box(z, z + 1, r * t, min((r + 1) * t, h), c * t, min((c + 1) * t, w))
        chunk = next(read_chunks(lambda b: run.volume.read(b, mip), [core], run.plan.shape,
                                 (0, m, m), prefetch=0))
        done = predict_block(job, Block(z, core, (key,)), chunk, run.predictor, run.writer.done)
        self.resumed += done.resumed
        if not done.keys:
            if done.blank:
                self.blank.add((mip, key))
                self.n_blank += 1
            return False
        run.writer.write(core, done.sections, done.probs, done.keys, done.spread)
        if job.pyramid:
            run.writer.build_pyramid(done.keys, set(done.keys))
        if run.refresher is not None:  # at most once a second while busy, see flush()
            run.refresher.add(core.to_mip0(mip))
        self.written += 1
        return True


def run_follow(job: FollowJob, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> FollowResult:
    """Follow VAST's view until ``cancel`` is set (raises
    :class:`~membrane_py.events.Cancelled`; what was written stays and is shown in VAST) or
    ``max_seconds`` have passed (returns the result)."""
    start = time.monotonic()
    with ExitStack() as stack:
        client = stack.enter_context(VastClient(*job.predict.vast_address))
        f = _Follower(job, stack, client, progress)
        try:
            f.follow(start, cancel)
        finally:  # what was written shows in VAST, also after a cancel
            f.flush()
    runs = sorted(f.runs.items())
    for mip, run in runs:
        if run.refresher is not None and run.refresher.error:
            warn(progress, f"VAST stopped refreshing the mip {mip} layer "
                 f"({run.refresher.error}); reload it in VAST to see the latest tiles", TASK)
        for path in run.writer.write_descriptors(run.plan.sections()):
            report(progress, Event.artifact(path.resolve(), TASK, f"VAST descriptor (mip {mip})"))
    return FollowResult(out=Path(job.predict.out).resolve(),
                        folders=[run.writer.out.resolve() for _, run in runs],
                        layers=[n for _, run in runs for n in run.layers],
                        tiles_written=f.written, tiles_blank=f.n_blank, tiles_resumed=f.resumed,
                        views=f.views, dropped=f.dropped, seconds=time.monotonic() - start)

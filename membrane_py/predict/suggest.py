"""Where to annotate next: rank square regions by the network's uncertainty, spread out.

A ``suggest`` job predicts with an uncertainty output (:mod:`membrane_py.predict.runner`:
the spread between test-time augmentations, or without them the entropy of the membrane
probability) or reads an uncertainty layer written before, scores every ``size`` x ``size``
region of every section by its mean uncertainty (or, with ``score="instability"``, by its
share of pixels on which the segmentation's topology hangs,
:func:`membrane_py.segment.instability.instability`, from the probability layer) and picks
the ``k`` best greedily: a pick
suppresses every other region closer than ``spacing`` px in both x and y and closer than
``z_spacing`` sections, so the list covers several uncertain places instead of ``k``
neighbours of the most uncertain one. The suggestions are written as a CSV (rank, centre x,
y, z at mip 0, size, score) and, with a VAST address, sent as one skeleton with one node per
suggestion (in rank order) into an annotation layer, where the user jumps from node to node.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from membrane_py.atomic import write_text_atomic
from membrane_py.codes import u8_to_probability
from membrane_py.events import CancelToken, Event, ProgressCallback, check_cancel, report
from membrane_py.geometry import Box, box_in_volume
from membrane_py.jobs.spec import JobSpec, Result
from membrane_py.predict.job import PredictJob, RegionSpec
from membrane_py.segment.instability import instability
from membrane_py.vastapi.address import DEFAULT_VAST, parse_vast_address
from membrane_py.vastapi.client import VastClient
from membrane_py.volumes.base import VolumeSource
from membrane_py.volumes.open import open_source

TASK = "suggest"
CSV_COLUMNS = ("rank", "x", "y", "z", "size", "score")
#: name of the annotation layer and skeleton the suggestions go to in VAST
ANNO_NAME = "membrane-py suggestions"
#: regions are scored at the coarsest mip where they are still this many pixels wide
MIN_SCORED_SIDE = 16
#: what a region can be scored by, and the layer of a prediction each ranks: the mean of
#: the uncertainty layer, or the share of unstable pixels computed from the probability
MAP_LAYERS = {"uncertainty": "uncertainty", "instability": "probability"}
#: instability is computed on whole sections at the finest mip holding at most this many
#: pixels per section (memory: about 40 bytes a pixel) ...
INSTABILITY_PIXELS = 1 << 24
#: ... and where a region is still this many pixels wide (membranes must stay resolved)
MIN_INSTABILITY_SIDE = 64


@dataclass(frozen=True)
class Suggestion:
    """One region to annotate: centre (x, y) and section z at mip 0, side ``size`` (mip-0
    px) and ``score`` in [0, 1], its mean uncertainty (or share of unstable pixels); rank 1
    is the most useful."""

    rank: int
    x: int
    y: int
    z: int
    size: int
    score: float

    @property
    def box(self) -> Box:
        """The region as a mip-0 box one section deep."""
        h = self.size // 2
        return Box(self.z, self.z + 1, self.y - h, self.y - h + self.size,
                   self.x - h, self.x - h + self.size)


def window_means(values: np.ndarray, side: int) -> np.ndarray:
    """Mean of every ``side`` x ``side`` window of a (y, x) map; entry (i, j) is the window
    whose top-left pixel is (i, j), so the result is ``side - 1`` smaller on each axis."""
    s = np.zeros((values.shape[0] + 1, values.shape[1] + 1), np.float64)
    s[1:, 1:] = values.cumsum(0).cumsum(1)
    sums = s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]
    return sums / (side * side)


def _blank(scores: np.ndarray, y: int, x: int, reach: int) -> None:
    """Rule out the windows closer than ``reach`` to (y, x) in both y and x."""
    scores[max(y - reach + 1, 0): y + reach, max(x - reach + 1, 0): x + reach] = -np.inf


def _spread_picks(scores: np.ndarray, k: int, spacing: int) -> Iterator[tuple[float, int, int]]:
    """Up to ``k`` (score, y, x) maxima of a score map, greedily, each blanking the windows
    closer than ``spacing`` in both y and x."""
    for _ in range(k):
        i = int(np.argmax(scores))
        y, x = divmod(i, scores.shape[1])
        if not np.isfinite(scores[y, x]):
            return
        yield float(scores[y, x]), y, x
        _blank(scores, y, x, spacing)


def rank_regions(sections: Iterable[tuple[int, np.ndarray]], k: int, side: int,
                 spacing: int, z_spacing: int = 1,
                 avoid: Iterable[tuple[int, int, int]] = (), power: float | None = None,
                 seed: int = 0) -> list[tuple[float, int, int, int]]:
    """The ``k`` most uncertain, well-separated ``side`` x ``side`` regions of a volume.

    ``sections`` yields (z, (y, x) uncertainty map); returns (score, z, y, x) with (y, x) the
    top-left corner in map pixels, in pick order. A pick suppresses every region closer than
    ``spacing`` px in both y and x and closer than ``z_spacing`` sections (1: the same
    section only). Each section offers its best regions spread by ``spacing`` (``k`` of them,
    or up to ``8 k`` when sampling); the choice runs over all of them. ``avoid`` lists
    (z, y, x) top-left corners of regions (e.g. annotated already) that no suggestion may
    overlap.

    ``power`` None: the greedy top-k. A number: sample the regions without replacement with
    probability proportional to ``score ** power`` (Gumbel top-k, seeded by ``seed``): the
    k most uncertain places alone are often of one kind (e.g. the darkest), and a network
    fine-tuned on them drifts; sampling keeps the preference for uncertainty but spreads the
    picks over more kinds of place. Large powers approach the greedy top-k.
    """
    if k < 1 or side < 1 or spacing < 1 or z_spacing < 1:
        raise ValueError("k, side, spacing and z_spacing must be >= 1")
    if power is not None and not power > 0:
        raise ValueError(f"power must be > 0 (or None for the greedy top-k), got {power}")
    candidates: list[tuple[float, int, int, int]] = []
    avoid = list(avoid)
    for z, u in sections:
        if u.shape[0] < side or u.shape[1] < side:
            raise ValueError(f"a {side} px region does not fit a {u.shape[1]}x{u.shape[0]} "
                             "section; give a smaller size")
        scores = window_means(u, side)
        for _, y, x in (a for a in avoid if a[0] == z):
            _blank(scores, y, x, side)
        offered = k if power is None else 8 * k
        candidates += [(s, z, y, x) for s, y, x in _spread_picks(scores, offered, spacing)]
    if power is None:
        candidates.sort(key=lambda c: -c[0])
    else:
        gumbel = np.random.default_rng(seed).gumbel(size=len(candidates))
        keys = power * np.log(np.maximum([c[0] for c in candidates], 1e-12)) + gumbel
        candidates = [candidates[i] for i in np.argsort(-keys, kind="stable")]
    picks: list[tuple[float, int, int, int]] = []
    for c in candidates:
        if all(abs(c[1] - p[1]) >= z_spacing or abs(c[2] - p[2]) >= spacing
               or abs(c[3] - p[3]) >= spacing for p in picks):
            picks.append(c)
            if len(picks) == k:
                break
    return picks


def write_suggestions(path: str | Path, suggestions: list[Suggestion]) -> Path:
    """The suggestions as a CSV with a header row (:data:`CSV_COLUMNS`), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in suggestions:
        w.writerow([s.rank, s.x, s.y, s.z, s.size, f"{s.score:.6f}"])
    return write_text_atomic(path, buf.getvalue())


def read_suggestions(path: str | Path) -> list[Suggestion]:
    """Suggestions from a CSV written by :func:`write_suggestions`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suggestions file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append(Suggestion(*(int(row[c]) for c in CSV_COLUMNS[:-1]),
                                  score=float(row["score"])))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} line {i} is not a suggestion row; the file needs the "
                             f"columns {', '.join(CSV_COLUMNS)}") from None
    return out


def send_suggestions(client: VastClient, suggestions: list[Suggestion],
                     anno_layer: int | None = None, name: str = ANNO_NAME) -> tuple[int, int]:
    """Add one skeleton named ``name`` with one node per suggestion (rank order, each node a
    child of the one before) to annotation layer ``anno_layer``; by default to the layer
    called ``name``, made (ADDNEWLAYER type 1) when VAST has none. Returns (layer, object)."""
    client.set_api_layers_enabled(True)
    if anno_layer is None:
        names = client.get_layer_names()
        anno_layer = names.index(name) if name in names else client.add_new_layer(1, name)
    client.set_selected_api_layer(anno_layer)
    obj = client.add_new_anno_object(name, type=1)
    client.set_selected_anno_object(obj)
    for s in suggestions:
        client.add_ao_node(s.x, s.y, s.z)
    return anno_layer, obj


@dataclass
class SuggestJob(JobSpec):
    """Rank the ``k`` regions most worth annotating (see the module docstring).

    With ``checkpoint`` the job first predicts ``source`` (layer ``layer`` of a VAST, or any
    volume) into ``out`` with the probability and uncertainty outputs (``tta`` > 1: the
    spread between augmentations; 1: the entropy of the probability); with ``map`` it ranks
    a layer written before (its ``.vsvi`` or any volume) instead. ``score`` "uncertainty"
    ranks by the mean of the uncertainty layer; "instability" by the share of pixels whose
    membrane decision joins or splits cells (computed from the probability layer, which
    ``map`` then names; no augmentations needed).
    ``box`` (mip 0, VAST's inclusive ``minx, maxx, miny, maxy, minz, maxz``) limits both.
    ``size``: side of a region, mip-0 px; ``spacing`` (default ``size``) and ``z_spacing``:
    how far apart suggestions are at least (x or y px, or sections). ``sample_power`` P
    (default 1) draws the regions at random with probability proportional to
    uncertainty^P (seeded by ``seed``; :func:`rank_regions`), which spreads them over more
    kinds of place and taught a network more than the most uncertain ones did
    (docs/assist.md); None takes the most uncertain regions. ``vast``: the VAST to
    send the suggestions to, as a skeleton in annotation layer ``anno_layer`` (default: a
    layer named :data:`ANNO_NAME`, made when missing). ``load_in_vast`` also loads the
    predicted layers into that VAST. ``overwrite`` replaces the tiles of an earlier, different
    prediction in ``out`` (another network, or the other score) instead of refusing them.
    """

    kind: ClassVar[str] = "suggest"
    resumes: ClassVar[bool] = True

    checkpoint: str | None = None
    map: str | None = None
    score: str = "uncertainty"
    source: str = DEFAULT_VAST
    layer: int = 0
    out: str = "suggestions"
    box: list[int] | None = None
    k: int = 10
    size: int = 256
    spacing: int | None = None
    z_spacing: int = 3
    sample_power: float | None = 1.0
    seed: int = 0
    tta: int = 4
    mip: int = 0
    backend: str = "auto"
    device: str = "auto"
    vast: str | None = None
    anno_layer: int | None = None
    load_in_vast: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.map is None):
            raise ValueError("give either a checkpoint (predict, then rank) or a layer written "
                             "before (map / --map), not both or neither")
        checks = [(self.score in MAP_LAYERS,
                   f"score must be one of {', '.join(MAP_LAYERS)}, got {self.score!r}"),
                  (self.k >= 1, f"k must be >= 1, got {self.k}"),
                  (self.size >= 2, f"size must be >= 2 px, got {self.size}"),
                  (self.spacing is None or self.spacing >= 1,
                   f"spacing must be >= 1 px, got {self.spacing}"),
                  (self.z_spacing >= 1, f"z_spacing must be >= 1 section, got {self.z_spacing}"),
                  (self.sample_power is None or self.sample_power > 0,
                   f"sample_power (--sample) must be > 0 (--top-k: the most uncertain); got "
                   f"{self.sample_power}"),
                  (self.vast is not None or not self.load_in_vast,
                   "load_in_vast needs the VAST address (vast / --vast)")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.box is not None:
            Box.from_vast_list(self.box)
        if self.vast is not None and parse_vast_address(self.vast) is None:
            raise ValueError(f"vast must be a VAST address like {DEFAULT_VAST}, got {self.vast!r}")
        if self.checkpoint is not None:
            self.predict_job()  # checks tta, mip, backend, source

    def predict_job(self) -> PredictJob:
        """The prediction that writes the probability and uncertainty layers."""
        region = RegionSpec("box", box=self.box) if self.box is not None else RegionSpec()
        return PredictJob(checkpoint=str(self.checkpoint), source=self.source, layer=self.layer,
                          out=self.out, vast=self.vast, backend=self.backend, device=self.device,
                          mip=self.mip, region=region,
                          tta=self.tta if self.score == "uncertainty" else 1,
                          uncertainty=self.score == "uncertainty",
                          load_in_vast=self.load_in_vast, overwrite=self.overwrite)


@dataclass
class SuggestResult(Result):
    """The ranked suggestions, the CSV and map they came from, and where VAST holds them."""

    csv: Path
    map: str
    suggestions: list[Suggestion]
    anno_layer: int | None = None
    anno_object: int | None = None

    def summary(self) -> str:
        lines = [f"{len(self.suggestions)} suggestions written to {self.csv} "
                 f"(from {self.map})"]
        lines += [f"  {s.rank:>3}: x {s.x}, y {s.y}, z {s.z}  (score {s.score:.3f})"
                  for s in self.suggestions]
        if self.anno_object is not None:
            lines.append(f"sent to VAST: skeleton {self.anno_object} '{ANNO_NAME}' in "
                         f"annotation layer {self.anno_layer}")
        return "\n".join(lines)


def scored_mip(volume: VolumeSource, size: int, score: str = "uncertainty",
               box: Box | None = None) -> int:
    """The mip (with tiles on disk) that ``box``'s regions are scored at.

    Uncertainty: the coarsest at which a region is still :data:`MIN_SCORED_SIDE` px wide
    (means pool exactly, so coarse mips lose little). Instability: the finest whose sections
    hold at most :data:`INSTABILITY_PIXELS` px, among those at which a region is still
    :data:`MIN_INSTABILITY_SIDE` px wide (the topology needs resolved membranes)."""
    has = getattr(volume, "has_tiles", lambda m: True)
    mips = [m for m in range(volume.n_mips) if has(m)] or [0]
    if score == "uncertainty":
        fine = [m for m in mips if size >> m >= MIN_SCORED_SIDE]
        return max(fine) if fine else min(mips)
    fine = [m for m in mips if size >> m >= MIN_INSTABILITY_SIDE] or [min(mips)]
    box = box or Box.full(volume.shape)
    area = (box.y1 - box.y0) * (box.x1 - box.x0)
    small = [m for m in fine if area >> (2 * m) <= INSTABILITY_PIXELS]
    return min(small) if small else max(fine)


def rank_volume(volume: VolumeSource, box: Box, k: int, size: int, spacing: int,
                z_spacing: int, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None, power: float | None = None,
                seed: int = 0, score: str = "uncertainty") -> list[Suggestion]:
    """:func:`rank_regions` inside mip-0 ``box`` of a uint8 volume (probability-coded, 0
    missing): an uncertainty layer, or with ``score`` "instability" a membrane probability
    layer whose sections are turned into :func:`instability` maps first; returns mip-0
    suggestions."""
    if min(box.y1 - box.y0, box.x1 - box.x0) < size:
        raise ValueError(f"a {size} px region does not fit the {box.x1 - box.x0}x"
                         f"{box.y1 - box.y0} px sections ranked; give a smaller size (--size)")
    mip = scored_mip(volume, size, score, box)
    f = 1 << mip
    region = Box(box.z0, box.z1, -(-box.y0 // f), box.y1 // f, -(-box.x0 // f), box.x1 // f)
    side = max(size // f, 1)

    def sections() -> Iterator[tuple[int, np.ndarray]]:
        for i, z in enumerate(range(region.z0, region.z1)):
            check_cancel(cancel)
            plane = volume.read(Box(z, z + 1, region.y0, region.y1, region.x0, region.x1), mip)
            report(progress, Event.progress(TASK, i + 1, region.z1 - region.z0,
                                            f"ranking section {z}"))
            values = u8_to_probability(plane[0], missing=0.0)
            yield z, instability(values) if score == "instability" else values

    picks = rank_regions(sections(), k, side, max(math.ceil(spacing / f), 1), z_spacing,
                         power=power, seed=seed)
    return [Suggestion(rank=i + 1, x=(region.x0 + x) * f + size // 2,
                       y=(region.y0 + y) * f + size // 2, z=z, size=size, score=round(s, 6))
            for i, (s, z, y, x) in enumerate(picks)]


def run_suggest(job: SuggestJob, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> SuggestResult:
    """Predict (when the job names a checkpoint), rank, write the CSV, send to VAST."""
    wanted = MAP_LAYERS[job.score]
    if job.checkpoint is not None:
        from membrane_py.predict.runner import run_prediction

        run_prediction(job.predict_job(), progress, cancel)
        map_path = str(Path(job.out) / f"{wanted}.vsvi")
    else:
        map_path = str(job.map)
    given = next((name for name in MAP_LAYERS.values() if name in Path(map_path).name), wanted)
    with ExitStack() as stack:
        volume = stack.enter_context(open_source(map_path))
        if given != wanted or volume.channels != 1 or np.dtype(volume.dtype) != np.uint8:
            raise ValueError(f"{map_path} is not an 8-bit {wanted} layer; scoring by "
                             f"{job.score} ranks the {wanted}.vsvi that membrane predict "
                             f"wrote{' with --uncertainty' if wanted == 'uncertainty' else ''}")
        box = Box.full(volume.shape)
        if job.box is not None:
            box = box_in_volume(job.box, volume.shape)[0]
        suggestions = rank_volume(volume, box, job.k, job.size, job.spacing or job.size,
                                  job.z_spacing, progress, cancel, job.sample_power, job.seed,
                                  job.score)
    csv_path = write_suggestions(Path(job.out) / "suggestions.csv", suggestions).resolve()
    report(progress, Event.artifact(csv_path, TASK, "suggestions CSV"))
    layer = obj = None
    if job.vast is not None:
        with VastClient(*parse_vast_address(job.vast)) as client:
            layer, obj = send_suggestions(client, suggestions, job.anno_layer)
    return SuggestResult(csv_path, map_path, suggestions, layer, obj)

"""Whole-section validation: the V_rand that ``membrane evaluate`` reports, every epoch.

Patch validation (:func:`membrane_py.train.trainer.validate`) scores patches of the
validation images. A merge through a membrane gap shows only where it joins two cells, which
a 256^2 patch rarely contains: on ISBI 2012 patches read about 0.95 while the same network
scored 0.44-0.54 on the whole sections. Here each whole validation section is predicted by
the tiled engine (:class:`membrane_py.infer.engine.TiledPredictor`, as ``membrane predict``
and ``membrane evaluate`` run it) and scored with evaluate's watershed and V_rand
(:func:`membrane_py.train.metrics.membrane_scores`) at each of a few membrane thresholds.
The threshold with the best mean V_rand picks the best checkpoint and is recorded in it
(:attr:`membrane_py.train.checkpoint.Checkpoint.threshold`) for ``evaluate`` and
``instances``.

A network with batch normalisation is scored twice (:func:`best_section_scores`): as it is,
and with its batch-norm statistics adapted to the validation sections
(:mod:`membrane_py.infer.batchnorm`, what prediction does with ``--adapt-bn``). A network
trained with every augmentation records statistics of augmented patches, and sections
other than the training ones can sit apart from them: on ISBI 2012 a 10-minute run scored
0.86 on sections 15-19 as it was and 0.96 adapted. The better of the two counts, and the
checkpoint records whether adapting won
(:attr:`~membrane_py.train.checkpoint.Checkpoint.adapt_bn`), so that prediction adapts by
default exactly for the networks that validated better adapted.

Layering: the engine and the adaptation live above ``train``, but they are the one tiler
and the one adaptation, so they are imported inside the functions (``membrane_py.infer``
imports ``train.checkpoint`` at import time, never this module).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from membrane_py.augment.preprocess import PreprocessConfig
from membrane_py.events import Event, ProgressCallback, report
from membrane_py.models import UNet
from membrane_py.train.metrics import membrane_scores

#: membrane thresholds swept on every validation (evaluate's ``--threshold``: pixels below
#: are cell interior, grown back over the membranes by a watershed)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class Sections:
    """Whole validation sections: uint8 (y, x) EM and their class maps (0 = unknown,
    1 = non-membrane, 2 = membrane)."""

    images: list[np.ndarray]
    labels: list[np.ndarray]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels) or not self.images:
            raise ValueError(f"need as many label maps as sections (>= 1), got "
                             f"{len(self.images)} and {len(self.labels)}")
        for i, (im, lab) in enumerate(zip(self.images, self.labels, strict=True)):
            if im.dtype != np.uint8 or im.ndim != 2 or im.shape != lab.shape:
                raise ValueError(f"section {i}: need a uint8 (y, x) image and labels of the "
                                 f"same shape, got {im.dtype} {im.shape} and {lab.shape}")


@dataclass
class SectionScore:
    """Mean V_rand over the sections at each threshold, the best of them, and the cost."""

    by_threshold: dict[float, float]
    threshold: float
    v_rand: float
    n_sections: int
    seconds: float
    #: scored with the batch norm adapted to the sections
    adapt_bn: bool = False
    #: the other way's V_rand (plain for an adapted score and back), None when not scored
    other_v_rand: float | None = None

    def record(self) -> dict[str, float | bool]:
        """The scalar entries an epoch's history record gets."""
        rec = {"val_section_v_rand": self.v_rand, "val_section_threshold": self.threshold,
               "val_section_adapt_bn": self.adapt_bn, "val_section_seconds": self.seconds}
        if self.other_v_rand is not None:
            plain, adapted = ((self.other_v_rand, self.v_rand) if self.adapt_bn
                              else (self.v_rand, self.other_v_rand))
            rec.update(val_section_v_rand_plain=plain, val_section_v_rand_adapted=adapted)
        return rec

    def describe(self) -> str:
        sweep = ", ".join(f"{t:g}: {v:.3f}" for t, v in self.by_threshold.items())
        how = ""
        if self.other_v_rand is not None:
            how = (f", batch norm adapted (plain {self.other_v_rand:.4f})" if self.adapt_bn
                   else f", plain (batch norm adapted {self.other_v_rand:.4f})")
        return (f"whole-section validation ({self.n_sections} sections, {self.seconds:.1f} s): "
                f"V_rand {self.v_rand:.4f} at threshold {self.threshold:g}{how} ({sweep})")


def pick_sections(n: int, limit: int) -> list[int]:
    """At most ``limit`` of ``n`` section indices, evenly spread (all when ``n <= limit``)."""
    if limit <= 0 or n == 0:
        return []
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


def whole_sections(ds: Dataset | None, limit: int) -> Sections | None:
    """The whole validation images behind an on-the-fly patch dataset (at most ``limit``,
    evenly spread), or None for patch datasets (a folder of patch-sized images) and when
    ``limit`` is 0: those keep patch validation only."""
    from membrane_py.augment.dataset import OnTheFlyPatchDataset

    if not isinstance(ds, OnTheFlyPatchDataset):
        return None
    keep = pick_sections(len(ds.images), limit)
    if not keep:
        return None
    return Sections([ds.images[i] for i in keep], [ds.samplers[i].labels for i in keep])


def is_membrane_network(class_names: list[str]) -> bool:
    """Whole-section V_rand needs a membrane map: two classes, the second ``membrane``."""
    return len(class_names) == 2 and class_names[-1] == "membrane"


def usable_sections(sections: Sections | None, class_names: list[str], patches: bool,
                    progress: ProgressCallback | None = None) -> Sections | None:
    """``sections`` when the network makes membrane maps, else None; a log event says when
    validation stays on patches (``patches``: the run validates on patches)."""
    membrane = is_membrane_network(class_names)
    if sections is not None and not membrane:
        report(progress, Event.log("whole-section validation needs a membrane network "
                                   "(classes non-membrane, membrane); scoring patches only",
                                   "train"))
        return None
    if sections is None and patches and membrane:
        report(progress, Event.log("no whole validation sections (the images are patches): "
                                   "validation scores patches, where merges across a section "
                                   "do not show", "train"))
    return sections


@torch.no_grad()
def section_scores(model: UNet, sections: Sections, preprocess: PreprocessConfig,
                   device: torch.device, thresholds: tuple[float, ...] = THRESHOLDS,
                   amp: bool = True, tta: int = 1) -> SectionScore:
    """Predict every section whole and score it at each threshold (see the module doc).

    ``model`` is copied for inference (its mode and weights are left alone); ``amp``:
    bf16 on CUDA, as training; ``tta``: the engine's test-time augmentation."""
    from membrane_py.infer.engine import EngineConfig, TiledPredictor
    from membrane_py.infer.torch_backend import TorchBackend

    if not thresholds:
        raise ValueError("give at least one threshold")
    start = time.perf_counter()
    precision = "bf16" if amp and device.type == "cuda" else "fp32"
    backend = TorchBackend(model, device, precision=precision)
    predictor = TiledPredictor(backend, ["non-membrane", "membrane"], preprocess,
                               EngineConfig(tta=tta))
    scores = np.full((len(sections.images), len(thresholds)), np.nan)
    for i, (image, gt) in enumerate(zip(sections.images, sections.labels, strict=True)):
        if not (gt == 1).any():
            continue  # no cell interior labelled: nothing to score
        prob = predictor.predict(image[None])[0, 1]
        scores[i] = [membrane_scores(prob, gt, t)["v_rand"] for t in thresholds]
    scored = ~np.isnan(scores[:, 0])
    if not scored.any():
        raise ValueError("no validation section has labelled cell interior (class 1) to "
                         "score; check the validation labels")
    mean = scores[scored].mean(axis=0)
    best = int(np.argmax(mean))
    return SectionScore({float(t): float(v) for t, v in zip(thresholds, mean, strict=True)},
                        float(thresholds[best]), float(mean[best]), int(scored.sum()),
                        time.perf_counter() - start)


def best_section_scores(model: UNet, sections: Sections, preprocess: PreprocessConfig,
                        device: torch.device, amp: bool = True) -> SectionScore:
    """:func:`section_scores` of ``model`` and, when it has batch normalisation, of a copy
    with the batch norm adapted to crops of the sections: the better of the two (ties go
    to the plain network), with the other's V_rand and the time of both."""
    from membrane_py.infer.batchnorm import (
        ADAPT_PATCHES,
        adapt_network,
        batch_norm_layers,
        crops,
    )

    plain = section_scores(model, sections, preprocess, device, amp=amp)
    if not batch_norm_layers(model):
        return plain
    start = time.perf_counter()
    net = adapt_network(copy.deepcopy(model), crops(sections.images, ADAPT_PATCHES),
                        preprocess)
    adapted = section_scores(net, sections, preprocess, device, amp=amp)
    seconds = plain.seconds + time.perf_counter() - start
    if adapted.v_rand > plain.v_rand:
        return replace(adapted, adapt_bn=True, other_v_rand=plain.v_rand, seconds=seconds)
    return replace(plain, other_v_rand=adapted.v_rand, seconds=seconds)

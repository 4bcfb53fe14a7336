"""Ground-truth conversions and label import.

Conventions: 0 = unknown (ignored by losses), classes 1..K. Membrane ground truth is
1 = non-membrane, 2 = membrane; skeleton ground truth is 1 = background, 2 = near a skeleton.
All conversions are numpy-in / numpy-out; the folder drivers live in :mod:`patches`.

Label images on disk come in three formats (:data:`LABEL_FORMATS`), and ``patches``,
``train`` and ``evaluate`` read them all through :func:`convert_labels`:

- ``classes``: pixel values are the classes, 0 = unknown (what ``membrane gt`` writes);
- ``codes``: mEMbrain's PNG class codes, class k of K stored as round(255 (k-1)/(K-1))
  (what ``membrane patches`` writes, with K in its manifest.json);
- ``isbi``: a binary mask, 0 = membrane, 255 = interior (the ISBI 2012 labels).

``auto`` (the default) decides from the values where they are unambiguous: all in 0..2 is
``classes``; 0/255 is a binary mask whose rarer value is the membrane (``isbi`` when 0 is
rarer, ``codes`` with two classes when 255 is); the codes of 3..``max_classes`` classes
(which include 255) are ``codes``. Anything else stops with the values found and the option
to pass: small integers above 2, for one, may be painted classes or a few instance ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects, skeletonize

from membrane_py.codes import decode_label_png, infer_n_classes, label_codes, rgb_to_ids
from membrane_py.geometry import Box, box_in_volume, volume_extent
from membrane_py.volumes.open import open_source
from membrane_py.volumes.stacks import list_sections, read_image

NON_MEMBRANE, MEMBRANE = 1, 2
LABEL_FORMATS = ("auto", "classes", "codes", "isbi")
#: the most classes a network gets unless asked for more: a person paints a handful of classes
#: (membrane, mitochondria, synapses, vesicles, ...); more means instance ids or a wrong format
MAX_CLASSES = 16
#: a binary mask's rarer value is taken as membrane only when it covers less than this share
#: of the pixels (membranes cover about a fifth of a section); closer to half is ambiguous
_MASK_MINORITY = 0.4


def _check_2d_integer(labels: np.ndarray, what: str) -> None:
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2D (y, x) image, got shape {labels.shape}; "
                         "convert stacks slice by slice")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"{what} must hold integer ids, got dtype {labels.dtype}; "
                         "RGB-coded ids go through rgb_to_ids first")


def instances_to_membrane(
    instances: np.ndarray,
    thickness: int = 3,
    fill_ecs: bool = False,
    unknown_id: int | None = None,
) -> np.ndarray:
    """Neuron instance ids (y, x) -> uint8 membrane labels (1 non-membrane, 2 membrane, 0 unknown).

    A pixel is membrane when its ``thickness`` x ``thickness`` neighbourhood holds more than one
    id, which draws bands about ``thickness`` pixels wide on every boundary. With ``fill_ecs``,
    id 0 (extracellular space) becomes membrane as well. Pixels whose id is ``unknown_id`` stay
    0 (unknown) and do not create boundaries against their neighbours. Ids are compared in
    int64, so no id saturates (mEMbrain's uint8 ``label + 1`` did).
    """
    _check_2d_integer(instances, "instance labels")
    if thickness < 1:
        raise ValueError(f"membrane thickness must be >= 1, got {thickness}")
    if fill_ecs and unknown_id == 0:
        raise ValueError("id 0 cannot be both extracellular space (fill_ecs) and unknown")
    ids = instances.astype(np.int64)
    size = (thickness, thickness)
    if unknown_id is None:
        known = np.ones(ids.shape, dtype=bool)
        hi = ndimage.maximum_filter(ids, size=size, mode="nearest")
        lo = ndimage.minimum_filter(ids, size=size, mode="nearest")
    else:
        # unknown pixels take the smallest known id for the maximum and the largest for the
        # minimum, so they never move either (int64 extremes as fillers overflow in scipy's
        # filters and drew bands against the unknown region)
        known = ids != unknown_id
        values = ids[known] if known.any() else np.zeros(1, np.int64)
        hi = ndimage.maximum_filter(np.where(known, ids, values.min()), size=size,
                                    mode="nearest")
        lo = ndimage.minimum_filter(np.where(known, ids, values.max()), size=size,
                                    mode="nearest")
    boundary = known & (hi != lo)
    out = np.full(ids.shape, NON_MEMBRANE, dtype=np.uint8)
    out[boundary] = MEMBRANE
    if fill_ecs:
        out[ids == 0] = MEMBRANE
    out[~known] = 0
    return out


def _clean_mask(mask: np.ndarray, min_size: int, filter_size: int, sigma: float) -> np.ndarray:
    """Drop components under ``min_size`` px (8-connected), blur and re-threshold."""
    if min_size > 1:
        mask = remove_small_objects(mask, max_size=min_size - 1, connectivity=2)
    if filter_size > 1:
        blurred = cv2.GaussianBlur(mask.astype(np.float32), (filter_size, filter_size), sigma)
        mask = blurred > 0.5
    return mask


def membrane_to_skeleton(
    membrane: np.ndarray,
    has_unknown: bool = True,
    filter_size: int = 3,
    sigma: float = 2.0,
    min_size: int = 15,
    band: float = 5.0,
    non_membrane: int | None = None,
) -> np.ndarray:
    """Membrane labels (y, x) -> uint8 skeleton labels (1 background, 2 near skeleton, 0 unknown).

    The non-membrane value is ``non_membrane`` or else the most common value (over non-zero
    pixels when ``has_unknown``); the other value is membrane. Both masks lose components under
    ``min_size`` px, are smoothed with a ``filter_size`` Gaussian (1 = none) and re-thresholded;
    non-membrane wins overlaps and gaps take the 9x9 median. The non-membrane region is
    skeletonised and pixels closer than ``band`` px to the skeleton become 2. With
    ``has_unknown``, input 0 pixels stay 0. Unlike mEMbrain's no-zero variant the output always
    uses 1/2 for background/skeleton, so 0 keeps meaning "unknown" downstream.
    """
    _check_2d_integer(membrane, "membrane labels")
    if filter_size not in (1, 3, 5, 7):
        raise ValueError(f"filter_size must be 1 (no filter), 3, 5 or 7, got {filter_size}")
    considered = membrane[membrane != 0] if has_unknown else membrane.ravel()
    values, counts = np.unique(considered, return_counts=True)
    if values.size == 0:
        raise ValueError("membrane labels are empty (every pixel is 0 = unknown)")
    if non_membrane is None:
        non_membrane = int(values[np.argmax(counts)])
    others = [int(v) for v in values if v != non_membrane]
    if len(others) > 1:
        raise ValueError(f"membrane labels must hold two values (plus 0 = unknown), got {values}")
    nm = _clean_mask(membrane == non_membrane, min_size, filter_size, sigma)
    mem = (_clean_mask(membrane == others[0], min_size, filter_size, sigma)
           if others else np.zeros_like(nm))
    composed = np.where(nm, 1, np.where(mem, 2, 0)).astype(np.uint8)
    gaps = composed == 0
    if gaps.any():
        composed[gaps] = ndimage.median_filter(composed, size=9, mode="nearest")[gaps]
    skeleton = skeletonize(composed == 1)
    out = np.full(membrane.shape, 1, dtype=np.uint8)
    if skeleton.any():
        out[ndimage.distance_transform_edt(~skeleton) < band] = 2
    if has_unknown:
        out[membrane == 0] = 0
    return out


def map_values(labels: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Map raw label values to classes (e.g. ISBI ``{0: 2, 255: 1}``); unmapped values raise."""
    present = np.unique(labels)
    missing = [int(v) for v in present if int(v) not in mapping]
    if missing:
        raise ValueError(f"label values {missing[:10]} have no class in the mapping "
                         f"{dict(mapping)}; add them (map to 0 for unknown)")
    keys = np.array(sorted(mapping), dtype=np.int64)
    vals = np.array([mapping[int(k)] for k in keys], dtype=np.int64)
    return vals[np.searchsorted(keys, labels.astype(np.int64))]


def apply_mapping(fragments: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Fragment ids -> body ids by ``pairs`` rows (fragment, body), as FIB-25's
    ``transforms``; ids without a row keep their value. Returns int64."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"a fragment -> body mapping is (N, 2) pairs, got shape {pairs.shape}")
    ids = fragments.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0 or pairs.size and pairs.min() < 0:
        raise ValueError("fragment and body ids must be >= 0")
    top = max(int(ids.max(initial=0)), int(pairs[:, 0].max(initial=0)))
    lut = np.arange(top + 1, dtype=np.int64)
    lut[pairs[:, 0]] = pairs[:, 1]
    return lut[ids]


def read_mapping(spec: str | Path) -> np.ndarray:
    """Fragment -> body pairs (int64 (N, 2)) from ``file.h5:dataset`` (``.h5.gz`` too, as
    FIB-25's ``groundtruth.h5.gz:transforms``), a ``.npy`` file or a two-column ``.csv`` /
    ``.txt`` (comma- or space-separated)."""
    import h5py

    from membrane_py.volumes.hdf5 import gunzip_cached

    text = str(spec)
    path, inner = Path(text), ""
    if not path.exists() and ":" in text:
        head, inner = text.rsplit(":", 1)
        path = Path(head)
    if not path.is_file():
        raise FileNotFoundError(f"mapping file {path} not found")
    name = path.name.lower()
    try:
        if name.endswith((".h5", ".hdf5", ".h5.gz", ".hdf5.gz")):
            if not inner:
                raise ValueError(f"name the dataset of {path}: '{path}:transforms'")
            local = gunzip_cached(path) if name.endswith(".gz") else path
            with h5py.File(local, "r") as f:
                if inner not in f:
                    raise ValueError(f"{path} has no dataset {inner!r}; it holds {list(f)}")
                pairs = f[inner][()]
        elif name.endswith(".npy"):
            pairs = np.load(path, allow_pickle=False)
        else:
            pairs = np.loadtxt(path, delimiter="," if name.endswith(".csv") else None,
                               dtype=np.int64, ndmin=2)
    except OSError as e:
        raise ValueError(f"cannot read the mapping {path}: {e}") from e
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"a mapping holds integer (fragment, body) pairs, (N, 2); {text} "
                         f"holds {pairs.dtype} {pairs.shape}")
    return pairs.astype(np.int64)


def binary_to_classes(mask: np.ndarray, membrane_value: int = 0) -> np.ndarray:
    """Binary membrane mask (ISBI: 0 = membrane, 255 = interior) -> 1 non-membrane / 2 membrane."""
    values = np.unique(mask)
    if values.size > 2:
        raise ValueError(f"a binary mask holds at most two values, got {values[:10]}")
    return np.where(mask == membrane_value, MEMBRANE, NON_MEMBRANE).astype(np.uint8)


def values_to_classes(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Any number of classes: ``values[i]`` becomes class i + 1; every other value becomes 0."""
    out = np.zeros(labels.shape, dtype=np.uint8 if len(values) < 255 else np.uint16)
    for k, v in enumerate(values, start=1):
        out[labels == v] = k
    return out


def decode_label_image(image: np.ndarray) -> np.ndarray:
    """A label image as read from disk (grayscale, or RGB(A) in R, G, B order) -> int64 ids."""
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return rgb_to_ids(image[..., :3])
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {image.shape}")
    _check_2d_integer(image, "label image")
    return image.astype(np.int64)


def read_label_image(path: str | Path) -> np.ndarray:
    """One label image file -> int64 ids (RGB-coded ids decoded)."""
    return decode_label_image(read_image(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural name order; an empty or missing folder raises."""
    return list_sections(folder)


def read_label_stack(spec: str | Path, box: Box | None = None, mip: int = 0) -> np.ndarray:
    """Ground truth (z, y, x) int64 from any volume spec (image folder, TIFF, 'file.h5:dataset',
    'vast://HOST:PORT' for a VAST segmentation layer), optionally only ``box`` (at ``mip``)."""
    try:
        with open_source(spec, labels=True) as volume:
            full = Box.full(volume.shape_at(mip))
            if box is not None and box.intersect(full) != box:  # says the extent, x, y, z
                box_in_volume(list(box.to_mip0(mip).to_vast()), volume.shape)
                raise ValueError(f"box {list(box.to_vast())} reaches outside the volume at mip "
                                 f"{mip}, which spans {volume_extent(full.shape)} there")
            return read_volume_labels(volume, box or full, mip)
    except FileNotFoundError as e:
        raise ValueError(f"unknown ground-truth source {str(spec)!r}: {e}") from e


def read_volume_labels(source, box: Box, mip: int = 0) -> np.ndarray:
    """Ground truth (z, y, x) int64 from a VolumeSource (e.g. a VAST segmentation layer)."""
    data = source.read(box, mip)
    if data.ndim == 4:
        return rgb_to_ids(data[..., :3]) if data.shape[-1] >= 3 else data[..., 0].astype(np.int64)
    return data.astype(np.int64)


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:8])
    return f"{shown}{', ...' if len(values) > 8 else ''} ({len(values)} distinct)"


def detect_label_format(raw: Sequence[np.ndarray], max_classes: int = MAX_CLASSES) -> str:
    """The format (``classes``, ``codes`` or ``isbi``) of label images, read from their values
    (see the module docstring); values that fit none, or fit two, raise ValueError."""
    per_image = [np.unique(r, return_counts=True) for r in raw]  # never one giant array
    values, where = np.unique(np.concatenate([v for v, _ in per_image]), return_inverse=True)
    counts = np.bincount(where, weights=np.concatenate([c for _, c in per_image]))
    hint = ("pass --label-format classes, codes or isbi (and --max-classes N for more than "
            f"{max_classes} classes)")
    if values.size and values.min() >= 0 and values.max() <= 2:
        return "classes"
    if values.tolist() == [255]:
        raise ValueError("labels hold only the value 255: nothing to learn; paint at least two "
                         f"classes, or {hint}")
    if set(values.tolist()) <= {0, 255}:
        share = dict(zip(values.tolist(), (counts / counts.sum()).tolist(), strict=True))
        rarer = min(share, key=share.get)
        if share[rarer] < _MASK_MINORITY:
            return "isbi" if rarer == 0 else "codes"
        raise ValueError("labels hold the values 0 and 255 in about equal shares, so which is "
                         "membrane is ambiguous; pass --label-format isbi (0 = membrane) or "
                         "codes (255 = membrane)")
    for k in range(3, max_classes + 1):
        if set(values.tolist()) <= set(label_codes(k).tolist()) and 255 in values:
            return "codes"
    if values.max() <= max_classes and values.min() >= 0:
        raise ValueError(f"label values {_values_text(values)} could be {int(values.max())} "
                         "painted classes or a few instance ids; pass --label-format classes "
                         "if they are classes, or turn instance ids into membranes with "
                         "`membrane gt membrane`")
    raise ValueError(f"label values {_values_text(values)} are no label format: not classes "
                     f"0..{max_classes}, not a 0/255 mask, not mEMbrain codes; instance ids "
                     f"become membranes with `membrane gt membrane`; otherwise {hint}")


def convert_labels(raw: Sequence[np.ndarray], label_format: str = "auto",
                   n_classes: int | None = None,
                   max_classes: int = MAX_CLASSES) -> tuple[list[np.ndarray], int]:
    """Label images as read from disk -> class maps (uint8 or uint16, 0 unknown, 1..K) and K.

    ``n_classes`` fixes K (e.g. a network's, or a patch manifest's) instead of the largest
    class present. A K above ``max_classes`` raises unless ``max_classes`` is raised.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if not raw:
        raise ValueError("no label images")
    if label_format == "auto":
        label_format = detect_label_format(raw, max_classes)
    if label_format == "isbi":
        for r in raw:
            bad = np.setdiff1d(np.unique(r), [0, 255])
            if bad.size:
                raise ValueError(f"isbi labels hold only 0 (membrane) and 255, found "
                                 f"{bad[:8].tolist()}; pass --label-format auto or classes")
        labels, k = [binary_to_classes(r, membrane_value=0) for r in raw], 2
    elif label_format == "codes":
        seen = np.unique(np.concatenate([np.unique(r) for r in raw]))
        k = n_classes or infer_n_classes(seen)
        if k > max_classes:
            raise ValueError(f"label values {_values_text(seen)} read as mEMbrain codes mean "
                             f"{k} classes, more than --max-classes {max_classes}; values 0..2 "
                             "are classes: pass --label-format auto or classes (or raise "
                             "--max-classes)")
        labels = [decode_label_png(r, k).astype(np.uint8) for r in raw]
    else:
        top = max(int(r.max()) for r in raw)
        low = min(int(r.min()) for r in raw)
        k = max(n_classes or 0, top, 2)
        if low < 0 or k > max_classes:
            raise ValueError(f"labels read as classes hold values {low}..{top}, so {k} classes, "
                             f"more than --max-classes {max_classes}; instance ids become "
                             "membranes with `membrane gt membrane`, or pass --max-classes "
                             f"{k} if you painted {k} classes")
        if n_classes is not None and top > n_classes:
            raise ValueError(f"labels hold class {top} but the network has {n_classes} classes")
        labels = [r.astype(np.uint8 if k < 256 else np.uint16) for r in raw]
    present = np.unique(np.concatenate([np.unique(x) for x in labels]))
    if np.count_nonzero(present) < 2 and n_classes is None:
        raise ValueError(f"labels ({label_format}) hold only class(es) {present.tolist()}; a "
                         "network needs at least two classes painted (0 is unknown); a 0/1 "
                         "mask becomes classes with `membrane gt import --mode binary "
                         "--membrane-value 1`")
    return labels, k

"""Saturated-region patch sampling: cut square patches only where every pixel is annotated.

A patch of side P at pose (cy, cx, angle) samples the source at ``c + R(angle) (d - P // 2)``
for each patch pixel d (x, y order inside the rotation), so at angle 0 it is exactly
``image[cy - P//2 : cy - P//2 + P, cx - P//2 : cx - P//2 + P]``. EM is interpolated
bilinearly and labels by nearest neighbour through the same affine map, so they stay aligned.

Candidate centres come from a fast test over a grid of angles (rotate the annotated mask,
chessboard distance to the nearest unknown pixel, rotate back; a square is symmetric under
90 degrees, so angles in [0, 90) cover every orientation). The final word is the exact check
on the cut label patch: a pose is accepted only when the patch holds no unknown (0) pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

ANNOTATED_AREA_UNIT = 1024 * 1024  # density = patches per this many annotated pixels


@dataclass(frozen=True)
class Pose:
    """Where a patch was cut: integer centre pixel (y, x) and rotation in degrees."""

    cy: int
    cx: int
    angle: float

    def to_dict(self) -> dict:
        return {"cy": self.cy, "cx": self.cx, "angle": self.angle}


def pose_matrix(pose: Pose, patch_size: int) -> np.ndarray:
    """2x3 affine map from patch pixel (x, y) to source pixel (x, y)."""
    t = math.radians(pose.angle)
    c, s = math.cos(t), math.sin(t)
    h = patch_size // 2
    return np.array([[c, -s, pose.cx - c * h + s * h],
                     [s, c, pose.cy - s * h - c * h]], dtype=np.float64)


def cut_patch(image: np.ndarray, pose: Pose, patch_size: int, nearest: bool) -> np.ndarray:
    """The patch at ``pose``; outside the image reads 0. ``nearest`` for labels, else bilinear."""
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    if pose.angle == 0.0:
        y0, x0 = pose.cy - patch_size // 2, pose.cx - patch_size // 2
        if y0 >= 0 and x0 >= 0 and y0 + patch_size <= image.shape[0] \
                and x0 + patch_size <= image.shape[1]:
            return image[y0:y0 + patch_size, x0:x0 + patch_size].copy()
    return cv2.warpAffine(image, pose_matrix(pose, patch_size), (patch_size, patch_size),
                          flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _chessboard_valid(known: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose chessboard distance to the nearest unknown pixel (or the border) > radius."""
    padded = cv2.copyMakeBorder(known.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_C, 3)
    return dist[1:-1, 1:-1] > radius


def valid_centres(
    labels: np.ndarray, patch_size: int, angle_step: float | None = 5.0, margin: int = 1,
) -> np.ndarray:
    """Bool mask of candidate centres whose patch fits inside annotated (non-zero) pixels.

    ``angle_step`` None tests axis-aligned patches only. ``margin`` extra pixels make the
    grid test conservative, so the exact check on a cut patch almost never rejects a candidate.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D (y, x), got shape {labels.shape}")
    if patch_size < 2:
        raise ValueError(f"patch size must be >= 2, got {patch_size}")
    known = labels != 0
    radius = patch_size // 2 + margin
    valid = _chessboard_valid(known, radius)
    if angle_step is None:
        return valid
    if not 0 < angle_step <= 90:
        raise ValueError(f"angle_step must lie in (0, 90], got {angle_step}")
    ny, nx = known.shape
    side = int(math.ceil(math.hypot(ny, nx))) + 2
    centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    known8 = known.astype(np.uint8)
    for angle in np.arange(angle_step, 90.0, angle_step):
        # src -> rotated frame: rotate by -angle about the image centre, then centre in the canvas
        m = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
        m[0, 2] += (side - nx) / 2.0
        m[1, 2] += (side - ny) / 2.0
        rotated = cv2.warpAffine(known8, m, (side, side), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ok = _chessboard_valid(rotated.astype(bool), radius).astype(np.uint8)
        back = cv2.warpAffine(ok, m, (nx, ny), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid |= back.astype(bool)
    return valid & known


def count_patches(labels: np.ndarray, density: float) -> int:
    """mEMbrain's patch count: density patches per 1024^2 annotated pixels, rounded."""
    if density <= 0:
        raise ValueError(f"density must be > 0 (patches per 1024^2 annotated px), got {density}")
    return int(round(np.count_nonzero(labels) / ANNOTATED_AREA_UNIT * density))


def label_array(labels: np.ndarray) -> np.ndarray:
    """Class labels as uint16 (what cv2 warps exactly); other dtypes raise a clear error."""
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels must be integer classes (0 = unknown, 1..K), got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label classes must lie in 0..65535; convert instance ids first")
    return labels.astype(np.uint16, copy=False)


class SaturatedSampler:
    """Draws poses whose label patch holds no unknown pixel, from one (image, labels) pair."""

    def __init__(
        self,
        labels: np.ndarray,
        patch_size: int,
        rotate: bool = True,
        angle_step: float = 5.0,
        margin: int = 1,
        angle_tries: int = 24,
    ) -> None:
        self.labels = label_array(labels)
        if not self.labels.any():
            raise ValueError("the label image holds no annotated pixel (all 0 = unknown)")
        self.patch_size = patch_size
        self.rotate = rotate
        self.angle_step = angle_step
        self.angle_tries = angle_tries
        self.valid = valid_centres(self.labels, patch_size, angle_step if rotate else None, margin)
        self.centres = np.flatnonzero(self.valid)
        self.rejected = 0

    @property
    def n_valid(self) -> int:
        return int(self.centres.size)

    def is_saturated(self, pose: Pose) -> bool:
        return bool(cut_patch(self.labels, pose, self.patch_size, nearest=True).all())

    def pose_at(self, flat_index: int, rng: np.random.Generator) -> Pose | None:
        """A saturated pose at centre ``flat_index``: random angles first, then the angle grid."""
        cy, cx = divmod(int(flat_index), self.labels.shape[1])
        if not self.rotate:
            pose = Pose(cy, cx, 0.0)
            return pose if self.is_saturated(pose) else None
        angles = list(rng.uniform(0.0, 360.0, self.angle_tries))
        grid = np.arange(0.0, 360.0, self.angle_step)
        angles += list(rng.permutation(grid))
        for angle in angles:
            pose = Pose(cy, cx, float(angle))
            if self.is_saturated(pose):
                return pose
        return None

    def sample(self, n: int, rng: np.random.Generator) -> list[Pose]:
        """``n`` saturated poses; centres without replacement while enough exist."""
        if self.n_valid == 0:
            raise ValueError(f"no valid centre: no {self.patch_size}x{self.patch_size} patch fits "
                             "inside the annotated pixels at any angle; paint larger regions or "
                             "use a smaller patch size")
        poses: list[Pose] = []
        while len(poses) < n:
            want = n - len(poses)
            picks = rng.choice(self.centres, size=min(want, self.n_valid),
                               replace=want > self.n_valid)
            for idx in picks:
                pose = self.pose_at(idx, rng)
                if pose is None:
                    self.rejected += 1
                    if self.rejected > 10 * n + 100:
                        raise RuntimeError("almost every candidate centre failed the exact "
                                           "saturation check; increase the margin")
                else:
                    poses.append(pose)
        return poses

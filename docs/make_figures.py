"""Write docs/figures/patch_example.png: an EM patch, its label and the valid-centre mask.

Run: ``python docs/make_figures.py``. Uses only numpy and OpenCV (no matplotlib).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from membrane_py.augment.sampling import SaturatedSampler, cut_patch, pose_matrix
from membrane_py.codes import write_png
from membrane_py.volumes.synthetic import make_synthetic

OUT = Path(__file__).resolve().parent / "figures" / "patch_example.png"
SIDE, PATCH = 512, 128
PANEL = 256


def _panel(image: np.ndarray, title: str) -> np.ndarray:
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    rgb = cv2.resize(rgb, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)
    bar = np.full((24, PANEL, 3), 255, np.uint8)
    cv2.putText(bar, title, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, rgb])


def main() -> Path:
    s = make_synthetic((1, SIDE, SIDE), seed=2)
    painted = np.zeros((SIDE, SIDE), np.uint8)  # an irregular painted region
    cv2.fillPoly(painted, [np.array([[60, 80], [300, 40], [460, 200], [380, 470], [150, 400],
                                     [200, 250]], np.int32)], 1)
    cv2.circle(painted, (110, 420), 70, 1, -1)
    labels = np.where(painted > 0, s.membranes[0], 0).astype(np.uint8)
    sampler = SaturatedSampler(labels, PATCH)
    pose = sampler.sample(1, np.random.default_rng(4))[0]
    em = cut_patch(s.em[0], pose, PATCH, nearest=False)
    lab = cut_patch(labels, pose, PATCH, nearest=True)
    label_view = np.choose(lab, [0, 90, 255]).astype(np.uint8)  # non-membrane grey, membrane white

    mask = np.zeros((SIDE, SIDE, 3), np.uint8)
    mask[labels > 0] = (110, 110, 110)  # annotated
    mask[sampler.valid] = (60, 200, 60)  # valid centres
    corners = np.array([[0, 0, 1], [PATCH, 0, 1], [PATCH, PATCH, 1], [0, PATCH, 1]], float)
    outline = (corners @ pose_matrix(pose, PATCH).T).round().astype(np.int32)
    cv2.polylines(mask, [outline], True, (40, 40, 230), 3)
    cv2.circle(mask, (pose.cx, pose.cy), 5, (40, 40, 230), -1)

    figure = np.hstack([_panel(em, f"EM patch ({pose.angle:.0f} deg)"), _panel(label_view, "label"),
                        _panel(mask, "valid centres (green)")])
    write_png(OUT, figure)
    return OUT


if __name__ == "__main__":
    print(main())

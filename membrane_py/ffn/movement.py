"""Where the FOV goes next: the face-maximum movement policy.

After each FOV step the network's logits are inspected on the six faces of the cuboid at
+-delta from the FOV centre (each face limited to +-delta in the other two axes). Where a
face's maximum reaches the move threshold, the FOV centre moves to that voxel. Candidates
join a first-in-first-out queue (best score first among one step's candidates), so the
object is explored breadth-first; positions are quantised to a grid of ``deltas`` around
the object's start so each grid cell is visited at most once.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def face_max_moves(logits: np.ndarray, deltas: tuple[int, int, int],
                   threshold: float) -> list[tuple[float, tuple[int, int, int]]]:
    """(score, offset from the centre) of each face maximum >= ``threshold`` (logits),
    best first; offsets are (z, y, x)."""
    centre = [s // 2 for s in logits.shape]
    box = [slice(c - d, c + d + 1) for c, d in zip(centre, deltas, strict=True)]
    moves = set()
    for axis, delta in enumerate(deltas):
        if delta == 0:
            continue
        for step in (-delta, delta):
            sel = list(box)
            sel[axis] = centre[axis] + step
            face = logits[tuple(sel)]
            at = np.unravel_index(int(np.argmax(face)), face.shape)
            score = float(face[at])
            if score < threshold:
                continue
            others = [a for a in range(3) if a != axis]
            offset = [0, 0, 0]
            offset[axis] = step
            for a, i in zip(others, at, strict=True):
                offset[a] = int(i) - deltas[a]
            moves.add((score, tuple(offset)))
    return sorted(moves, reverse=True)


class FaceMaxQueue:
    """The FIFO of candidate FOV centres of one object, with visited grid cells."""

    def __init__(self, start: tuple[int, int, int], deltas: tuple[int, int, int],
                 threshold: float) -> None:
        self.start = np.asarray(start)
        self.deltas = tuple(int(d) for d in deltas)
        self.grid = np.maximum(np.asarray(deltas), 1)  # an axis with delta 0 is one cell
        self.threshold = threshold
        self.queue: deque[tuple[int, int, int]] = deque([tuple(int(v) for v in start)])
        self.done: set[tuple[int, ...]] = set()

    def cell(self, pos) -> tuple[int, ...]:
        return tuple(((np.asarray(pos) - self.start + self.grid // 2) // self.grid).tolist())

    def pop(self, valid) -> tuple[int, int, int] | None:
        """The next unvisited position for which ``valid(pos)`` holds, marked visited; None
        when the queue is exhausted."""
        while self.queue:
            pos = self.queue.popleft()
            cell = self.cell(pos)
            if cell in self.done or not valid(pos):
                continue
            self.done.add(cell)
            return pos
        return None

    def update(self, logits: np.ndarray, pos: tuple[int, int, int]) -> None:
        """Queue the face maxima of the prediction ``logits`` centred at ``pos``."""
        self.done.add(self.cell(pos))
        for _, off in face_max_moves(logits, self.deltas, self.threshold):
            self.queue.append(tuple(int(p + o) for p, o in zip(pos, off, strict=True)))

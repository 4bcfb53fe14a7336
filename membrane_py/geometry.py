"""Boxes in (z, y, x) voxel coordinates and the mip-level arithmetic every layer shares.

Inside Python a box is half-open ``[z0, z1) x [y0, y1) x [x0, x1)``; the VAST wire uses
inclusive ``minx,maxx,miny,maxy,minz,maxz``. :meth:`Box.from_vast` / :meth:`Box.to_vast`
are the only places where the two meet. Mip m halves x and y m times; z is never scaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def size_at_mip(shape: tuple[int, int, int], mip: int) -> tuple[int, int, int]:
    """(z, y, x) size at a mip level: ``floor(size / 2**mip)`` in x and y, as VAST does."""
    z, y, x = shape
    return (z, y >> mip, x >> mip)


@dataclass(frozen=True)
class Box:
    """Half-open box ``[z0, z1) x [y0, y1) x [x0, x1)`` in voxels of one mip level."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if self.z1 < self.z0 or self.y1 < self.y0 or self.x1 < self.x0:
            raise ValueError(f"box has negative extent: {self}")

    @classmethod
    def full(cls, shape: tuple[int, int, int]) -> Box:
        return cls(0, shape[0], 0, shape[1], 0, shape[2])

    @classmethod
    def from_vast(cls, minx: int, maxx: int, miny: int, maxy: int, minz: int, maxz: int) -> Box:
        """From VAST's inclusive wire order."""
        return cls(minz, maxz + 1, miny, maxy + 1, minx, maxx + 1)

    @classmethod
    def from_vast_list(cls, values: Sequence[int], mip: int = 0) -> Box:
        """A box as specs and the CLI give it, VAST's inclusive mip-0 ``[minx, maxx, miny,
        maxy, minz, maxz]``, at mip ``mip`` (see :meth:`to_mip`)."""
        values = list(values)
        if len(values) != 6 or any(isinstance(v, bool) or not isinstance(v, int)
                                   for v in values):
            raise ValueError(f"a box is six integers [minx, maxx, miny, maxy, minz, maxz] "
                             f"(mip 0, inclusive), got {values}")
        minx, maxx, miny, maxy, minz, maxz = values
        if minx > maxx or miny > maxy or minz > maxz or min(values) < 0:
            raise ValueError(f"box {values} needs 0 <= min <= max on every axis "
                             "(minx, maxx, miny, maxy, minz, maxz)")
        return cls.from_vast(*values).to_mip(mip)

    def to_vast(self) -> tuple[int, int, int, int, int, int]:
        """To VAST's inclusive ``minx,maxx,miny,maxy,minz,maxz``; the box must not be empty."""
        if self.empty:
            raise ValueError(f"an empty box cannot be sent to VAST: {self}")
        return (self.x0, self.x1 - 1, self.y0, self.y1 - 1, self.z0, self.z1 - 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z1 - self.z0, self.y1 - self.y0, self.x1 - self.x0)

    @property
    def size(self) -> int:
        z, y, x = self.shape
        return z * y * x

    @property
    def empty(self) -> bool:
        return self.size == 0

    def slices(self) -> tuple[slice, slice, slice]:
        return (slice(self.z0, self.z1), slice(self.y0, self.y1), slice(self.x0, self.x1))

    def intersect(self, other: Box) -> Box:
        z0, y0, x0 = max(self.z0, other.z0), max(self.y0, other.y0), max(self.x0, other.x0)
        z1, y1, x1 = min(self.z1, other.z1), min(self.y1, other.y1), min(self.x1, other.x1)
        return Box(z0, max(z0, z1), y0, max(y0, y1), x0, max(x0, x1))

    def union(self, other: Box) -> Box:
        """The smallest box holding both (their bounding box)."""
        return Box(min(self.z0, other.z0), max(self.z1, other.z1), min(self.y0, other.y0),
                   max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1))

    def clip(self, shape: tuple[int, int, int]) -> Box:
        return self.intersect(Box.full(shape))

    def grow(self, z: int = 0, y: int = 0, x: int = 0) -> Box:
        """Enlarge by a margin on every side (clip afterwards to stay inside a volume)."""
        return Box(self.z0 - z, self.z1 + z, self.y0 - y, self.y1 + y, self.x0 - x, self.x1 + x)

    def shift(self, dz: int = 0, dy: int = 0, dx: int = 0) -> Box:
        return Box(self.z0 + dz, self.z1 + dz, self.y0 + dy, self.y1 + dy,
                   self.x0 + dx, self.x1 + dx)

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of an enclosing box's corner."""
        return self.shift(-outer.z0, -outer.y0, -outer.x0)

    def contains(self, other: Box) -> bool:
        return self.intersect(other) == other

    def to_mip(self, mip: int) -> Box:
        """A mip-0 box at mip ``mip``: start floored, end rounded up, so it covers the same area."""
        f = 1 << mip
        return Box(self.z0, self.z1, self.y0 // f, -(-self.y1 // f), self.x0 // f, -(-self.x1 // f))

    def to_mip0(self, mip: int) -> Box:
        """A box at mip ``mip`` in mip-0 voxels."""
        f = 1 << mip
        return Box(self.z0, self.z1, self.y0 * f, self.y1 * f, self.x0 * f, self.x1 * f)


def volume_extent(shape0: Sequence[int]) -> str:
    """A (z, y, x) mip-0 volume size as VAST shows its coordinates:
    ``x 0..W-1, y 0..H-1, z 0..D-1`` (inclusive)."""
    z, y, x = (int(v) for v in shape0)
    return f"x 0..{x - 1}, y 0..{y - 1}, z 0..{z - 1}"


def box_extent(box: Box) -> str:
    """A non-empty box as VAST order inclusive ranges: ``x a..b, y c..d, z e..f``."""
    minx, maxx, miny, maxy, minz, maxz = box.to_vast()
    return f"x {minx}..{maxx}, y {miny}..{maxy}, z {minz}..{maxz}"


def box_in_volume(values: Sequence[int], shape0: tuple[int, int, int],
                  clip: bool = False) -> tuple[Box, str | None]:
    """A user's box (VAST order ``[minx, maxx, miny, maxy, minz, maxz]``, inclusive, mip 0)
    checked against a (z, y, x) mip-0 volume: the one check every ``--box`` goes through.

    Returns the mip-0 :class:`Box` and, when ``clip`` cut it to the volume, a warning that
    says what is kept. A box reaching outside without ``clip`` (or lying wholly outside)
    is a ValueError that prints the volume's extent and how to fix the box.
    """
    box = Box.from_vast_list(values)
    inside = box.clip(tuple(shape0))
    if inside == box:
        return box, None
    given = f"box {','.join(map(str, values))} ({box_extent(box)})"
    extent = f"the volume spans {volume_extent(shape0)} (x, y, z inclusive, mip 0)"
    if inside.empty:
        raise ValueError(f"{given} lies outside the volume: {extent}; give a box inside it")
    kept = ",".join(map(str, inside.to_vast()))
    if not clip:
        raise ValueError(f"{given} reaches outside the volume: {extent}; give a box inside "
                         f"it (e.g. --box {kept}) or add --clip to use the part inside")
    return inside, f"{given} reaches outside the volume ({extent}); clipped to {kept} " \
                   f"({box_extent(inside)})"


def parse_ints(text: str, n: int, what: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]: exactly ``n`` comma-separated integers, else a ValueError naming
    ``what`` (the one parser for boxes, points and chunk sizes typed by people)."""
    return _parse_list(text, int, n, what, "integers")


def parse_floats(text: str, what: str) -> list[float]:
    """'0.7,0.3,0' -> [0.7, 0.3, 0.0]: comma-separated numbers, else a ValueError naming
    ``what``."""
    return _parse_list(text, float, None, what, "numbers")


def _parse_list(text: str, kind: type, n: int | None, what: str, noun: str) -> list:
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if not values or (n is not None and len(values) != n):
        count = "" if n is None else f"{n} "
        raise ValueError(f"{what} must be {count}comma-separated {noun}, got {text!r}")
    return values

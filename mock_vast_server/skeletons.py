"""Skeleton trees: loading them from JSON/CSV files and numbering their nodes depth-first.

A skeleton is a forest of nodes, each with mip-0 coordinates and the index of its parent
(-1 for a root). Node order in the list is insertion order; VAST addresses nodes by their
depth-first number instead (roots in list order, children in list order, pre-order), which
:func:`dfs_order` computes.

File formats:

* JSON ``{"objects": [{"name": str, "nodes": [{"id": int, "x": int, "y": int, "z": int,
  "parent": int | null}]}]}``
* CSV with the header ``object,node,x,y,z,parent`` (parent empty or -1 for a root); rows of
  one object name form one skeleton, objects in order of first appearance.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

CSV_HEADER = ["object", "node", "x", "y", "z", "parent"]


@dataclass
class SkelNode:
    """One skeleton node: mip-0 voxel coordinates, parent index (-1 = root), radius."""

    x: int
    y: int
    z: int
    parent: int = -1
    radius: float = 1.0


@dataclass
class Skeleton:
    name: str
    nodes: list[SkelNode] = field(default_factory=list)


class SkeletonFileError(ValueError):
    """A skeleton file that cannot be read; the message names the file and line."""


@dataclass
class DfsNumbering:
    """Depth-first numbering of a forest: ``order[k]`` is the node index with DFS number k."""

    order: list[int]
    number: dict[int, int]
    children: list[list[int]]


def dfs_order(nodes: list[SkelNode]) -> DfsNumbering:
    children: list[list[int]] = [[] for _ in nodes]
    roots = []
    for i, n in enumerate(nodes):
        (roots if n.parent < 0 else children[n.parent]).append(i)
    order: list[int] = []
    stack = list(reversed(roots))
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(children[i]))
    return DfsNumbering(order, {i: k for k, i in enumerate(order)}, children)


Row = tuple[int, int, int, int, int | None, str]


def _build(name: str, rows: list[Row], path: Path) -> Skeleton:
    """rows: (node id, x, y, z, parent id or None, where) -> a Skeleton with parent indices."""
    index: dict[int, int] = {}
    for k, (nid, *_rest, where) in enumerate(rows):
        if nid in index:
            raise SkeletonFileError(
                f"{path}: {where}: node id {nid} appears twice in object {name!r}")
        index[nid] = k
    nodes = []
    for nid, x, y, z, parent, where in rows:
        if min(x, y, z) < 0:
            raise SkeletonFileError(f"{path}: {where}: negative coordinate in node {nid}")
        if parent is None or parent == -1:
            pidx = -1
        elif parent in index:
            pidx = index[parent]
        else:
            raise SkeletonFileError(
                f"{path}: {where}: node {nid} names parent {parent}, which is not a node of "
                f"object {name!r}")
        nodes.append(SkelNode(x, y, z, pidx))
    if len(dfs_order(nodes).order) != len(nodes):
        raise SkeletonFileError(
            f"{path}: object {name!r} has a parent cycle (a node is its own ancestor)")
    return Skeleton(name, nodes)


def _load_json(path: Path) -> list[Skeleton]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SkeletonFileError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
        raise SkeletonFileError(f'{path}: expected an object {{"objects": [...]}} at the top level')
    out = []
    for oi, obj in enumerate(doc["objects"]):
        where = f"objects[{oi}]"
        try:
            name = str(obj.get("name", f"skeleton {oi + 1}"))
            rows = []
            for ni, n in enumerate(obj["nodes"]):
                parent = n.get("parent")
                rows.append((int(n["id"]), int(n["x"]), int(n["y"]), int(n["z"]),
                             None if parent is None else int(parent), f"{where}.nodes[{ni}]"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SkeletonFileError(
                f"{path}: {where}: each node needs integer id, x, y, z and parent "
                f"(int or null): {exc!r}") from exc
        out.append(_build(name, rows, path))
    return out


def _load_csv(path: Path) -> list[Skeleton]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != CSV_HEADER:
            raise SkeletonFileError(
                f"{path}: line 1: header must be {','.join(CSV_HEADER)}, got {','.join(header)}")
        groups: dict[str, list] = {}
        for row in reader:
            where = f"line {reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 6:
                raise SkeletonFileError(f"{path}: {where}: expected 6 columns, got {len(row)}")
            try:
                nid, x, y, z = (int(c) for c in row[1:5])
                parent = int(row[5]) if row[5].strip() else None
            except ValueError as exc:
                raise SkeletonFileError(f"{path}: {where}: not an integer: {exc}") from exc
            groups.setdefault(row[0], []).append((nid, x, y, z, parent, where))
    return [_build(name, rows, path) for name, rows in groups.items()]


def load_skeletons(path: str | Path) -> list[Skeleton]:
    """Read skeletons from a ``.json`` or ``.csv`` file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SkeletonFileError(f"{path}: skeleton file not found")
    if path.suffix.lower() == ".json":
        return _load_json(path)
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    raise SkeletonFileError(f"{path}: unknown skeleton file type; use .json or .csv")

"""The job spec and result bases every workflow step shares.

A job spec is a dataclass of JSON values with a ``kind`` class variable: the CLI, the GUI,
the worker and Dask all build one and hand it to ``run(spec, progress, cancel)``. Reading a
spec from JSON checks every key and value against the dataclass, so a typo or a wrong type
is one clear line instead of a silently ignored option or a traceback deep in the job.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np

from membrane_py.geometry import Box


class SpecError(ValueError):
    """A job spec that cannot be read: unknown key, wrong type, missing field."""


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed JSON) checked against the annotation ``tp``; nested dataclasses are
    built from dicts, JSON's string keys become ints where the type says so."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arm, where)
            except SpecError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be an object with keys "
                            f"{[f.name for f in dataclasses.fields(tp)]}, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SpecError(f"{where} must have {len(args)} values, got {list(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]")
                         for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be an object, got {value!r}")
        key_t, val_t = args or (Any, Any)
        out = {}
        for k, v in value.items():
            if key_t is int:
                try:
                    k = int(k)
                except (TypeError, ValueError):
                    raise SpecError(f"{where} keys must be integers, got {k!r}") from None
            out[k] = _convert(v, val_t, f"{where}[{k!r}]")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise SpecError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise SpecError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, d: dict, where: str) -> Any:
    """An instance of dataclass ``cls`` from a dict, rejecting unknown and missing keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; accepted keys: "
                        f"{', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in d
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecError(f"{where}: missing required key {missing[0]!r}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except SpecError:
        raise
    except (ValueError, TypeError) as e:
        raise SpecError(f"{where}: {e}") from None


def to_json_value(value: Any) -> Any:
    """Plain JSON values of dataclasses, paths, boxes (VAST's inclusive order), numpy data."""
    if isinstance(value, Box):
        return list(value.to_vast()) if not value.empty else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: to_json_value(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclasses.dataclass
class JobSpec:
    """Base of every job spec: JSON values only, ``kind`` names the step."""

    kind: ClassVar[str] = ""
    #: whether running an interrupted job again continues from what it had done (tiles on
    #: disk, a checkpoint) instead of starting over; the CLI says which after Ctrl-C
    resumes: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **to_json_value(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        """Build from parsed JSON; unknown keys, wrong types and missing fields raise
        :class:`SpecError` with one line naming the key."""
        if not isinstance(d, dict):
            raise SpecError(f"a {cls.kind} job is a JSON object, got {type(d).__name__}")
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise SpecError(f"this is a {kind!r} job, not a {cls.kind!r} job")
        return _build(cls, d, f"{cls.kind} job")

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"the job file is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def resumed(self) -> JobSpec:
        """The spec that continues an interrupted run of this one (after a cancel or a
        crashed worker). Jobs that skip finished work by themselves (predict: tiles on disk)
        return themselves; others (train) point at what the interrupted run left."""
        return self


@dataclasses.dataclass
class Result:
    """Base of every job result: ``to_dict`` gives JSON values (paths as strings, boxes as
    VAST's inclusive ``minx,maxx,miny,maxy,minz,maxz`` lists)."""

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(self)

    def summary(self) -> str:
        """One line for people (the CLI prints it)."""
        return ", ".join(f"{k}: {v}" for k, v in self.to_dict().items())

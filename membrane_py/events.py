"""One event type for everything a job tells the outside, and cooperative cancellation.

Jobs take ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``. Every
event is an :class:`Event` with a ``kind``: ``progress`` (``done`` of ``total`` units of
``task``), ``metric`` (numbers a plot consumes, e.g. the loss per iteration), ``log``,
``warning``, ``artifact`` (a file the job wrote), ``done`` and ``error``. Events are plain
JSON, so they cross the worker's pyzmq channel unchanged; the CLI renders them as progress
bars and lines, the GUI as bars, plots and messages.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EVENT_KINDS = ("progress", "metric", "log", "warning", "artifact", "done", "error")


@dataclass(frozen=True)
class Event:
    """What a job reports. ``data`` holds JSON values: metric numbers, an artifact's path."""

    kind: str
    task: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")

    @classmethod
    def progress(cls, task: str, done: int, total: int, message: str = "",
                 **data: Any) -> Event:
        return cls("progress", task, done, total, message, data)

    @classmethod
    def metric(cls, task: str, step: int, total: int = 0, message: str = "",
               **values: float) -> Event:
        """Numbers at ``step`` (e.g. iteration or epoch) for plots and tables."""
        return cls("metric", task, step, total, message, values)

    @classmethod
    def log(cls, message: str, task: str = "") -> Event:
        return cls("log", task, message=message)

    @classmethod
    def warning(cls, message: str, task: str = "") -> Event:
        return cls("warning", task, message=message)

    @classmethod
    def artifact(cls, path: str | Path, task: str = "", what: str = "") -> Event:
        """A file or folder the job wrote; ``what`` says what it is (e.g. "checkpoint")."""
        return cls("artifact", task, message=what, data={"path": str(path)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(**d)


ProgressCallback = Callable[[Event], None]


class JobWarning(UserWarning):
    """A warning event raised as a Python warning when nobody listens for events."""


class Cancelled(Exception):
    """Raised inside a long operation when its CancelToken was set."""


class CancelToken:
    """Thread-safe flag a caller sets to stop a long operation at its next check."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("operation cancelled")


def report(progress: ProgressCallback | None, event: Event) -> None:
    """Send an event when a callback was given."""
    if progress is not None:
        progress(event)


def warn(progress: ProgressCallback | None, message: str, task: str = "") -> None:
    """A warning event; without a callback, a Python warning so API users still see it."""
    if progress is not None:
        progress(Event.warning(message, task))
    else:
        warnings.warn(message, JobWarning, stacklevel=3)


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` was set (no-op without a token)."""
    if cancel is not None:
        cancel.check()


def one_line(e: BaseException) -> str:
    """An exception as one line for people: its message with whitespace collapsed (its type
    name when the message is empty)."""
    return " ".join((str(e) or type(e).__name__).split())

"""One progress event type for every long operation, and cooperative cancellation.

Long functions take ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``;
the CLI renders events as a progress bar, the GUI as bars and plots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``task``; ``metrics`` carries numbers such as MB/s or loss."""

    task: str
    done: int
    total: int
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


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


def report(progress: ProgressCallback | None, event: Progress) -> None:
    """Send an event when a callback was given."""
    if progress is not None:
        progress(event)

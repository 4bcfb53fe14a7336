"""Resource limits of the mock VAST server (a light module: the CLI reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BYTES = 1 << 30
FRAME_OVERHEAD = 1 << 16  # request = block of up to max_bytes plus the box and tags
FIRST_BUFFER = 1 << 16
KEEP_BUFFER = 32 << 20  # a connection keeps a buffer up to this size between requests
MIN_RATE = 1 << 20  # bytes/s a frame must average after the stall grace period


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them together, can make the server hold or wait for."""

    max_bytes: int = DEFAULT_MAX_BYTES  # largest reply or request block
    max_connections: int = 16  # more concurrent connections are accepted and closed at once
    max_buffered: int = 2 << 30  # bytes all request buffers together may hold
    idle_timeout: float = 600.0  # s a connection may wait between requests
    stall_timeout: float = 30.0  # s without progress inside a frame (and grace per frame)

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_connections < 1:
            raise ValueError("max_bytes and max_connections must be at least 1")
        if self.idle_timeout <= 0 or self.stall_timeout <= 0:
            raise ValueError("idle_timeout and stall_timeout must be positive")
        if self.max_buffered < self.max_frame:
            raise ValueError(f"max_buffered ({self.max_buffered}) must hold one largest request "
                             f"(max_bytes + {FRAME_OVERHEAD} = {self.max_frame} bytes)")

    @property
    def max_frame(self) -> int:
        """Largest request frame accepted (after the 12-byte header)."""
        return self.max_bytes + FRAME_OVERHEAD

    def frame_time(self, nbytes: int) -> float:
        """Seconds allowed to move one frame of ``nbytes``."""
        return self.stall_timeout + nbytes / MIN_RATE

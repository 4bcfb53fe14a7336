"""How a running VAST is named in specs and job files: ``vast`` or ``vast://HOST[:PORT]``."""

from __future__ import annotations

from membrane_py.vastapi.protocol import DEFAULT_PORT

VAST_SCHEME = "vast://"
DEFAULT_VAST = f"{VAST_SCHEME}127.0.0.1:{DEFAULT_PORT}"


def parse_vast_address(spec: str) -> tuple[str, int] | None:
    """``vast`` / ``vast://host[:port]`` -> (host, port); None for anything else (a path)."""
    if spec == "vast":
        spec = DEFAULT_VAST
    if not spec.startswith(VAST_SCHEME):
        return None
    rest = spec[len(VAST_SCHEME):]
    host, _, port = rest.partition(":")
    try:
        return host or "127.0.0.1", int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad VAST address {spec!r}: write vast://HOST:PORT, e.g. "
                         f"{DEFAULT_VAST}") from None

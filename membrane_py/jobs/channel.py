"""What the job worker and its clients agree on: where the address file lives, its
contents, the timing of heartbeats and the message sizes both sides accept.

The worker binds two pyzmq sockets on 127.0.0.1 with ports the OS picks: a ROUTER for
control requests (JSON in, JSON out) and a PUB for events and heartbeats. It writes both
addresses to ``worker.json`` in its state folder, so the GUI and ``membrane jobs ...`` find
it without configuration, with a random token every request but ``ping`` must carry: the
file is readable by its owner only, so other users of the machine, who reach 127.0.0.1
too, cannot make the worker run jobs (write files) in the owner's name.

PUB messages are multipart: ``[b"event", job id, seq, event JSON]`` (``seq`` counts the
job's events from 0, so a client notices a gap and fetches the missing events) or
``[b"heartbeat", JSON]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from membrane_py.atomic import atomic_path

#: the address file's name inside the state folder
ADDRESS_FILE = "worker.json"
#: the worker's log when a client started it (stderr of the worker process)
LOG_FILE = "worker.log"
#: seconds between two heartbeats on the PUB socket
HEARTBEAT_S = 0.5
#: a worker silent this long is considered dead (generous: a loaded machine stalls threads)
DEAD_AFTER_S = 5.0
#: the same for a worker whose process the client holds: its exit is seen at once, so
#: silence alone means a stall (a machine busy with other work), given much longer
STALLED_AFTER_S = 60.0
#: largest control request or event message accepted (bounds what a peer can make us buffer)
MAX_MESSAGE_BYTES = 16 * 2**20
#: terminal event kinds: the worker sends exactly one of them when a job ends
TERMINAL = ("done", "error")


def default_state_dir() -> Path:
    """Where ``membrane worker`` keeps its address file and log: ``%LOCALAPPDATA%\\membrane-py
    \\worker`` on Windows, else ``$XDG_STATE_HOME/membrane-py/worker`` (default
    ``~/.local/state/membrane-py/worker``)."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "membrane-py" / "worker"


def address_path(state_dir_or_file: str | Path | None) -> Path:
    """The address file of a state folder (or the file itself when given one)."""
    p = Path(state_dir_or_file) if state_dir_or_file is not None else default_state_dir()
    return p / ADDRESS_FILE if p.is_dir() or p.suffix != ".json" else p


def write_address(path: Path, addresses: dict[str, Any]) -> None:
    """Publish the worker's addresses and token atomically (readers never see half a file),
    readable by the owner only from the moment it appears (on Windows the per-user folder
    protects it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(addresses, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o600)


def read_address(path: Path) -> dict[str, Any]:
    """The addresses in a worker's address file; FileNotFoundError / ValueError with one line
    saying how to start a worker."""
    if not path.is_file():
        raise FileNotFoundError(f"no worker running (no address file {path}); start one with "
                                "`membrane worker`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        d = None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) and
                                          d[k].startswith("tcp://")
                                          for k in ("control", "events")):
        raise ValueError(f"{path} is not a worker address file; start a worker with "
                         "`membrane worker`")
    return d

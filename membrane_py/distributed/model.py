"""Ship a network file once to every Dask worker (a worker plugin, so workers that join or
restart later get it too: the scheduler keeps the plugin and sets it up on each of them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from distributed import WorkerPlugin

from membrane_py.atomic import write_bytes_atomic

#: SHA-256 of a shipped network file -> its path in this worker's local folder
MODEL_FILES: dict[str, Path] = {}


class ModelFile(WorkerPlugin):
    """Carries the bytes of a network file and writes them into each worker's local folder
    at set-up; tasks find the file by :attr:`sha256` in :data:`MODEL_FILES`."""

    def __init__(self, data: bytes, suffix: str) -> None:
        self.data, self.suffix = data, suffix
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.name = f"membrane-model-{self.sha256[:16]}"

    def setup(self, worker) -> None:
        path = Path(worker.local_directory) / f"model-{self.sha256}{self.suffix}"
        if not path.is_file():
            write_bytes_atomic(path, self.data)
        MODEL_FILES[self.sha256] = path

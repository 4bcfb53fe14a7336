"""Connect to a Dask cluster from a job's ``scheduler`` text.

``local`` / ``local:N`` start a :class:`~distributed.LocalCluster` of N worker processes
with one thread each (default: one per core) for the duration of a ``with`` block;
``tcp://HOST:PORT`` connects to a running scheduler (``dask scheduler`` plus workers, or
dask-jobqueue on SLURM, see docs/scaling.md) and leaves it running afterwards.
Worker processes are spawned where the platform needs it (Windows), nothing relies on fork.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from membrane_py.predict.job import parse_scheduler

if TYPE_CHECKING:
    from distributed import Client

#: seconds to wait for a remote scheduler before giving up with one line
CONNECT_TIMEOUT = 30


@contextmanager
def connect(scheduler: str) -> Iterator[Client]:
    """A Dask client for ``scheduler`` (see the module docstring), closed on exit."""
    from distributed import Client, LocalCluster

    address, n_workers = parse_scheduler(scheduler)
    if address != "local":
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                          "(`dask scheduler`, then `dask worker ADDRESS`) or use "
                          "--scheduler local") from None
        with client:
            yield client
        return
    # scheduler and its HTTP endpoint on this machine only, the latter on a free port
    with LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                      processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client

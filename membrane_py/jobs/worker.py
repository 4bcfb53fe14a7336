"""The job worker: a separate process that queues and runs jobs for the GUI and the CLI.

Long work runs here so the window never freezes and a crash in the numerical stack (a
segfault in a native library, memory exhaustion) kills only this process: clients notice
the missing heartbeat, restart the worker and resubmit; jobs that resume (predict skips
finished tiles, train continues from ``resume=<name>_last.pt``) continue where they were.

Jobs run in threads of this process, not in child processes. The worker already is the
isolation boundary the GUI needs; a thread shares the imported PyTorch (no seconds of
start-up per job), cancels through the job's :class:`~membrane_py.events.CancelToken`, and
needs no fork (Windows has none). A job that never checks its token is stopped by
restarting the worker. At most ``parallel`` jobs (default 1) run at once, the rest queue.

One thread (the main loop) owns the pyzmq sockets and every job record: control requests
arrive on a ROUTER, events leave on a PUB (see :mod:`membrane_py.jobs.channel`). Job threads
and the threads that validate submitted specs (importing a job's module can take seconds)
only put messages on a queue the main loop drains, so heartbeats never wait for them.

Control requests are JSON objects ``{"op": ..., "rid": ..., "token": ...}`` (the token is
in the address file, see :mod:`membrane_py.jobs.channel`) answered with ``{"rid": ...,
"ok": true, ...}`` or ``{"ok": false, "error": one line, "type": ...}``: ``ping``,
``submit`` (``spec``), ``cancel`` / ``status`` / ``events`` (``job``, ``since``), ``list``,
``shutdown``. Run it with ``membrane worker`` or ``python -m membrane_py.jobs.worker``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from membrane_py.events import Cancelled, CancelToken, Event, one_line
from membrane_py.jobs.channel import (
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    address_path,
    default_state_dir,
    read_address,
    write_address,
)
from membrane_py.jobs.registry import KINDS, lookup, run, spec_from_dict
from membrane_py.jobs.spec import JobSpec, SpecError

log = logging.getLogger("membrane_py.worker")

STATES = ("queued", "running", "done", "failed", "cancelled")
#: events kept per job for late subscribers (the oldest go first)
MAX_EVENTS = 10_000
#: finished jobs remembered (the oldest finished go first)
MAX_FINISHED = 500
#: seconds the main loop waits for a request before looking at its queue
_TICK_S = 0.02
#: seconds a shutdown waits for cancelled jobs to stop
_GRACE_S = 10.0


@dataclass
class _Job:
    id: str
    spec: JobSpec
    state: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    n_events: int = 0
    token: CancelToken = field(default_factory=CancelToken)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.spec.kind, "state": self.state,
                "spec": self.spec.to_dict(), "result": self.result, "error": self.error,
                "n_events": self.n_events}


class Worker:
    """Queue, run and report jobs over pyzmq until shut down (see the module docstring)."""

    def __init__(self, state_dir: str | Path | None = None, parallel: int = 1,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.address_file = address_path(self.state_dir)
        self.parallel = parallel
        self.heartbeat_s = heartbeat_s
        self.jobs: dict[str, _Job] = {}
        self._queued: deque[str] = deque()
        self._running: set[str] = set()
        self._inbox: queue.Queue = queue.Queue()
        self._stopping = False
        self._preloaded = False
        self._token = secrets.token_urlsafe(24)
        self.addresses: dict[str, Any] = {}

    # ---- setup -------------------------------------------------------------------------
    def bind(self) -> dict[str, Any]:
        """Bind both sockets on 127.0.0.1 (OS-chosen ports) and publish the address file.
        Refuses when another live worker owns the state folder."""
        self._refuse_if_running()
        self._ctx = zmq.Context()  # its own: closing it waits only for the worker's sockets
        self._control = self._ctx.socket(zmq.ROUTER)
        self._events = self._ctx.socket(zmq.PUB)
        for sock in (self._control, self._events):  # the last replies and events still go out
            sock.setsockopt(zmq.LINGER, 1000)
        self._control.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._events.setsockopt(zmq.SNDHWM, 100_000)  # a slow GUI refetches what is dropped
        control = self._control.bind_to_random_port("tcp://127.0.0.1")
        events = self._events.bind_to_random_port("tcp://127.0.0.1")
        self.addresses = {"control": f"tcp://127.0.0.1:{control}",
                          "events": f"tcp://127.0.0.1:{events}", "pid": os.getpid(),
                          "started": time.time()}
        write_address(self.address_file, {**self.addresses, "token": self._token})
        return self.addresses

    def _refuse_if_running(self) -> None:
        try:
            old = read_address(self.address_file)
        except (OSError, ValueError):
            return
        from membrane_py.jobs.client import WorkerClient, WorkerError

        try:
            WorkerClient.connect(self.address_file, timeout_s=2.0).close()
        except WorkerError:
            return  # a stale file from a worker that died
        raise RuntimeError(f"a worker is already running (pid {old.get('pid')}, "
                           f"{self.address_file}); use it, stop it, or pick another state folder")

    # ---- main loop ---------------------------------------------------------------------
    def serve(self) -> None:
        """Answer requests and run jobs until a ``shutdown`` request (or Ctrl-C)."""
        if not self.addresses:
            self.bind()
        log.info("worker %d listening: control %s, events %s", os.getpid(),
                 self.addresses["control"], self.addresses["events"])
        preload = threading.Thread(target=self._preload, name="preload", daemon=True)
        preload.start()
        next_beat = 0.0
        stop_by = None
        try:
            while True:
                if self._control.poll(int(_TICK_S * 1000)):
                    self._read_requests()
                self._drain_inbox()
                now = time.monotonic()
                if now >= next_beat:
                    self._publish([b"heartbeat", self._json(self._beat())])
                    next_beat = now + self.heartbeat_s
                if self._stopping:
                    stop_by = stop_by or now + _GRACE_S
                    if not self._running or now > stop_by:
                        break
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
            self._stop_all()
            deadline = time.monotonic() + _GRACE_S
            while self._running and time.monotonic() < deadline:
                time.sleep(_TICK_S)
                self._drain_inbox()
            raise
        finally:
            self._close()
            preload.join()  # an import cut short by the interpreter's exit can crash it

    def _preload(self) -> None:
        """Import every job's module in the background, so that the first submit of a kind
        (its spec is checked by importing it) answers at once instead of after seconds."""
        for kind in KINDS:
            if self._stopping:
                return
            try:
                lookup(kind)
            except Exception as e:  # reported again, to the submitter, when that kind is used
                log.warning("cannot import the %s job: %s", kind, one_line(e))
        self._preloaded = True

    def request_stop(self) -> None:
        """Stop from another thread (e.g. when the parent process is gone)."""
        self._inbox.put(("stop",))

    def _close(self) -> None:
        try:  # remove the address file only when it is still ours
            if read_address(self.address_file).get("pid") == os.getpid():
                self.address_file.unlink()
        except (OSError, ValueError):
            pass
        self._control.close()
        self._events.close()
        self._ctx.term()  # sends what is still queued (up to the linger time)

    def _beat(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "time": time.time(), "running": sorted(self._running),
                "queued": len(self._queued), "preloaded": self._preloaded}

    @staticmethod
    def _json(value: Any) -> bytes:
        return json.dumps(value, default=str).encode()

    def _publish(self, frames: list[bytes]) -> None:
        """PUB never blocks: a subscriber that does not keep up loses messages and fetches
        the gap with an ``events`` request."""
        self._events.send_multipart(frames)

    # ---- control requests --------------------------------------------------------------
    def _read_requests(self) -> None:
        while True:
            try:
                frames = self._control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3 or frames[1] != b"":
                continue  # not a client of ours
            ident = frames[0]
            try:
                req = json.loads(frames[2])
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                self._reply(ident, {"rid": None, "ok": False, "type": "bad-request",
                                    "error": f"bad request: {one_line(e)}"})
                continue
            try:
                self._handle(ident, req)
            except Exception as e:  # a bug must not stop the worker
                log.exception("request %r failed", req.get("op"))
                self._reply(ident, {"rid": req.get("rid"), "ok": False, "type": "error",
                                    "error": f"{type(e).__name__}: {one_line(e)}"})

    def _reply(self, ident: bytes, reply: dict[str, Any]) -> None:
        self._control.send_multipart([ident, b"", self._json(reply)])

    def _handle(self, ident: bytes, req: dict[str, Any]) -> None:
        rid, op = req.get("rid"), req.get("op")

        def ok(**fields: Any) -> None:
            self._reply(ident, {"rid": rid, "ok": True, **fields})

        def error(message: str, kind: str = "error") -> None:
            self._reply(ident, {"rid": rid, "ok": False, "type": kind, "error": message})

        if op == "ping":
            ok(**{**self.addresses, **self._beat()})
        elif not secrets.compare_digest(str(req.get("token", "")), self._token):
            error(f"wrong or missing token: it is in the worker's address file "
                  f"{self.address_file}", "token")
        elif op == "submit":
            threading.Thread(target=self._validate, args=(ident, rid, req.get("spec")),
                             name="validate-spec", daemon=True).start()
        elif op == "list":
            ok(jobs=[j.info() for j in self.jobs.values()])
        elif op in ("status", "cancel", "events"):
            job = self.jobs.get(req.get("job"))
            if job is None:
                return error(f"no job {req.get('job')!r} in this worker; `membrane jobs "
                             "list` shows its jobs", "unknown-job")
            if op == "cancel":
                self._cancel(job)
                ok(job=job.info())
            elif op == "status":
                ok(job=job.info())
            else:
                since = req.get("since", 0)
                if not isinstance(since, int) or since < 0:
                    return error(f"since must be a non-negative integer, got {since!r}",
                                 "bad-request")
                first = job.n_events - len(job.events)
                events = list(job.events)[max(0, since - first):]
                ok(first=max(since, first), next=job.n_events, events=events)
        elif op == "shutdown":
            self._stop_all()
            ok()
        else:
            error(f"unknown request {op!r}", "bad-request")

    def _validate(self, ident: bytes, rid: Any, spec: Any) -> None:
        """Build the spec (imports the job's module) off the main loop."""
        try:
            self._inbox.put(("accepted", ident, rid, spec_from_dict(spec)))
        except SpecError as e:
            self._inbox.put(("rejected", ident, rid, one_line(e), "spec"))
        except Exception as e:  # e.g. a job module that cannot be imported
            log.exception("cannot read a submitted spec")
            self._inbox.put(("rejected", ident, rid, f"{type(e).__name__}: {one_line(e)}",
                             "error"))

    # ---- jobs --------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                break
            what = msg[0]
            if what == "event":
                self._record(self.jobs[msg[1]], msg[2])
            elif what == "end":
                self._finish(*msg[1:])
            elif what == "accepted":
                _, ident, rid, spec = msg
                if self._stopping:
                    self._reply(ident, {"rid": rid, "ok": False, "type": "error",
                                        "error": "the worker is shutting down"})
                    continue
                job = self._add(spec)
                self._reply(ident, {"rid": rid, "ok": True, "job": job.info()})
            elif what == "rejected":
                _, ident, rid, message, kind = msg
                self._reply(ident, {"rid": rid, "ok": False, "type": kind, "error": message})
            elif what == "stop":
                self._stop_all()
        self._start_queued()

    def _add(self, spec: JobSpec) -> _Job:
        job_id = f"{spec.kind}-{secrets.token_hex(3)}"
        while job_id in self.jobs:
            job_id = f"{spec.kind}-{secrets.token_hex(3)}"
        job = self.jobs[job_id] = _Job(job_id, spec)
        self._queued.append(job_id)
        finished = [j for j in self.jobs.values() if j.state not in ("queued", "running")]
        for old in finished[:max(0, len(finished) - MAX_FINISHED)]:
            del self.jobs[old.id]
        log.info("job %s queued", job_id)
        return job

    def _record(self, job: _Job, event: Event) -> None:
        d = event.to_dict()
        job.events.append(d)
        self._publish([b"event", job.id.encode(), str(job.n_events).encode(), self._json(d)])
        job.n_events += 1

    def _start_queued(self) -> None:
        while self._queued and len(self._running) < self.parallel and not self._stopping:
            job = self.jobs[self._queued.popleft()]
            job.state = "running"
            self._running.add(job.id)
            log.info("job %s running", job.id)
            threading.Thread(target=self._run, args=(job,), name=f"job-{job.id}",
                             daemon=True).start()

    def _run(self, job: _Job) -> None:
        """One job in its own thread; every outcome ends as an ``end`` message."""
        def progress(event: Event) -> None:
            self._inbox.put(("event", job.id, event))

        try:
            result = run(job.spec, progress=progress, cancel=job.token)
            self._inbox.put(("end", job.id, "done", result.to_dict(), result.summary()))
        except Cancelled as e:
            self._inbox.put(("end", job.id, "cancelled", None, one_line(e)))
        except BaseException as e:
            from membrane_py.vastapi.client import VastError

            if not isinstance(e, ValueError | OSError | VastError):  # a bug: keep its trace
                log.exception("job %s failed", job.id)
            self._inbox.put(("end", job.id, "failed", None, one_line(e)))

    def _finish(self, job_id: str, state: str, result: dict | None, message: str) -> None:
        job = self.jobs[job_id]
        self._running.discard(job_id)
        job.state, job.result = state, result
        if state == "done":
            self._record(job, Event("done", job.spec.kind, message=message,
                                    data={"state": state, "result": result}))
        else:
            job.error = message
            self._record(job, Event("error", job.spec.kind, message=message,
                                    data={"state": state}))
        log.info("job %s %s: %s", job_id, state, message)

    def _cancel(self, job: _Job) -> None:
        """Set a running job's token; drop a queued one."""
        if job.state == "running":
            job.token.cancel()
        elif job.state == "queued":
            self._queued.remove(job.id)
            self._finish(job.id, "cancelled", None, "cancelled before it started")

    def _stop_all(self) -> None:
        self._stopping = True
        for job in list(self.jobs.values()):
            self._cancel(job)


def main(argv: list[str] | None = None) -> int:
    """``python -m membrane_py.jobs.worker [--state-dir DIR] [--parallel N]``."""
    parser = argparse.ArgumentParser(prog="python -m membrane_py.jobs.worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"folder of the address file (default {default_state_dir()})")
    parser.add_argument("--parallel", type=int, default=1, help="jobs run at once")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when stdin closes (the starting process ended)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker: %(message)s")
    try:
        worker = Worker(args.state_dir, parallel=args.parallel)
        addresses = worker.bind()
    except (ValueError, RuntimeError, OSError) as e:
        print(f"worker: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"worker listening; address file: {worker.address_file}", flush=True)
    print(f"control {addresses['control']}, events {addresses['events']}", flush=True)
    if args.exit_with_parent:
        def watch_stdin() -> None:
            while os.read(sys.stdin.fileno(), 4096):  # b"" at EOF: the parent closed the
                pass  # pipe or died (raw reads: no buffer lock blocks interpreter exit)
            worker.request_stop()

        threading.Thread(target=watch_stdin, name="parent-watch", daemon=True).start()
    try:
        worker.serve()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The client of the job worker: what the GUI and ``membrane jobs ...`` use.

A :class:`WorkerClient` talks to one worker process over pyzmq: a DEALER for requests
(each with an id, so a late answer to a timed-out request is recognised and dropped) and a
SUB for events and heartbeats. No call hangs on a dead worker: requests give up after
``timeout_s``, as soon as a worker process the client started has exited, or once the
heartbeat has been missing for :data:`~membrane_py.jobs.channel.DEAD_AFTER_S` seconds
(:data:`~membrane_py.jobs.channel.STALLED_AFTER_S` while that process still runs, since a
busy machine can stall it), raising :class:`WorkerError`.
Events arrive in order per job; a gap (PUB drops messages for a subscriber that does not
keep up) is filled from the worker's stored events. A client is used from one thread.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from membrane_py.events import Event
from membrane_py.jobs.channel import (
    DEAD_AFTER_S,
    LOG_FILE,
    MAX_MESSAGE_BYTES,
    STALLED_AFTER_S,
    TERMINAL,
    address_path,
    default_state_dir,
    read_address,
)
from membrane_py.jobs.spec import JobSpec, SpecError

#: seconds ``start_local`` waits for a new worker's address file
START_TIMEOUT_S = 60.0
#: seconds a submit may take (the worker imports the job's module to check the spec)
SUBMIT_TIMEOUT_S = 120.0


class WorkerError(ConnectionError):
    """The worker is not running, does not answer, or died."""


@dataclass
class JobInfo:
    """A job as the worker reports it. ``state``: queued, running, done, failed, cancelled;
    ``result``: the result's JSON when done; ``error``: one line when failed or cancelled."""

    id: str
    kind: str
    state: str
    spec: dict
    result: dict | None
    error: str | None
    n_events: int

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class WorkerClient:
    """Requests to and events from one worker (see the module docstring)."""

    def __init__(self, control: str, events: str, timeout_s: float = 10.0,
                 address_file: Path | None = None, process: subprocess.Popen | None = None,
                 token: str = "") -> None:
        self.control_url, self.events_url = control, events
        self.token = token  #: from the address file; every request but ping carries it
        self.timeout_s = timeout_s
        self.address_file = address_file
        self.process = process  #: the worker process when this client started it
        self._rid = 0
        self._next: dict[str, int] = {}  # per job: the seq of the next event to deliver
        self._raw: deque[tuple[str, int, Event]] = deque()
        self._catch_up: set[str] = set()  # jobs whose stored events are fetched next poll
        self.last_heartbeat: dict[str, Any] = {}
        self._open_sockets()

    # ---- connecting --------------------------------------------------------------------
    @classmethod
    def start_local(cls, state_dir: Path | None = None) -> WorkerClient:
        """Start a worker process (``python -m membrane_py.jobs.worker``) with its address
        file and log in ``state_dir`` (default: :func:`~membrane_py.jobs.channel.
        default_state_dir`), wait until it listens and connect. The worker stops when the
        process that started it ends."""
        state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        proc = _spawn(state_dir)
        addresses = _await_address(proc, state_dir)
        client = cls(addresses["control"], addresses["events"], address_file=address_path(
            state_dir), process=proc, token=addresses.get("token", ""))
        client._handshake_or_kill()
        return client

    @classmethod
    def connect(cls, address_file_or_url: str | Path, timeout_s: float = 10.0) -> WorkerClient:
        """Connect to a running worker through its address file (or its state folder, or
        its control URL and the token from its address file, ``tcp://127.0.0.1:PORT#TOKEN``);
        WorkerError when none answers."""
        if str(address_file_or_url).startswith("tcp://"):
            url, _, token = str(address_file_or_url).partition("#")
            client = cls(url, "", timeout_s, token=token)
            try:
                client._reconnect_events(client._request("ping", timeout=3.0)["events"])
            except WorkerError:
                client.close()
                raise
            return client
        path = address_path(address_file_or_url)
        try:
            addresses = read_address(path)
        except (OSError, ValueError) as e:
            raise WorkerError(str(e)) from None
        client = cls(addresses["control"], addresses["events"], timeout_s, path,
                     token=addresses.get("token", ""))
        try:
            client._handshake()
        except WorkerError:
            client.close()
            raise WorkerError(f"the worker of {path} does not answer (it may have died); "
                              "start one with `membrane worker`") from None
        return client

    def _open_sockets(self) -> None:
        ctx = zmq.Context.instance()
        self._dealer = ctx.socket(zmq.DEALER)
        self._sub = ctx.socket(zmq.SUB)
        for sock in (self._dealer, self._sub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.RCVHWM, 100_000)
        self._dealer.connect(self.control_url)
        if self.events_url:
            self._sub.connect(self.events_url)
        self._last_seen = time.monotonic()

    def _reconnect_events(self, url: str) -> None:
        self.events_url = url
        self._sub.connect(url)
        self._await_heartbeat()

    def _handshake_or_kill(self) -> None:
        """Handshake with a worker this client started; kill it when that fails."""
        try:
            self._handshake()
        except WorkerError:
            self.close()
            _stop(self.process, grace_s=0.0)
            raise

    def _handshake(self) -> None:
        """Ping, then wait for the first heartbeat so that no event after this is missed
        (a SUB only receives once its subscription has reached the PUB)."""
        self._request("ping", timeout=min(self.timeout_s, 3.0))
        self._await_heartbeat()

    def _await_heartbeat(self) -> None:
        self.last_heartbeat = {}
        deadline = time.monotonic() + self._silence_limit()
        while not self.last_heartbeat and time.monotonic() < deadline:
            self._check_process()
            self._drain(50)
        if not self.last_heartbeat:
            raise WorkerError(f"no heartbeat from the worker at {self.events_url}")

    # ---- requests ----------------------------------------------------------------------
    def _request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer; WorkerError when the worker does not
        answer in time or stops sending heartbeats, SpecError / ValueError for a refused
        spec or an unknown job."""
        self._rid += 1
        rid = self._rid
        request = {"op": op, "rid": rid, "token": self.token, **fields}
        self._dealer.send_multipart([b"", json.dumps(request).encode()])
        deadline = time.monotonic() + (timeout or self.timeout_s)
        while True:
            self._check_process()
            if self._dealer.poll(50):
                frames = self._dealer.recv_multipart()
                reply = json.loads(frames[-1])
                if reply.get("rid") != rid:
                    continue  # the late answer to a request that timed out
                if reply.get("ok"):
                    return reply
                kind, message = reply.get("type"), reply.get("error", "")
                if kind == "spec":
                    raise SpecError(message)
                if kind == "unknown-job":
                    raise ValueError(message)
                raise WorkerError(message)
            self._drain(0)
            now = time.monotonic()
            if self.events_url and now - self._last_seen > self._silence_limit():
                raise WorkerError(f"the worker stopped answering (no heartbeat for "
                                  f"{now - self._last_seen:.0f} s); restart it")
            if now > deadline:
                raise WorkerError(f"the worker did not answer {op!r} within "
                                  f"{timeout or self.timeout_s:.0f} s; restart it")

    def _silence_limit(self) -> float:
        """Seconds without a heartbeat after which the worker counts as gone: longer when
        its process is ours, whose exit :meth:`_check_process` sees at once."""
        return DEAD_AFTER_S if self.process is None else STALLED_AFTER_S

    def _check_process(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise WorkerError(f"the worker process exited (code {self.process.returncode}); "
                              "restart it")

    def ping(self) -> dict[str, Any]:
        """The worker's addresses, pid, running and queued jobs, and whether it has imported
        every job's module yet (``preloaded``)."""
        return self._request("ping")

    def submit(self, spec: JobSpec | dict) -> str:
        """Queue a job; its id. The worker checks the spec: SpecError with its one line."""
        d = spec.to_dict() if isinstance(spec, JobSpec) else spec
        info = self._request("submit", timeout=SUBMIT_TIMEOUT_S, spec=d)["job"]
        self._next.setdefault(info["id"], 0)
        return info["id"]

    def cancel(self, job_id: str) -> None:
        """Cancel a job: a queued one is dropped, a running one stops at its next check."""
        self._request("cancel", job=job_id)

    def jobs(self) -> list[JobInfo]:
        """Every job the worker remembers, oldest first."""
        return [JobInfo(**j) for j in self._request("list")["jobs"]]

    def status(self, job_id: str) -> JobInfo:
        return JobInfo(**self._request("status", job=job_id)["job"])

    def past_events(self, job_id: str, since: int = 0) -> list[Event]:
        """The job's stored events from number ``since`` on (the worker keeps the newest
        10 000 per job)."""
        return [e for _, e in self._past(job_id, since)]

    def _past(self, job_id: str, since: int) -> list[tuple[int, Event]]:
        reply = self._request("events", job=job_id, since=since)
        return [(reply["first"] + i, Event.from_dict(d)) for i, d in enumerate(reply["events"])]

    # ---- events ------------------------------------------------------------------------
    def _drain(self, timeout_ms: int) -> None:
        """Move what the SUB socket holds into the raw buffer; note heartbeats."""
        if not self.events_url:
            return
        if not self._sub.poll(timeout_ms):
            return
        while True:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if frames[0] == b"heartbeat" and len(frames) == 2:
                    beat = json.loads(frames[1])
                    # when it was sent, not when read: a backlog read late is old news
                    age = max(0.0, time.time() - float(beat["time"]))
                    self._last_seen = max(self._last_seen, time.monotonic() - age)
                    self.last_heartbeat = beat
                elif frames[0] == b"event" and len(frames) == 4:
                    self._raw.append((frames[1].decode(), int(frames[2]),
                                      Event.from_dict(json.loads(frames[3]))))
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue  # not from a worker of ours

    def poll_events(self, timeout_ms: int = 0) -> list[tuple[str, Event]]:
        """Events received since the last call as (job id, event), in order per job; waits up
        to ``timeout_ms`` when none are there yet. Events missed (a gap, or :meth:`follow`)
        are fetched with a request. Never raises for a dead worker (see :meth:`alive`)."""
        if not self._raw and not self._catch_up:
            self._drain(timeout_ms)
        self._drain(0)
        out: list[tuple[str, Event]] = []
        for job_id in self._catch_up:
            out += self._fetch(job_id)
        self._catch_up.clear()
        while self._raw:
            job_id, seq, event = self._raw.popleft()
            if seq > self._next.get(job_id, seq):  # dropped by PUB: fetch the gap
                out += self._fetch(job_id, before=seq)
            if seq < self._next.get(job_id, seq):
                continue  # already delivered
            out.append((job_id, event))
            self._next[job_id] = seq + 1
        return out

    def follow(self, job_id: str, since: int = 0) -> None:
        """Deliver the job's events from number ``since`` on through :meth:`poll_events`,
        the earlier ones fetched from the worker's store (a view opened late, a client that
        connected mid-run)."""
        self._next[job_id] = since
        self._catch_up.add(job_id)

    def _fetch(self, job_id: str, before: int | None = None) -> list[tuple[str, Event]]:
        """Stored events of a job from the next undelivered one (up to ``before``)."""
        try:
            past = self._past(job_id, self._next[job_id])
        except (WorkerError, ValueError):
            return []
        past = [(s, e) for s, e in past if before is None or s < before]
        if past:
            self._next[job_id] = past[-1][0] + 1
        return [(job_id, e) for _, e in past]

    def watch(self, job_id: str, poll_ms: int = 200) -> Iterator[Event]:
        """Every event of one job from its first, live until its ``done`` or ``error``
        event. Consumes the other jobs' events received meanwhile. ValueError for an
        unknown job, WorkerError when the worker dies."""
        self.status(job_id)
        self.follow(job_id)
        while True:
            for jid, event in self.poll_events(poll_ms):
                if jid == job_id:
                    yield event
                    if event.kind in TERMINAL:
                        return
            if not self.alive():
                raise WorkerError(f"the worker died while running job {job_id}; restart it "
                                  "and submit the job again")

    def alive(self) -> bool:
        """Whether the worker's heartbeat was seen within the last few seconds."""
        if self.process is not None and self.process.poll() is not None:
            return False
        self._drain(0)
        return time.monotonic() - self._last_seen < self._silence_limit()

    # ---- lifecycle ---------------------------------------------------------------------
    def restart(self) -> None:
        """Start the worker again (killing it when it hangs) and reconnect. A worker this
        client did not start cannot be restarted from here: reconnect to its address file
        (after ``membrane worker`` was started again)."""
        if self.process is not None and self.alive():  # a polite stop first
            with contextlib.suppress(WorkerError):
                self._request("shutdown", timeout=2.0)
            _stop(self.process, grace_s=5.0)
        self._close_sockets()
        self._next.clear()
        self._raw.clear()
        self._catch_up.clear()
        if self.process is None:
            if self.address_file is None:
                raise WorkerError("this client did not start the worker; start it again with "
                                  "`membrane worker`")
            try:
                addresses = read_address(self.address_file)
            except (OSError, ValueError) as e:
                raise WorkerError(str(e)) from None
            self._use(addresses)
            self._handshake()
            return
        _stop(self.process, grace_s=0.0)
        state_dir = self.address_file.parent
        self.process = _spawn(state_dir)
        self._use(_await_address(self.process, state_dir))
        self._handshake_or_kill()

    def _use(self, addresses: dict[str, Any]) -> None:
        """Open the sockets to the worker of an address file."""
        self.control_url, self.events_url = addresses["control"], addresses["events"]
        self.token = addresses.get("token", "")
        self._open_sockets()

    def close(self, stop_worker: bool = False) -> None:
        """Close the sockets; with ``stop_worker`` ask the worker to cancel its jobs and exit
        (and kill it when it does not, if this client started it)."""
        if stop_worker:
            with contextlib.suppress(WorkerError):
                self._request("shutdown", timeout=5.0)
            if self.process is not None:
                _stop(self.process, grace_s=15.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._dealer.close(0)
        self._sub.close(0)

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(stop_worker=self.process is not None)


def _spawn(state_dir: Path) -> subprocess.Popen:
    """``python -m membrane_py.jobs.worker`` with its stderr in ``<state_dir>/worker.log``;
    its stdin is a pipe that closes when this process ends, which stops the worker."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOG_FILE).open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "membrane_py.jobs.worker", "--state-dir",
                                 str(state_dir), "--exit-with-parent"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)


def _await_address(proc: subprocess.Popen, state_dir: Path) -> dict[str, Any]:
    """The addresses of a started worker, once its address file names it."""
    path = address_path(state_dir)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise WorkerError(f"the worker exited with code {proc.returncode}: "
                              f"{_log_tail(state_dir)}")
        with contextlib.suppress(OSError, ValueError):
            addresses = read_address(path)
            if addresses.get("pid") == proc.pid:
                return addresses
        if time.monotonic() > deadline:
            _stop(proc, grace_s=0.0)
            raise WorkerError(f"the worker did not start within {START_TIMEOUT_S:.0f} s: "
                              f"{_log_tail(state_dir)}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Wait ``grace_s`` for ``proc`` to end, then kill it."""
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdin is not None:
        proc.stdin.close()


def _log_tail(state_dir: Path, lines: int = 5) -> str:
    try:
        text = (state_dir / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"

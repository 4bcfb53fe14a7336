"""The one place the window talks to the job worker (:mod:`membrane_py.jobs.client`).

A QTimer in the GUI thread polls the worker's events without blocking and re-emits them as
Qt signals; a slower timer checks the worker's heartbeat. A dead worker's running jobs fail
at once with a message that says how to continue, and the worker is restarted in a plain
background thread (it takes seconds) while the window stays responsive: during the restart
only that thread touches the client's pyzmq sockets, afterwards only the GUI thread again
(the thread's join is the handover). Errors become one-line messages; the window never
sees a traceback.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, QTimer, Signal

from membrane_py.events import Event


class JobController(QObject):
    """Submits specs, cancels jobs and turns worker events into signals.

    ``event(job_id, Event)`` for every event, ``finished(job_id, JobInfo)`` once per job (its
    ``error`` holds the one-line message of a failed or cancelled job, ``result`` the result
    of a done one; :attr:`summaries` the result's one-line summary), ``submitted(job_id,
    kind)``, ``availability(bool, message)`` when the worker comes or goes.
    """

    event = Signal(str, object)
    finished = Signal(str, object)
    submitted = Signal(str, str)
    availability = Signal(bool, str)

    def __init__(self, client=None, poll_ms: int = 50, heartbeat_ms: int = 1000,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.last_error = ""
        self.running: dict[str, str] = {}  # job id -> kind, until finished
        self.summaries: dict[str, str] = {}  # job id -> the result's one-line summary
        self._restart: threading.Thread | None = None
        self._restart_error = ""
        self._poll = QTimer(self)
        self._poll.setInterval(poll_ms)
        self._poll.timeout.connect(self.poll)
        self._beat = QTimer(self)
        self._beat.setInterval(heartbeat_ms)
        self._beat.timeout.connect(self.heartbeat)
        if client is not None:
            self._poll.start()
            self._beat.start()

    @classmethod
    def start_local(cls, state_dir: str | None = None, **kwargs) -> JobController:
        """A controller over a freshly spawned local worker process (None client on failure;
        the window then says why and keeps its Run buttons disabled)."""
        from membrane_py.jobs.client import WorkerClient

        try:
            client = WorkerClient.start_local(state_dir=state_dir)
        except OSError as exc:  # WorkerError is a ConnectionError
            controller = cls(None, **kwargs)
            controller.last_error = f"the job worker did not start: {exc}"
            return controller
        return cls(client, **kwargs)

    @property
    def available(self) -> bool:
        """A worker is there to take jobs (not while it is being restarted)."""
        return self.client is not None and self._restart is None

    def submit(self, spec) -> str | None:
        """Queue ``spec``; the job id, or None with :attr:`last_error` saying why."""
        if not self.available:
            self.last_error = ("the job worker is restarting; try again in a moment"
                               if self._restart is not None
                               else self.last_error or "no job worker is running")
            return None
        try:
            job_id = self.client.submit(spec)
        except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
            self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None
        self.running[job_id] = spec.kind
        self.submitted.emit(job_id, spec.kind)
        return job_id

    def cancel(self, job_id: str) -> None:
        if not self.available:
            return
        try:
            self.client.cancel(job_id)
        except (ValueError, OSError, RuntimeError, TimeoutError) as exc:
            self.last_error = str(exc)

    def jobs(self) -> list:
        if not self.available:
            return []
        try:
            return self.client.jobs()
        except (OSError, RuntimeError, TimeoutError):
            return []

    def past_events(self, job_id: str) -> list[Event]:
        if not self.available:
            return []
        try:
            return self.client.past_events(job_id)
        except (ValueError, OSError, RuntimeError, TimeoutError):
            return []

    def poll(self) -> None:
        """Deliver the events that arrived since the last tick (never blocks)."""
        if self._restart is not None and not self._restart.is_alive():
            self._restarted()
        if not self.available:
            return
        try:
            events = self.client.poll_events(timeout_ms=0)
        except OSError as exc:
            self.last_error = str(exc)
            return
        for job_id, ev in events:
            self.event.emit(job_id, ev)
            if ev.kind in ("done", "error") and job_id in self.running:
                self._end(job_id, ev)

    def _end(self, job_id: str, ev: Event) -> None:
        """A job's terminal event (the worker puts its state and result in ``data``)."""
        from membrane_py.jobs.client import JobInfo

        kind = self.running.pop(job_id)
        state = ev.data.get("state", "done" if ev.kind == "done" else "failed")
        if state == "done":
            self.summaries[job_id] = ev.message
            info = JobInfo(job_id, kind, state, {}, ev.data.get("result"), None, 0)
        else:
            info = JobInfo(job_id, kind, state, {}, None, ev.message or state, 0)
        self.finished.emit(job_id, info)

    def heartbeat(self) -> None:
        """When the worker died: fail its running jobs, saying how to go on, and restart it
        in the background."""
        if not self.available or self.client.alive():
            return
        from membrane_py.jobs.client import JobInfo

        for job_id, kind in list(self.running.items()):
            del self.running[job_id]
            self.finished.emit(job_id, JobInfo(
                job_id, kind, "failed", {}, None,
                "the worker stopped during this job; it is being restarted: press Run again "
                "to continue (finished tiles and checkpoints are kept)", 0))
        self._restart_error = ""
        self._restart = threading.Thread(target=self._restart_worker, name="worker-restart",
                                         daemon=True)
        self._restart.start()
        self.availability.emit(False, "the job worker stopped; restarting it")

    def _restart_worker(self) -> None:
        """The background thread's work: the only code touching the client meanwhile."""
        try:
            self.client.restart()
        except OSError as exc:  # WorkerError is a ConnectionError
            self._restart_error = str(exc) or type(exc).__name__

    def _restarted(self) -> None:
        """Back in the GUI thread once the restart thread has ended."""
        self._restart.join()
        self._restart = None
        if self._restart_error:
            self.client = None
            self.last_error = f"the job worker could not be restarted: {self._restart_error}"
            self.availability.emit(False, self.last_error)
        else:
            self.availability.emit(True, "the job worker was restarted")

    def close(self) -> None:
        """Stop polling, and the worker when this window started it."""
        self._poll.stop()
        self._beat.stop()
        if self._restart is not None:
            self._restart.join()
            self._restart = None
        if self.client is not None:
            self.client.close(stop_worker=self.client.process is not None)
            self.client = None

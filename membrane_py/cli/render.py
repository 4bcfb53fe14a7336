"""Event rendering and job execution shared by every command.

Each command turns its options into a job spec and calls :func:`execute`: it saves the spec
when asked (``--save-job``), runs it through the job registry with a renderer for its
events (rich progress bars, warnings, epoch metrics), prints the result's summary, and turns
user mistakes into one line and a non-zero exit. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.events import Event, one_line

#: exit codes: bad input or a failed job, and an interrupted (Ctrl-C / cancelled) one
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_state = {"debug": False}


def set_debug(on: bool) -> None:
    _state["debug"] = on


class Renderer:
    """Draws progress events as rich bars (one per task), prints warnings, logs and epoch
    metrics as lines; keeps the last progress event per task for the interruption note."""

    def __init__(self) -> None:
        self.last: dict[str, Event] = {}

    def __enter__(self) -> Renderer:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._rich = Progress("[progress.description]{task.description}", BarColumn(),
                              MofNCompleteColumn(), TimeRemainingColumn(),
                              "{task.fields[message]}", transient=False,
                              console=Console(stderr=True))
        self._tasks: dict[str, int] = {}
        return self

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            self.last[event.task] = event
            if not self._tasks:  # the bars appear with the first progress event
                self._rich.start()
            if event.task not in self._tasks:
                self._tasks[event.task] = self._rich.add_task(event.task, total=event.total,
                                                              message="")
            self._rich.update(self._tasks[event.task], completed=event.done,
                              total=event.total, message=event.message)
        elif event.kind == "metric" and event.message == "epoch":
            values = " ".join(f"{k}={v:.4g}" for k, v in event.data.items()
                              if isinstance(v, float))
            self._rich.console.print(f"epoch {event.data.get('epoch')}: {values}")
        elif event.kind in ("warning", "error"):
            self._rich.console.print(f"{event.kind}: {event.message}", style="yellow",
                                     markup=False, highlight=False, soft_wrap=True)
        elif event.kind == "log":
            self._rich.console.print(event.message, markup=False, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self._tasks:
            self._rich.stop()

    def finished(self) -> str:
        """What was done when the run stopped, e.g. 'predict: 12/40'."""
        return ", ".join(f"{t}: {e.done}/{e.total}" for t, e in self.last.items()) or "nothing"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print one ``error:`` line on stderr; raise the returned Exit."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or an unreachable service, not a bug."""
    from membrane_py.vastapi.client import VastError

    return (ValueError, OSError, VastError)


def rerun_hint(resumes: bool, rerun: str) -> str:
    """What ``rerun`` (e.g. "rerunning the same command") of an interrupted job does."""
    if resumes:
        return f"{rerun} continues from there"
    return f"this job keeps no partial result; {rerun} starts it over"


def execute(spec, save_job: Path | None = None) -> object:
    """Save (optionally) and run ``spec``; print its summary; exit cleanly on errors."""
    from membrane_py.events import Cancelled
    from membrane_py.jobs import run

    if save_job is not None:
        from membrane_py.atomic import write_text_atomic

        write_text_atomic(save_job, spec.to_json() + "\n")
        typer.echo(f"job saved to {save_job} (run it again with: membrane run {save_job})",
                   err=True)
    renderer = Renderer()
    try:
        with renderer:
            result = run(spec, progress=renderer)
    except (KeyboardInterrupt, Cancelled) as e:
        # a job that knows how it resumes says so in its Cancelled message (train: the job
        # file that continues from _last.pt)
        hint = str(e) if isinstance(e, Cancelled) else rerun_hint(spec.resumes, "rerunning "
                                                                  "the same command")
        typer.echo(f"interrupted; done so far: {renderer.finished()}; {hint}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except user_errors() as e:
        if _state["debug"]:
            raise
        raise fail(one_line(e)) from None
    typer.echo(result.summary())
    return result

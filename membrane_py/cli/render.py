"""Progress renderers shared by the commands: rich bars for Progress events."""

from __future__ import annotations

import typer


class Bar:
    """Renders Progress events as rich progress bars, one per task name."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._rich = Progress("[progress.description]{task.description}", BarColumn(),
                              MofNCompleteColumn(), TimeRemainingColumn(),
                              "{task.fields[message]}", transient=False)
        self._tasks: dict[str, int] = {}
        self._rich.__enter__()
        return self

    def __call__(self, event) -> None:
        if event.task not in self._tasks:
            self._tasks[event.task] = self._rich.add_task(event.task, total=event.total,
                                                          message="")
        self._rich.update(self._tasks[event.task], completed=event.done, total=event.total,
                          message=event.message)

    def __exit__(self, *exc) -> None:
        self._rich.__exit__(*exc)



def progress_printer():
    """A callback that prints each Progress event as one line on stderr."""
    from membrane_py.events import Progress

    def show(event: Progress) -> None:
        typer.echo(f"{event.task}: {event.done}/{event.total} {event.message}", err=True)

    return show

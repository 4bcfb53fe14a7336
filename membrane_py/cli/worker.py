"""`membrane worker` and `membrane jobs submit|list|watch|cancel`: the job worker from the
command line. The jobs commands find the worker through the address file in the default
state folder (see :func:`membrane_py.jobs.channel.default_state_dir`) or ``--worker``."""

from __future__ import annotations

from pathlib import Path

import typer

from membrane_py.cli.render import EXIT_INTERRUPTED, Renderer, fail, one_line, rerun_hint

jobs_app = typer.Typer(help="Submit, list, watch and cancel jobs of a running `membrane worker`.",
                       no_args_is_help=True)

WORKER = typer.Option(None, "--worker", help="the worker's address file (worker.json) or state "
                      "folder; default: the one `membrane worker` uses")


def worker(
    state_dir: Path = typer.Option(None, help="folder for the address file (default: "
                                   "$XDG_STATE_HOME/membrane-py/worker, on Windows "
                                   "%LOCALAPPDATA%\\membrane-py\\worker)"),
    parallel: int = typer.Option(1, min=1, help="jobs run at once; the others queue"),
) -> None:
    """Run a job worker in the foreground (Ctrl-C stops it and cancels its jobs)."""
    import logging

    from membrane_py.jobs.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker: %(message)s")
    try:
        w = Worker(state_dir, parallel=parallel)
        addresses = w.bind()
    except (ValueError, RuntimeError, OSError) as e:
        raise fail(one_line(e)) from None
    typer.echo(f"worker listening; address file: {w.address_file}")
    typer.echo(f"control {addresses['control']}, events {addresses['events']}")
    try:
        w.serve()
    except KeyboardInterrupt:
        typer.echo("worker stopped", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _connect(address: Path | None):
    from membrane_py.jobs.client import WorkerClient, WorkerError

    try:
        return WorkerClient.connect(address if address is not None else _default())
    except WorkerError as e:
        raise fail(one_line(e)) from None


def _default() -> Path:
    from membrane_py.jobs.channel import default_state_dir

    return default_state_dir()


def submit(
    job_file: Path = typer.Argument(..., help="a job spec written by --save-job (JSON)"),
    watch_it: bool = typer.Option(False, "--watch", help="show its progress until it ends"),
    address: Path = WORKER,
) -> None:
    """Queue a job from its JSON spec; prints the job id."""
    from membrane_py.jobs.registry import read_job_file

    try:
        spec = read_job_file(job_file)
    except ValueError as e:
        raise fail(one_line(e)) from None
    client = _connect(address)
    try:
        job_id = client.submit(spec)
    except (ValueError, OSError) as e:
        raise fail(one_line(e)) from None
    typer.echo(job_id)
    if watch_it:
        _watch(client, job_id)


def list_jobs(address: Path = WORKER) -> None:
    """The worker's jobs: id, kind, state, number of events, error."""
    client = _connect(address)
    try:
        jobs = client.jobs()
    except OSError as e:
        raise fail(one_line(e)) from None
    if not jobs:
        typer.echo("no jobs")
    for j in jobs:
        typer.echo(f"{j.id:<20} {j.kind:<12} {j.state:<10} {j.n_events:>6} events"
                   + (f"  {j.error}" if j.error else ""))


def watch(job_id: str = typer.Argument(..., help="a job id (see `membrane jobs list`)"),
          address: Path = WORKER) -> None:
    """Show a job's progress from its start until it ends (Ctrl-C stops watching only)."""
    _watch(_connect(address), job_id)


def _watch(client, job_id: str) -> None:
    """Render a job's events; exit 0 when done, 2 when failed, 130 when cancelled."""
    renderer = Renderer()
    end = None
    try:
        with renderer:
            for event in client.watch(job_id):
                if event.kind in ("done", "error"):
                    end = event
                else:
                    renderer(event)
    except KeyboardInterrupt:
        typer.echo(f"stopped watching; job {job_id} goes on in the worker (`membrane jobs "
                   f"cancel {job_id}` stops it)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ValueError, OSError) as e:
        raise fail(one_line(e)) from None
    if end.kind == "done":
        typer.echo(end.message)
    elif end.data.get("state") == "cancelled":
        from membrane_py.jobs.registry import lookup

        resumes = lookup(client.status(job_id).kind)[0].resumes
        typer.echo(f"cancelled; done so far: {renderer.finished()}; "
                   f"{rerun_hint(resumes, 'submitting the job again')}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    else:
        raise fail(end.message)


def cancel(job_id: str = typer.Argument(..., help="a job id (see `membrane jobs list`)"),
           address: Path = WORKER) -> None:
    """Cancel a job: a queued one is dropped, a running one stops at its next check."""
    client = _connect(address)
    try:
        client.cancel(job_id)
        state = client.status(job_id).state
    except (ValueError, OSError) as e:
        raise fail(one_line(e)) from None
    typer.echo(f"{job_id}: {'cancel requested' if state == 'running' else state}")


def register(app: typer.Typer) -> None:
    """Add `membrane worker` and the `membrane jobs` group to the `membrane` app."""
    app.command("worker")(worker)
    jobs_app.command("submit")(submit)
    jobs_app.command("list")(list_jobs)
    jobs_app.command("watch")(watch)
    jobs_app.command("cancel")(cancel)
    app.add_typer(jobs_app, name="jobs")

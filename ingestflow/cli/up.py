"""``ingestflow up``: the whole local stack in one command; Ctrl-C stops all of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from platformdirs import user_data_dir
from rich.markup import escape

from deployments.local_stack import LocalStack, Runner, StackOptions, StackStopped, run_stack
from ingestflow.cli.support import console, err, one_line_errors
from ingestflow.core.settings import get_settings

# One line per paragraph: typer keeps the line breaks of a docstring's later paragraphs.
UP_HELP = (
    "Start the database, a Prefect server with its UI, the deployments, and the API;"
    " Ctrl-C stops everything.\n\n"
    "With the local embedder, a model server (one copy of the model for every run) is started"
    " on --model-port, unless INGESTFLOW_EMBED_MODEL_SERVER_URL names one already running;"
    " it is started again if it dies.\n\n"
    "With no DATABASE_URL the embedded Postgres is used. A Prefect server already answering at"
    " PREFECT_API_URL (or on --prefect-port) is used instead of starting one. Otherwise one is"
    " started with its home under the data dir, on PREFECT_SERVER_DATABASE_CONNECTION_URL if"
    " set, else on SQLite, where each task waits about 2 s on database locks: Postgres is"
    " recommended (postgresql+asyncpg://...; not the embedded one, which lacks pg_trgm)."
)


@one_line_errors
def up(
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8000,
    prefect_port: Annotated[
        int | None,
        typer.Option(
            help="Port of the Prefect server and UI, if `up` starts one (default:"
            " INGESTFLOW_QUEUE_PREFECT_PORT, else 4200)."
        ),
    ] = None,
    model_port: Annotated[
        int, typer.Option(help="Port of the model server, if `up` starts one.")
    ] = 8100,
    model_server: Annotated[
        bool,
        typer.Option(
            help="Serve the local model once for every run (else each run process loads it)."
        ),
    ] = True,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Queue backend: prefect or celery (default: INGESTFLOW_QUEUE_BACKEND, else"
            " prefect)."
        ),
    ] = None,
    runner: Annotated[
        Runner,
        typer.Option(
            help="serve: the deployments served from one process (fastest start of a run);"
            " worker: a process worker on the ingestflow-process pool (job priorities)."
        ),
    ] = Runner.SERVE,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Flow runs at once, each a process of its own.")
    ] = 2,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Prefect's home and the logs (default: the user's data dir)."),
    ] = None,
) -> None:
    """Start the database, a Prefect server with its UI, the deployments, and the API; see
    ``UP_HELP``."""
    options = StackOptions(
        data_dir=data_dir or Path(user_data_dir("ingestflow")),
        host=host,
        port=port,
        prefect_port=prefect_port or get_settings().queue.prefect_port,
        model_port=model_port,
        model_server=model_server,
        backend=backend or get_settings().queue.backend,
        runner=runner,
        concurrency=concurrency,
    )
    err.print("starting the database, Prefect, the deployments and the API ...")
    try:
        code = run_stack(options, _announce)
    except StackStopped as stopped:
        # The whole reason, with the last lines of the part's log, not just the first line.
        reason, _, tail = stopped.reason.partition("\n")
        err.print(f"[red]error:[/red] {escape(reason)}; everything else was stopped")
        if tail:
            err.print(tail, markup=False, highlight=False, style="dim")
        raise typer.Exit(1) from None
    err.print("stopped")
    raise typer.Exit(code)


def _announce(stack: LocalStack) -> None:
    """Print where everything is, once it is all ready."""
    options = stack.options
    prefect = "started here" if stack.prefect_started else "already running"
    runs = (
        "served by one process (no priority queues)"
        if options.runner == "serve"
        else "a worker on the ingestflow-process pool (queues high, normal, low)"
    )
    if options.backend == "celery":
        runs += "; jobs go through Celery (worker on Redis queues high, normal, low)"
    lines = [
        "[bold green]ingestflow is up[/bold green]",
        f"  API          {stack.api_url}   (OpenAPI docs: {stack.api_url}/docs)",
        f"  Prefect UI   {stack.ui_url}   ({prefect})",
        f"  database     {stack.database}",
        *_model_line(stack),
        f"  runs         {runs}",
        f"  logs         {stack.log_dir}",
        "Create an API key:  ingestflow keys create --tenant default",
        "Press Ctrl-C to stop everything.",
    ]
    if stack.prefect_started and not _prefect_on_postgres(stack):
        lines.insert(
            -2,
            "  note: Prefect runs on SQLite, where each task waits about 2 s on locks;"
            " set PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://... for speed",
        )
    for line in lines:
        console.print(line, highlight=False)


def _model_line(stack: LocalStack) -> list[str]:
    if not stack.model_server:
        return []
    where = "started here" if stack.model_server_started else "already running"
    return [f"  model        {stack.model_server}/v1   (one copy for every run; {where})"]


def _prefect_on_postgres(stack: LocalStack) -> bool:
    url = stack.env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "")
    return url.startswith("postgresql")

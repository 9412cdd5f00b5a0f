"""The ``ingestflow`` command line: a thin adapter over ``ingestflow.service`` (``up`` and
``deploy`` start the deployments layer itself).

A command imports the service module it calls in its own body: those import Prefect (about a
second here), which ``ingestflow --help`` or ``ingestflow keys list`` should not wait for.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBar
from rich.table import Table

from ingestflow.cli.keys import keys_app
from ingestflow.cli.storage import storage_app
from ingestflow.cli.support import console, err, one_line_errors
from ingestflow.cli.up import UP_HELP, up
from ingestflow.core import progress
from ingestflow.core.types import DocumentStatus, SearchMode
from ingestflow.service import runtime

app = typer.Typer(help="Document ingestion for RAG on Prefect and pgvector.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
eval_app = typer.Typer(help="Retrieval quality.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(storage_app, name="storage")
app.add_typer(keys_app, name="keys")
prefect_app = typer.Typer(help="The background Prefect server.", no_args_is_help=True)
app.add_typer(prefect_app, name="prefect")
app.command(help=UP_HELP)(up)


# What each command needs set up first: the database schema, the Prefect server, or both.
_SETUP: dict[str, tuple[bool, bool]] = {
    "ingest": (True, True),
    "sweep": (True, True),
    "requeue": (True, True),
    "eval": (True, True),
    "search": (True, False),
    "status": (True, False),
    "keys": (True, False),
    "deploy": (False, True),
    "storage": (False, True),  # a store's credentials may be a Prefect block
}


_MODE_HELP = (
    "vector: cosine similarity; hybrid: vector and Postgres full-text rankings fused by"
    " reciprocal rank fusion (helps with rare exact terms: codes, names)."
)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Quiet by default: the summary is the output; Prefect's run logs stay in its UI."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    schema, prefect = _SETUP.get(ctx.invoked_subcommand or "", (False, False))
    if schema or prefect:
        one_line_errors(runtime.prepare)(schema=schema, prefect=prefect)


@app.command()
@one_line_errors
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, globs or URIs.")],
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    force: Annotated[bool, typer.Option(help="Re-index even if the bytes are unchanged.")] = False,
    metadata: Annotated[
        str | None, typer.Option(help="JSON object stored on each document.")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="INGESTFLOW_PDF_PASSWORD", help="Opens encrypted PDFs; never stored."),
    ] = None,
) -> None:
    """Ingest documents through the Prefect ingest flow and summarise the outcome."""
    from ingestflow.service.ingest import ingest as run_ingest

    meta = _json_object(metadata) if metadata else None
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with ProgressBar(*columns, console=err, transient=True) as bar:
        task_id = bar.add_task("ingesting", total=None)

        def update(p: progress.Progress) -> None:
            bar.update(task_id, total=p.total, completed=p.done)

        with progress.listen(update):
            result = run_ingest(
                paths, collection=collection, metadata=meta, force=force, password=password
            )
    counts = {s.value: result.count(s) for s in DocumentStatus if result.count(s)}
    console.print(f"collection {collection!r}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for outcome in result.failed:
        hint = (
            "; give its password with --password"
            if outcome.error_code == "password_required"
            else ""
        )
        console.print(f"  failed {outcome.source_uri}: {outcome.error}{hint}", markup=False)
    if result.failed and len(result.failed) == len(result.outcomes):
        raise typer.Exit(1)


@app.command()
@one_line_errors
def sweep(
    uri: Annotated[str, typer.Argument(help="Bucket prefix (s3://, gs://, az://) or folder.")],
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    prune: Annotated[bool, typer.Option(help="Retire documents whose objects are gone.")] = True,
    max_delete_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse to delete more than this share.")
    ] = 0.2,
) -> None:
    """Sweep URI once: ingest new and changed objects, retire deleted ones."""
    from ingestflow.service.ingest import sweep as run_sweep

    report = run_sweep(
        uri, collection=collection, prune=prune, max_delete_fraction=max_delete_fraction
    )
    console.print(
        f"swept {report.uri} into {collection!r}: listed {report.listed}, added {report.added},"
        f" updated {report.updated}, unchanged {report.unchanged}, deleted {report.deleted},"
        f" failed {len(report.failed)}",
        markup=False,
    )
    for source, reason in report.failed:
        console.print(f"  failed {source}: {reason}", markup=False)


@app.command()
@one_line_errors
def search(
    query: str,
    collection: Annotated[str, typer.Option("--collection", "-c")] = "default",
    k: Annotated[int, typer.Option("-k", min=1, max=1000)] = 5,
    filter: Annotated[
        str | None, typer.Option(help="JSON object the metadata must contain.")
    ] = None,
    mode: Annotated[SearchMode, typer.Option(help=_MODE_HELP)] = "vector",
) -> None:
    """Show the chunks that best answer QUERY, with source, provenance and score."""
    from ingestflow.service.search import search as run_search

    hits = run_search(
        query,
        collection=collection,
        k=k,
        filter=_json_object(filter) if filter else None,
        mode=mode,
    )
    if not hits:
        console.print("no results")
    places = 4 if mode == "hybrid" else 3  # fused scores are small: at most 2/61
    for rank, hit in enumerate(hits, 1):
        where = ", ".join(f"{k}={v}" for k, v in hit.provenance.items())
        score = f"{hit.score:.{places}f}"
        console.print(f"[bold]{rank}.[/bold] {score}  {hit.source_uri}  [dim]{where}[/dim]")
        snippet = " ".join(hit.content.split())
        console.print(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}", markup=False)


@app.command()
@one_line_errors
def status(collection: Annotated[str | None, typer.Option("--collection", "-c")] = None) -> None:
    """Documents by status, and recent failures."""
    from ingestflow.service.documents import status as run_status

    report = run_status(collection=collection)
    table = Table("status", "documents")
    for state, n in sorted(report.counts.items()):
        table.add_row(state, str(n))
    console.print(table)
    if report.failures:
        console.print("recent failures:")
        for f in report.failures:
            console.print(f"  [{f['collection']}] {f['source_uri']}: {f['error']}", markup=False)


@app.command()
@one_line_errors
def requeue(
    idle: Annotated[
        float | None,
        typer.Option(help="Seconds a document must have waited (default: the setting)."),
    ] = None,
) -> None:
    """Submit again the documents that wait for nothing: queued while the queue backend was
    down, or left behind by a job that died."""
    from ingestflow.service import jobs

    report = jobs.requeue_waiting(idle_seconds=idle)
    console.print(
        f"re-queued {report.resubmitted} of {report.examined} waiting document(s)"
        f" in {len(report.jobs)} job(s)"
    )


@app.command("expire-jobs")
@one_line_errors
def expire_jobs(
    days: Annotated[
        float | None,
        typer.Option(help="Keep jobs that ended this recently (default: the setting)."),
    ] = None,
) -> None:
    """Delete the jobs that ended longer ago than INGESTFLOW_JOBS_RETENTION_DAYS (their
    records, not their documents), with the queue backends' runs of that age."""
    from ingestflow.service import jobs

    report = jobs.expire_jobs(retention_days=days)
    runs = ", ".join(f"{n} {name} run(s)" for name, n in report.runs.items()) or "no runs"
    console.print(f"expired {report.jobs} job(s) and {runs}", markup=False)
    for name, why in report.skipped.items():
        err.print(f"the {name} backend was not pruned: {why}", markup=False)


@app.command()
@one_line_errors
def deploy() -> None:
    """Register the deployments on the ingestflow-process work pool (created with its high,
    normal and low queues if missing); then run `prefect worker start --pool
    ingestflow-process` on any machine."""
    from deployments.definitions import deploy_to_work_pool
    from deployments.work_pool import WORK_POOL

    ids = deploy_to_work_pool()
    console.print(f"{len(ids)} deployment(s) on work pool {WORK_POOL!r}")


@app.command("model-server")
@one_line_errors
def model_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8100,
) -> None:
    """Serve the local embedding model over an OpenAI-compatible API (POST /v1/embeddings),
    one copy for every run of this machine: point the runs at it with
    INGESTFLOW_EMBED_MODEL_SERVER_URL=http://HOST:PORT/v1. `ingestflow up` starts one."""
    from tasks.embedders.model_server import serve

    serve(host=host, port=port)


@prefect_app.command("stop")
@one_line_errors
def prefect_stop() -> None:
    """Stop the Prefect server started in the background on first use (not one `up` or
    `prefect server start` runs)."""
    from deployments import background_prefect

    pid = background_prefect.stop()
    console.print(
        f"stopped the background Prefect server (pid {pid})"
        if pid
        else "no background Prefect server is running"
    )


@db_app.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply pending schema migrations."""
    applied, version = runtime.upgrade_schema()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing to apply"
    console.print(f"schema at version {version} ({names})")


@eval_app.command("beir")
@one_line_errors
def eval_beir(
    path: Annotated[Path, typer.Argument(help="Folder with corpus.jsonl, queries.jsonl, qrels/.")],
    collection: Annotated[str | None, typer.Option("--collection", "-c")] = None,
    small: Annotated[bool, typer.Option(help="30 queries and a few hundred documents.")] = False,
    one_chunk_per_doc: Annotated[
        bool, typer.Option(help="Index each document whole (the MTEB setting).")
    ] = False,
    mode: Annotated[SearchMode, typer.Option(help=_MODE_HELP)] = "vector",
) -> None:
    """Ingest a BEIR dataset and print nDCG@10, recall@100 and MRR@10 of its test queries."""
    from ingestflow.service import evaluation

    name = collection or f"beir-{path.name}-{uuid.uuid4().hex[:8]}"
    scores, docs = evaluation.run_beir(
        path,
        collection=name,
        small=small,
        mode=mode,
        chunking=evaluation.ONE_CHUNK_PER_DOCUMENT if one_chunk_per_doc else None,
    )
    console.print(
        f"{path.name}: {docs} documents, {scores.queries} queries, collection {name!r},"
        f" {mode} search\n"
        f"nDCG@10 {scores.ndcg_at_10:.4f}  recall@100 {scores.recall_at_100:.4f}"
        f"  MRR@10 {scores.mrr_at_10:.4f}",
        markup=False,
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not valid JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object")
    return value


if __name__ == "__main__":
    app()

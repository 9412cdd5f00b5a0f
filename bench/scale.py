"""``python -m bench scale``: one job over the same SciFact documents, done by 1, 2 and 4
workers (``--workers``), on each queue backend (``--backends``: ``celery`` workers,
``prefect`` served runners and ``prefect-pool`` process workers on the ``ingestflow-process``
pool, each taking one run at a time), against the OpenAI-compatible test server (1,536
dimensions, 250 ms per request plus a per-token cost).

Every worker count starts its workers first (their start is not timed), submits one job
through the same front door as the API (``deployments.submit``) and times it from the
submission to the job's end. The job is split into parts (``--part-documents``) and asks for
one helper run per extra worker (``INGESTFLOW_FAN_OUT_HELPERS`` = workers - 1), so with one
worker the job's own run does every part.

Printed per run: seconds, documents per second, scaling efficiency (throughput with K
workers / (K x throughput with 1)), requests and 429s, which runs did the documents, and an
exactness check of the final state against the one-worker run (every document indexed, the
same chunks with the same vectors, nothing left processing). One more run on Celery kills
a helper's worker outright (SIGKILL of its process group) in the middle of a part; its part
is taken again after ``INGESTFLOW_FAN_OUT_STALE_SECONDS`` (``--stale-seconds``).

Each run embeds under a model name of its own, so no run finds another's vectors in the
cache (the test server's vectors do not depend on the model name, so the final states still
compare).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import write_scifact
from bench.harness import REPO, machine, prefect_server

BACKENDS = ("celery", "prefect", "prefect-pool")


@dataclass
class Run:
    backend: str
    workers: int
    seconds: float
    documents: int
    requests: int
    refused: int
    by_run: dict[str, int]
    problems: list[str] = field(default_factory=list)
    killed: bool = False

    @property
    def throughput(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--part-documents", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per request")
    parser.add_argument("--latency-per-token", type=float, default=0.00001)
    parser.add_argument("--tokens-per-minute", type=int, default=0, help="0: no limit")
    parser.add_argument("--stale-seconds", type=float, default=10.0)
    parser.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--prefect-api-url", default=os.environ.get("PREFECT_API_URL"))
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sys.path.insert(0, str(REPO))
    from tests.support.openai_server import run_openai_server

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ingestflow-bench-scale-") as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        write_scifact(folder, limit=args.documents)
        files = sorted(str(p) for p in folder.iterdir())
        with (
            prefect_server(args.prefect_api_url) as (api, _),
            run_openai_server(dimension=1536) as server,
        ):
            _configure_this_process(api, server.base_url, args)
            for backend in backends:
                reference: str | None = None
                for count in counts:
                    run, collection = _measure(
                        backend, count, files, api, server, args, Path(tmp), reference
                    )
                    reference = reference or collection
                    runs.append(run)
                    print(_row(run, runs), flush=True)
                if args.kill and backend == "celery" and reference:
                    run, _ = _measure(
                        backend, 2, files, api, server, args, Path(tmp), reference, kill=True
                    )
                    runs.append(run)
                    print(_row(run, runs), flush=True)
    _report(runs, args)


def _configure_this_process(api: str, base_url: str, args: argparse.Namespace) -> None:
    """This process submits the jobs and reads them back: the same Redis and Prefect API as
    the workers."""
    os.environ["PREFECT_API_URL"] = api
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["INGESTFLOW_EMBED_PROVIDER"] = "openai"
    os.environ["INGESTFLOW_EMBED_OPENAI_BASE_URL"] = base_url
    os.environ["INGESTFLOW_EMBED_OPENAI_API_KEY"] = "bench"
    from ingestflow.core.settings import get_settings
    from storage.migrate import ensure_schema

    get_settings.cache_clear()
    ensure_schema()


def _worker_env(api: str, base_url: str, args: argparse.Namespace, workers: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTFLOW_", "OPENAI_"))}
    env |= {
        "PREFECT_API_URL": api,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
        "REDIS_URL": args.redis_url,
        "INGESTFLOW_EMBED_PROVIDER": "openai",
        "INGESTFLOW_EMBED_MODEL": f"bench-scale-{uuid.uuid4().hex[:8]}",
        "INGESTFLOW_EMBED_OPENAI_BASE_URL": base_url,
        "INGESTFLOW_EMBED_OPENAI_API_KEY": "bench",
        "INGESTFLOW_FAN_OUT_HELPERS": str(workers - 1),
        "INGESTFLOW_FAN_OUT_PART_DOCUMENTS": str(args.part_documents),
        "INGESTFLOW_FAN_OUT_STALE_SECONDS": str(args.stale_seconds),
    }
    if args.tokens_per_minute:
        env["INGESTFLOW_EMBED_TOKENS_PER_MINUTE"] = str(int(args.tokens_per_minute * 0.9))
        env["INGESTFLOW_EMBED_BUDGET_URL"] = args.redis_url
    return env


def _measure(
    backend: str,
    workers: int,
    files: list[str],
    api: str,
    server,
    args: argparse.Namespace,
    logs: Path,
    reference: str | None,
    *,
    kill: bool = False,
) -> tuple[Run, str]:
    from deployments.queue import JobRequest
    from deployments.submit import submit

    collection = f"scale-{backend}-{workers}{'-kill' if kill else ''}-{uuid.uuid4().hex[:6]}"
    env = _worker_env(api, server.base_url, args, workers)
    server.reset()
    server.configure(
        latency=args.latency,
        latency_per_token=args.latency_per_token,
        tokens_per_window=args.tokens_per_minute or None,
        limit_window=60.0,
    )
    with _workers(backend, workers, env, logs) as pool:
        request = JobRequest.ingest(tenant="default", collection=collection, sources=files)
        began = time.monotonic()
        job = submit(request, [], _backend(backend))
        if kill:
            _kill_a_helper_mid_part(job, collection, pool)
        view = _wait(job, timeout=3600)
        seconds = time.monotonic() - began
    records = server.stats().records
    problems = [] if view.state.value == "completed" else [f"job ended {view.state.value}"]
    problems += _exactness(collection, reference, len(files))
    run = Run(
        backend=backend,
        workers=workers,
        seconds=seconds,
        documents=len(files),
        requests=len(records),
        refused=sum(1 for r in records if r.status == 429),
        by_run=_documents_by_run(collection),
        problems=problems,
        killed=kill,
    )
    return run, collection


def _backend(name: str):
    if name == "celery":
        from deployments.celery_backend import celery_backend

        return celery_backend()
    from deployments.prefect_backend import PrefectBackend

    return PrefectBackend()


@contextmanager
def _workers(backend: str, count: int, env: dict[str, str], logs: Path) -> Iterator[list]:
    """``count`` workers, started and ready; stopped afterwards."""
    from tests.support.celery_worker import run_celery_worker

    with ExitStack() as stack:
        if backend == "celery":
            yield [
                stack.enter_context(run_celery_worker(env=env, log_dir=logs)) for _ in range(count)
            ]
            return
        if backend == "prefect-pool":
            yield _pool_workers(stack, count, env, logs)
            return
        code = "from deployments.definitions import serve_deployments; serve_deployments(limit=1)"
        runners = []
        for n in range(count):
            out = stack.enter_context((logs / f"runner-{uuid.uuid4().hex[:6]}-{n}.log").open("wb"))
            proc = subprocess.Popen(
                [sys.executable, "-c", code], env=env, cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            stack.callback(_stop, proc)
            runners.append(proc)
        _wait_served(runners)
        yield runners


def _pool_workers(
    stack: ExitStack, count: int, env: dict[str, str], logs: Path
) -> list[subprocess.Popen]:
    """The deployments registered on the pool, and ``count`` process workers polling it."""
    import signal

    from deployments.definitions import deploy_to_work_pool

    deploy_to_work_pool()
    prefect = str(Path(sys.executable).with_name("prefect"))
    argv = [prefect, "worker", "start", "--pool", "ingestflow-process", "--type", "process"]
    workers = []
    for n in range(count):
        out = stack.enter_context((logs / f"worker-{uuid.uuid4().hex[:6]}-{n}.log").open("wb"))
        proc = subprocess.Popen(
            [*argv, "--limit", "1"], env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        stack.callback(_stop, proc, signal.SIGINT)
        workers.append(proc)
    time.sleep(5.0)  # each worker starts and polls the pool
    if any(w.poll() is not None for w in workers):
        raise SystemExit("a pool worker exited")
    return workers


def _stop(proc: subprocess.Popen, how: int | None = None) -> None:
    if how is None:
        proc.terminate()
    else:
        proc.send_signal(how)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_served(runners: list[subprocess.Popen], timeout: float = 120.0) -> None:
    """Until every runner has registered the deployments and is polling (a few seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if any(r.poll() is not None for r in runners):
                raise SystemExit("a runner exited")
            try:
                client.read_deployment_by_name("ingest-parts/ingest-parts")
                break
            except ObjectNotFound:
                time.sleep(0.5)
    time.sleep(3.0)  # the last runner to start registers, then polls


def _wait(job: str, *, timeout: float):
    from ingestflow.core.errors import JobNotFoundError
    from ingestflow.service.jobs import get_job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = get_job(job, tenant="default")
        except JobNotFoundError:
            view = None
        if view is not None and view.finished:
            return view
        time.sleep(0.25)
    raise SystemExit(f"job {job} did not end within {timeout:.0f} s")


def _kill_a_helper_mid_part(job: str, collection: str, workers: list) -> None:
    """SIGKILL the worker (and its pool) of a helper that is in the middle of a part."""
    from storage.db import connection

    deadline = time.monotonic() + 600
    with connection() as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) AS n FROM documents d JOIN collections c"
                " ON c.id = d.collection_id JOIN jobs j ON j.id = %s"
                " WHERE c.name = %s AND d.status = 'processing'"
                " AND d.flow_run_id IS DISTINCT FROM j.flow_run_id",
                (job, collection),
            ).fetchone()
            if row and row["n"]:
                break
            time.sleep(0.05)
        else:
            raise SystemExit("no helper took a part")
    helpers = [w for w in workers if "Task ingestflow.ingest[" not in w.log()]
    helpers[0].kill()


def _documents_by_run(collection: str) -> dict[str, int]:
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(
            "SELECT d.flow_run_id, count(*) AS n FROM documents d JOIN collections c"
            " ON c.id = d.collection_id WHERE c.name = %s GROUP BY d.flow_run_id"
            " ORDER BY n DESC",
            (collection,),
        ).fetchall()
    return {str(r["flow_run_id"])[:8]: r["n"] for r in rows}


_DIFFERENCES = """
WITH per_doc AS (
    SELECT c.name AS coll, d.source_uri, d.status,
           md5(coalesce(string_agg(k.ordinal || ':' || k.content_hash || ':' || k.embedding::text,
                                   ',' ORDER BY k.ordinal), '')) AS digest
    FROM documents d JOIN collections c ON c.id = d.collection_id
    LEFT JOIN chunks k ON k.document_id = d.id
    WHERE c.name IN (%(got)s, %(want)s)
    GROUP BY c.name, d.source_uri, d.status
)
SELECT count(*) AS n FROM (SELECT * FROM per_doc WHERE coll = %(got)s) g
FULL JOIN (SELECT * FROM per_doc WHERE coll = %(want)s) w USING (source_uri)
WHERE g.digest IS DISTINCT FROM w.digest
"""


def _exactness(collection: str, reference: str | None, expected: int) -> list[str]:
    from storage.db import connection

    problems = []
    with connection() as conn:
        rows = conn.execute(
            "SELECT d.status, count(*) AS n FROM documents d JOIN collections c"
            " ON c.id = d.collection_id WHERE c.name = %s GROUP BY d.status",
            (collection,),
        ).fetchall()
        statuses = {r["status"]: r["n"] for r in rows}
        done = statuses.get("indexed", 0) + statuses.get("unchanged", 0)
        if done != expected or set(statuses) - {"indexed", "unchanged"}:
            problems.append(f"documents by status: {statuses}")
        if reference is not None:
            row = conn.execute(_DIFFERENCES, {"got": collection, "want": reference}).fetchone()
            if row and row["n"]:
                problems.append(f"{row['n']} documents differ from the one-worker run")
    return problems


def _row(run: Run, runs: list[Run]) -> str:
    one = next((r for r in runs if r.backend == run.backend and r.workers == 1), None)
    efficiency = (
        f", efficiency {run.throughput / (run.workers * one.throughput):.2f}"
        if one and run.workers > 1 and not run.killed
        else ""
    )
    exact = "exact" if not run.problems else "NOT EXACT: " + "; ".join(run.problems)
    killed = " (a helper's worker killed mid-part)" if run.killed else ""
    return (
        f"{run.backend:<7} {run.workers} worker(s){killed}: {run.seconds:7.2f} s,"
        f" {run.throughput:6.1f} documents/s{efficiency}; {run.requests} requests,"
        f" {run.refused} 429s; documents by run {list(run.by_run.values())}; {exact}"
    )


def _report(runs: list[Run], args: argparse.Namespace) -> None:
    info = machine()
    print(
        f"\n{args.documents} SciFact documents in parts of {args.part_documents};"
        f" server {args.latency * 1000:.0f} ms per request"
        f" + {args.latency_per_token * 1e6:.0f} us per token,"
        f" {'no limit' if not args.tokens_per_minute else f'{args.tokens_per_minute:,} TPM'};"
        f" machine: {info.get('cores')} cores, {info.get('ram_gib')} GiB,"
        f" load {info.get('load_average_at_start')}"
    )
    for run in runs:
        one = next((r for r in runs if r.backend == run.backend and r.workers == 1), None)
        if one and run.workers > 1 and not run.killed:
            efficiency = run.throughput / (run.workers * one.throughput)
            verdict = "met" if efficiency >= 0.8 else "missed"
            print(
                f"{run.backend} at {run.workers} workers: scaling efficiency {efficiency:.2f}"
                f" (target >= 0.80: {verdict})"
            )
    bad = [r for r in runs if r.problems]
    print("exactness: " + ("every run exact" if not bad else f"{len(bad)} runs NOT exact"))

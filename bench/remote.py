"""``python -m bench remote``: ingestflow against a hosted-style embedding API at its rate
limit, in the current design and the previous one, side by side.

The API is the OpenAI-compatible test server (``tests/support/openai_server.py``) on
127.0.0.1: 1,536-dimension vectors, 250 ms per request plus a per-token cost, and a
tokens-per-minute limit it enforces over a sliding minute with 429 and Retry-After.
Each design ingests the same SciFact documents into a fresh collection, from one worker
process or several (``--workers``: the documents split between them, each its own
``ingest()``), after the server's minute has been cleared:

- ``current``: ingestflow's defaults (4 requests in flight per process) with the account's
  limit given as a budget at 90% of the server's, shared by the workers through Redis;
- ``previous``: one request at a time and no budget (``INGESTFLOW_EMBED_CONCURRENT_REQUESTS=1``,
  what the provider did before), each worker on its own.

Printed per design: seconds to all indexed, requests, 429s, the tokens the server admitted,
the share of the limit used while embedding (admitted tokens against what the server's
sliding minute admits between the first and the last admitted request, when that is a minute
or more), and
requests that arrived inside a Retry-After window another answer had given more than 100 ms
earlier.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import write_scifact
from bench.harness import REPO, prefect_server

CHILD = """
import sys
from ingestflow import ingest
paths = sys.argv[2:]
result = ingest(paths, collection=sys.argv[1])
print("INDEXED", result.count("indexed"), "FAILED", len(result.failed))
for o in result.failed[:5]:
    print("FAILED", o.source_uri, o.error)
"""
NOTICE_SECONDS = 0.1  # a client cannot know of a 429 before its answer has reached it


@dataclass
class Measured:
    design: str
    workers: int
    seconds: float
    indexed: int
    requests: int
    refused: int
    tokens: int
    utilisation: float
    inside_retry_after: int


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(REPO))
    from tests.support.openai_server import run_openai_server

    parser = argparse.ArgumentParser(prog="python -m bench remote", description=__doc__)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--tokens-per-minute", type=int, default=150_000)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per request")
    parser.add_argument("--latency-per-token", type=float, default=0.00001)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefect-api-url", default=os.environ.get("PREFECT_API_URL"))
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    with tempfile.TemporaryDirectory(prefix="ingestflow-bench-remote-") as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        write_scifact(folder, limit=args.documents)
        files = sorted(str(p) for p in folder.iterdir())
        results: list[Measured] = []
        with (
            prefect_server(args.prefect_api_url) as (api, _),
            run_openai_server(dimension=1536) as server,
        ):
            for count in workers:
                for design in ("current", "previous"):
                    server.reset()
                    server.configure(
                        latency=args.latency,
                        latency_per_token=args.latency_per_token,
                        tokens_per_window=args.tokens_per_minute,
                        limit_window=60.0,
                    )
                    env = _environment(design, server.base_url, api, args)
                    results.append(_measure(design, count, files, env, server, args))
                    print(_row(results[-1]), flush=True)
    _report(results, args)


def _environment(design: str, base_url: str, api: str, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTFLOW_", "OPENAI_"))}
    env |= {
        "PREFECT_API_URL": api,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "INGESTFLOW_EMBED_PROVIDER": "openai",
        # A model name of its own: no design finds another's vectors in the cache.
        "INGESTFLOW_EMBED_MODEL": f"bench-{design}-{uuid.uuid4().hex[:8]}",
        "INGESTFLOW_EMBED_OPENAI_BASE_URL": base_url,
        "INGESTFLOW_EMBED_OPENAI_API_KEY": "bench",
    }
    if design == "current":
        env["INGESTFLOW_EMBED_TOKENS_PER_MINUTE"] = str(int(args.tokens_per_minute * 0.9))
        env["INGESTFLOW_EMBED_BUDGET_URL"] = args.redis_url
    else:
        env["INGESTFLOW_EMBED_CONCURRENT_REQUESTS"] = "1"
        env["INGESTFLOW_EMBED_BUDGET_URL"] = "memory://"
    return env


def _measure(
    design: str, workers: int, files: list[str], env: dict[str, str], server, args
) -> Measured:
    collection = f"remote-{design}-{workers}-{uuid.uuid4().hex[:6]}"
    shares = [files[i::workers] for i in range(workers)]
    began = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, collection, *share],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    indexed = 0
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err[-3000:]}")
        unreachable = err.count("embedding budget store unreachable")
        if unreachable:
            print(f"  a worker lost the shared budget's store {unreachable} times", flush=True)
        for line in out.splitlines():
            if line.startswith("INDEXED"):
                indexed += int(line.split()[1])
            elif line.startswith("FAILED "):
                print(f"  {line}", flush=True)
    seconds = time.monotonic() - began
    records = server.stats().records
    tokens, utilisation, inside = limit_use(records, args.tokens_per_minute)
    return Measured(
        design=design,
        workers=workers,
        seconds=seconds,
        indexed=indexed,
        requests=len(records),
        refused=sum(1 for r in records if r.status == 429),
        tokens=tokens,
        utilisation=utilisation,
        inside_retry_after=inside,
    )


def limit_use(records, tokens_per_minute: int) -> tuple[int, float, int]:
    """The tokens the server admitted, the share of its limit they used, and the requests
    that arrived inside a Retry-After window another answer had given.

    The share counts against what the server's sliding minute admits from the first admitted
    request to the last: a whole minute's tokens at once, then the minute's rate. A run whose
    requests span less than a minute never met the limit: its share is 0 (nothing to
    measure against)."""
    admitted = [r for r in records if r.status == 200]
    tokens = sum(r.tokens for r in admitted)
    span = (admitted[-1].at - admitted[0].at) if len(admitted) > 1 else 0.0
    possible = tokens_per_minute * (span + 60) / 60 if span >= 60 else 0.0
    return tokens, tokens / possible if possible else 0.0, _inside_retry_after(records)


def _inside_retry_after(records) -> int:
    pauses = [(r.at, r.at + r.retry_after) for r in records if r.retry_after]
    return sum(
        1
        for r in records
        if any(start + NOTICE_SECONDS < r.at < end for start, end in pauses if r.at > start)
    )


def _row(m: Measured) -> str:
    return (
        f"{m.design:<9} {m.workers} worker(s): {m.seconds:7.2f} s, {m.indexed} indexed,"
        f" {m.requests} requests, {m.refused} 429s, {m.tokens} tokens,"
        f" {m.utilisation:6.1%} of the limit while embedding,"
        f" {m.inside_retry_after} inside a Retry-After"
    )


def _report(results: list[Measured], args: argparse.Namespace) -> None:
    print(
        f"\n{args.documents} SciFact documents; server: {args.latency * 1000:.0f} ms per request"
        f" + {args.latency_per_token * 1e6:.0f} us per token, {args.tokens_per_minute:,}"
        " tokens per minute"
    )
    by = {(m.design, m.workers): m for m in results}
    for workers in sorted({m.workers for m in results}):
        cur, prev = by.get(("current", workers)), by.get(("previous", workers))
        if cur and prev:
            print(
                f"{workers} worker(s): current {cur.seconds:.2f} s vs previous {prev.seconds:.2f} s"
                f" ({prev.seconds / cur.seconds:.2f}x); 429s {cur.refused} vs {prev.refused};"
                f" limit used {cur.utilisation:.0%} vs {prev.utilisation:.0%}"
            )
    for m in results:
        if m.design == "current" and m.utilisation:
            met = m.utilisation >= 0.85 and m.inside_retry_after == 0
            print(
                f"{m.workers} worker(s): {m.utilisation:.0%} of the limit used,"
                f" {m.inside_retry_after} requests inside a Retry-After (target: >= 85% and"
                f" none: {'met' if met else 'missed'})"
            )
    ones = by.get(("current", 1))
    for m in results:
        if m.design == "current" and ones and m.workers > 1:
            efficiency = ones.seconds / (m.seconds * m.workers)
            print(f"scaling efficiency at {m.workers} workers (current): {efficiency:.2f}")

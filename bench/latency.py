"""Upload-to-searchable latency of the whole stack, as a user of the API sees it.

``python -m bench latency`` starts ``ingestflow up`` with the local model for each design,
one after another on free ports, each with a fresh data directory:

- ``prefect``: the default backend, as it is now (a warm engine);
- ``celery``: the Celery backend;
- ``prefect-cold``: the previous design, still reachable by settings: a new flow-run process
  per run (``INGESTFLOW_QUEUE_WARM_PROCESSES=0``), each loading its own copy of the model
  (``up --no-model-server``), no coalescing (``INGESTFLOW_QUEUE_COALESCE_MS=0``).

For each it uploads one small text file five times, one after another, then bursts of 20 and
200 distinct small files sent at once, and measures from each request to its document being
``indexed``. It prints, side by side: p50 and p95 of the single uploads, each burst's time
until all are indexed, the peak RSS of the whole stack (every process ``up`` started), and
how many processes held a copy of the model; then the targets and whether each was met. The
key's request rate and the tenant's active-job limit are switched off for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("ingestflow"))
DESIGNS: dict[str, dict[str, Any]] = {
    "prefect": {"backend": "prefect", "env": {}, "args": []},
    "celery": {"backend": "celery", "env": {}, "args": []},
    "prefect-cold": {
        "backend": "prefect",
        "env": {"INGESTFLOW_QUEUE_WARM_PROCESSES": "0", "INGESTFLOW_QUEUE_COALESCE_MS": "0"},
        "args": ["--no-model-server"],
    },
}
# (what, target, lower is better): the targets on the default backend.
TARGETS = {
    "p50_s": 1.5,
    "p95_s": 3.0,
    "burst_20_s": 5.0,
    "burst_200_s": 30.0,
    "model_copies": 1,
}
POLL = 0.05


@dataclass
class Result:
    design: str
    single_s: list[float] = field(default_factory=list)
    bursts_s: dict[int, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    model_copies: int = 0
    failed: int = 0

    @property
    def p50_s(self) -> float:
        return statistics.median(self.single_s) if self.single_s else float("nan")

    @property
    def p95_s(self) -> float:
        if not self.single_s:
            return float("nan")
        ordered = sorted(self.single_s)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench latency", description=__doc__)
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated")
    parser.add_argument("--bursts", default="20,200", help="burst sizes, comma-separated")
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument(
        "--prefect-database",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a Postgres where a scratch database for each Prefect server is made"
        " ('' for Prefect's SQLite)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latency.json")
    args = parser.parse_args(argv)
    bursts = [int(b) for b in args.bursts.split(",") if b.strip()]
    results = []
    for design in [d.strip() for d in args.designs.split(",") if d.strip()]:
        print(f"--- {design}", flush=True)
        results.append(measure(design, args.singles, bursts, args.prefect_database))
    report(results, bursts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\nwritten: {args.out}")


def measure(design: str, singles: int, bursts: list[int], prefect_pg: str) -> Result:
    result = Result(design)
    with _stack(design, prefect_pg) as (api, key, root_pid):
        import httpx

        sampler = _RssSampler(root_pid)
        sampler.start()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=api, headers=headers, timeout=120) as client:
            collection = f"latency_{uuid.uuid4().hex[:8]}"
            _upload_and_wait(client, collection, 1)  # the first ever run pays one-off costs
            for _ in range(singles):
                result.single_s.append(_upload_and_wait(client, collection, 1))
                print(f"  one upload: {result.single_s[-1]:.2f} s", flush=True)
            for size in bursts:
                result.bursts_s[size] = _upload_and_wait(client, collection, size)
                print(f"  burst of {size}: {result.bursts_s[size]:.2f} s", flush=True)
            listed = client.get(f"/v1/collections/{collection}/status").json()["documents"]
            result.failed = int(listed.get("failed", 0))
        result.model_copies = _model_copies(root_pid)
        result.peak_rss_mb = sampler.stop()
    return result


def _upload_and_wait(client: Any, collection: str, n: int) -> float:
    """Send ``n`` distinct small files at once, each from a client of its own; seconds
    until every one is indexed."""
    import httpx

    ids: list[str] = [""] * n
    errors: list[str] = []
    start = threading.Barrier(n + 1) if n > 1 else None

    def send(i: int) -> None:
        text = f"Note {uuid.uuid4()} number {i}: the tide turns twice a day near the harbour."
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=300) as own:
            if start is not None:
                start.wait()
            try:
                reply = own.post(
                    f"/v1/collections/{collection}/documents",
                    files={"file": (f"note-{i}.txt", text.encode(), "text/plain")},
                )
                reply.raise_for_status()
                ids[i] = reply.json()["document"]["id"]
            except httpx.HTTPError as exc:
                errors.append(f"upload {i}: {exc}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    if start is not None:
        start.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} of {n} uploads failed; the first: {errors[0]}")
    waiting = set(ids)
    while waiting:
        for doc_id in list(waiting):
            reply = client.get(f"/v1/collections/{collection}/documents/{doc_id}")
            if reply.status_code != 200:
                raise SystemExit(f"GET document answered {reply.status_code}: {reply.text[:300]}")
            if reply.json()["status"] in ("indexed", "failed"):
                waiting.discard(doc_id)
        if waiting:
            time.sleep(POLL)
    return time.perf_counter() - began


@contextmanager
def _prefect_database(admin: str) -> Iterator[str | None]:
    """A scratch database for the design's Prefect server; None: Prefect's SQLite."""
    if not admin:
        yield None
        return
    from tests.support.prefect_server import scratch_postgres_database

    with scratch_postgres_database(admin) as url:
        yield url


@contextmanager
def _stack(design: str, prefect_pg: str) -> Iterator[tuple[str, str, int]]:
    from tests.support.processes import free_port

    spec = DESIGNS[design]
    with tempfile.TemporaryDirectory(prefix=f"ingestflow-latency-{design}-") as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("INGESTFLOW_", "OPENAI_", "PREFECT_API_URL", "DATABASE_URL"))
        }
        env |= {
            "INGESTFLOW_DB_DATA_DIR": f"{tmp}/pgdata",
            "INGESTFLOW_API_UPLOAD_URI": f"{tmp}/uploads",
            "INGESTFLOW_API_RATE_LIMIT": "0",
            "INGESTFLOW_API_MAX_ACTIVE_JOBS_PER_TENANT": "0",
            "HF_HUB_OFFLINE": "1",
            **spec["env"],
        }
        with _prefect_database(prefect_pg) as url:
            if url:
                env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
            port = free_port()
            argv = [CLI, "up", "--backend", spec["backend"], "--port", str(port)]
            argv += ["--prefect-port", str(free_port()), "--model-port", str(free_port())]
            argv += ["--data-dir", f"{tmp}/data", *spec["args"]]
            proc = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            try:
                api = f"http://127.0.0.1:{port}"
                _wait_ready(proc, f"{api}/readyz")
                key = _create_key(env)
                yield api, key, proc.pid
            finally:
                proc.terminate()
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`ingestflow up` exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - our stack
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} did not become ready")


def _create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [CLI, "keys", "create", "--tenant", "latency"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1].strip()


def _stack_processes(root_pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _model_copies(root_pid: int) -> int:
    """Processes of the stack with the model's runtime (torch) loaded."""
    copies = 0
    for process in _stack_processes(root_pid):
        try:
            if "libtorch_cpu" in Path(f"/proc/{process.pid}/maps").read_text():
                copies += 1
        except OSError:
            continue
    return copies


class _RssSampler(threading.Thread):
    """The peak of the stack's summed RSS, sampled every 0.2 s."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.wait(0.2):
            total = 0
            for process in _stack_processes(self.root_pid):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak / 2**20


def report(results: list[Result], bursts: list[int]) -> None:
    names = [r.design for r in results]
    width = max(14, *(len(n) + 2 for n in names))
    rows: list[tuple[str, list[str]]] = [
        ("one upload p50 (s)", [f"{r.p50_s:.2f}" for r in results]),
        ("one upload p95 (s)", [f"{r.p95_s:.2f}" for r in results]),
        *[
            (
                f"burst of {b}, all indexed (s)",
                [f"{r.bursts_s.get(b, float('nan')):.2f}" for r in results],
            )
            for b in bursts
        ],
        ("peak RSS of the stack (MB)", [f"{r.peak_rss_mb:.0f}" for r in results]),
        ("copies of the model", [str(r.model_copies) for r in results]),
        ("documents failed", [str(r.failed) for r in results]),
    ]
    print()
    print(f"{'':34}" + "".join(f"{n:>{width}}" for n in names))
    for label, values in rows:
        print(f"{label:34}" + "".join(f"{v:>{width}}" for v in values))
    default = next((r for r in results if r.design == "prefect"), None)
    cold = next((r for r in results if r.design == "prefect-cold"), None)
    if default is None:
        return
    print("\ntargets on the default backend (prefect):")
    measured = {
        "p50_s": default.p50_s,
        "p95_s": default.p95_s,
        "burst_20_s": default.bursts_s.get(20, float("nan")),
        "burst_200_s": default.bursts_s.get(200, float("nan")),
        "model_copies": default.model_copies,
    }
    for name, target in TARGETS.items():
        value = measured[name]
        met = "met" if value <= target else "NOT met"
        ratio = ""
        if cold is not None and name != "model_copies":
            before = {"p50_s": cold.p50_s, "p95_s": cold.p95_s}.get(
                name,
                cold.bursts_s.get(int(name.split("_")[1]) if "burst" in name else 0, float("nan")),
            )
            ratio = (
                f"   (previous design {before:.2f}, {before / value:.1f}x faster)" if value else ""
            )
        print(f"  {name:14} {value:8.2f}  target <= {target:<6} {met}{ratio}")

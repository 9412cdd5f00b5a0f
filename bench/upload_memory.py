"""Server memory while a large upload streams in: ingestflow's upload route against a plain
FastAPI ``UploadFile`` route, each in its own ``uvicorn`` process writing to the same disk.

Usage::

    .venv/bin/python -m bench.upload_memory [--size-mb 1024] [--chunk-kb 1024]
        [--out bench/results/upload_memory.json] [--prefect-api-url URL] [--workdir DIR]
    .venv/bin/python bench/upload_memory.py ...          (the same)

What runs:

- The database is ``DATABASE_URL`` when set (pgvector must be installed there), otherwise an
  embedded pgserver Postgres in a temp folder, deleted afterwards. The bench migrates it and
  creates an API key for a tenant ``bench``; each run uses a fresh collection.
- **ingestflow**: ``uvicorn api.app:app``, the upload store a temp folder
  (``INGESTFLOW_API_UPLOAD_URI``), ``INGESTFLOW_API_MAX_UPLOAD_BYTES`` 64 MiB above the
  upload, the Prefect queue backend. Without ``--prefect-api-url`` the Prefect API is a port
  nobody listens on: the route streams the file into the store, writes the ``queued``
  document row, then answers 503 (backend unavailable), which is the whole upload path. With
  ``--prefect-api-url`` the job is submitted there (202 if the ingest deployment exists).
- **UploadFile**: ``uvicorn bench.upload_memory:create_baseline_app --factory``, a route
  taking ``file: UploadFile`` (Starlette parses the form first, spooling the file to a
  temporary file) that then copies it into its folder, hashing and fsyncing as ingestflow's
  store does. Both processes have ``TMPDIR`` in the same temp folder, so all spooling and
  storing hits the same disk.

For each server: one 4 MiB warm-up upload (imports, pools, the Prefect client), one second of
idle sampling for the baseline RSS, then the measured upload while the server's RSS is
sampled every 50 ms (psutil). The kernel's own high-water mark (VmHWM, reset through
``/proc/PID/clear_refs`` after the warm-up when permitted) is reported too: it catches a peak
between two samples. The client streams the multipart body from a generator (never whole in
memory) with a Content-Length, as a browser does. The body is non-repeating: a seeded random
1 MiB block XORed with a per-chunk key. Its sha256 is computed in a pass before the upload,
so the client's sending loop stays cheap, and compared afterwards with the stored file (and,
for ingestflow, with the document row's sha256 and size).

Prints one table and the ratios, and writes the JSON result to ``--out``.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(REPO))

from bench.pg import database  # noqa: E402

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.05
WARMUP_BYTES = 4 * MIB
TENANT = "bench"


# --------------------------------------------------------------------------------------------
# The baseline server: a plain FastAPI route with UploadFile
# --------------------------------------------------------------------------------------------


def create_baseline_app() -> Any:
    """FastAPI app with ``POST /upload`` (``file: UploadFile``) copying into BENCH_UPLOAD_DIR."""
    from fastapi import FastAPI, UploadFile
    from fastapi.concurrency import run_in_threadpool

    folder = Path(os.environ["BENCH_UPLOAD_DIR"])
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/upload")
    async def upload(file: UploadFile) -> dict[str, Any]:
        target = folder / uuid.uuid4().hex / "upload.bin"
        size, sha256 = await run_in_threadpool(_copy_into, file.file, target)
        await file.close()
        return {"path": str(target), "size": size, "sha256": sha256}

    return app


def _copy_into(source: BinaryIO, target: Path) -> tuple[int, str]:
    """Copy, hash and fsync, as ingestflow's local store does."""
    target.parent.mkdir(parents=True)
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while block := source.read(MIB):
            digest.update(block)
            size += len(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The body: generated, non-repeating, streamed
# --------------------------------------------------------------------------------------------


def body_blocks(size: int, chunk: int, seed: int) -> Iterator[bytes]:
    """``size`` bytes in blocks of ``chunk``: a random block XORed with a key per block, so no
    two blocks are equal and a lost or repeated block changes the digest."""
    import numpy as np

    words = -(-chunk // 8)
    base = np.random.default_rng(seed).integers(0, 2**63, size=words, dtype=np.uint64)
    sent, index = 0, 0
    while sent < size:
        key = np.uint64((index * 0x9E3779B97F4A7C15 + seed) % 2**64)
        block = (base ^ key).tobytes()[: min(chunk, size - sent)]
        sent += len(block)
        index += 1
        yield block


def body_sha256(size: int, chunk: int, seed: int) -> str:
    digest = hashlib.sha256()
    for block in body_blocks(size, chunk, seed):
        digest.update(block)
    return digest.hexdigest()


def multipart(filename: str, size: int, chunk: int, seed: int) -> tuple[Iterator[bytes], int, str]:
    """A one-file form (field ``file``) as a generator, its total length and content type."""
    boundary = f"----WebKitFormBoundary{uuid.uuid4().hex[:16]}"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def blocks() -> Iterator[bytes]:
        yield head
        yield from body_blocks(size, chunk, seed)
        yield tail

    return blocks(), len(head) + size + len(tail), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------------------------
# Measuring a server process
# --------------------------------------------------------------------------------------------


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._proc.memory_info().rss)
            self._stop.wait(self._interval)


def reset_peak(pid: int) -> bool:
    """Reset the kernel's VmHWM for ``pid`` (Linux, own process or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS of ``pid`` in bytes (VmHWM), if readable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def idle_rss(pid: int, seconds: float = 1.0) -> int:
    with RssSampler(pid) as sampler:
        time.sleep(seconds)
    return int(statistics.median(sampler.samples))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def uvicorn_server(
    target: str, env: dict[str, str], log: Path, *, factory: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m uvicorn target`` on a free port; yields the process and its base URL."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log"] + (["--factory"] if factory else [])
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{target} exited early:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not answer /healthz within 120 s")
            time.sleep(0.2)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post_stream(url: str, headers: dict[str, str], size: int, chunk: int, seed: int) -> Any:
    """POST a generated upload of ``size`` bytes; returns (response, seconds)."""
    import httpx

    blocks, length, content_type = multipart("bench.bin", size, chunk, seed)
    headers = {**headers, "Content-Type": content_type, "Content-Length": str(length)}
    started = time.perf_counter()
    with httpx.Client(timeout=httpx.Timeout(900.0)) as client:
        response = client.post(url, content=blocks, headers=headers)
    return response, time.perf_counter() - started


def measure(
    pid: int, url: str, headers: dict[str, str], *, size: int, chunk: int, seed: int
) -> dict[str, Any]:
    """Warm up, take the idle baseline, then upload while sampling; RSS figures in bytes."""
    warm, _ = post_stream(url, headers, WARMUP_BYTES, chunk, seed + 1)
    hwm_reset = reset_peak(pid)
    baseline = idle_rss(pid)
    with RssSampler(pid) as sampler:
        response, seconds = post_stream(url, headers, size, chunk, seed)
    peak = max(sampler.samples)
    hwm = vm_hwm(pid) if hwm_reset else None
    growth = peak - baseline
    return {
        "warmup_status": warm.status_code,
        "status": response.status_code,
        "response": _short(response),
        "seconds": round(seconds, 2),
        "throughput_mib_s": round(size / MIB / seconds, 1),
        "baseline_rss": baseline,
        "peak_rss": peak,
        "growth": growth,
        "growth_fraction": round(growth / size, 5),
        "kernel_peak_rss": hwm,
        "kernel_growth": None if hwm is None else hwm - baseline,
        "rss_after": idle_rss(pid),
        "samples": len(sampler.samples),
    }


def _short(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


# --------------------------------------------------------------------------------------------
# The two runs
# --------------------------------------------------------------------------------------------


def api_key(database_url: str) -> str:
    """Migrate the database and create a key for the bench tenant."""
    os.environ["DATABASE_URL"] = database_url
    from storage.api_keys import create_key
    from storage.db import connection
    from storage.migrate import upgrade

    upgrade()
    with connection() as conn:
        return create_key(conn, tenant=TENANT, name="upload-memory-bench").secret


def document_row(collection: str) -> dict[str, Any] | None:
    from storage.db import connection

    with connection() as conn:
        row = conn.execute(
            "SELECT d.source_uri, d.sha256, d.size_bytes, d.status FROM documents d"
            " JOIN collections c ON c.id = d.collection_id WHERE c.tenant = %s AND c.name = %s"
            " ORDER BY d.created_at DESC LIMIT 1",  # the measured upload, not the warm-up
            (TENANT, collection),
        ).fetchone()
    return dict(row) if row else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def run_ingestflow(args: argparse.Namespace, work: Path, db_url: str, expected: str) -> dict:
    from storage.objectstore import local_path

    store = work / "ingestflow-uploads"
    store.mkdir()
    prefect = args.prefect_api_url or f"http://127.0.0.1:{free_port()}/api"  # nobody there
    env = {
        "DATABASE_URL": db_url,
        "INGESTFLOW_API_UPLOAD_URI": store.as_uri(),
        "INGESTFLOW_API_MAX_UPLOAD_BYTES": str(args.size + 64 * MIB),
        "INGESTFLOW_QUEUE_BACKEND": "prefect",
        "PREFECT_API_URL": prefect,
        "PREFECT_HOME": str(work / "prefect-home"),
        "TMPDIR": str(work / "tmp"),
    }
    headers = {"Authorization": f"Bearer {api_key(db_url)}"}
    collection = f"bench_{uuid.uuid4().hex[:12]}"
    path = f"/v1/collections/{collection}/documents"
    with uvicorn_server("api.app:app", env, work / "ingestflow.log") as (proc, url):
        result = measure(
            proc.pid, url + path, headers, size=args.size, chunk=args.chunk, seed=args.seed
        )
    row = document_row(collection)
    result["document_row"] = row
    stored = local_path(row["source_uri"]) if row else None
    result["stored_sha256_ok"] = bool(stored and file_sha256(stored) == expected)
    result["row_ok"] = bool(row and row["sha256"] == expected and row["size_bytes"] == args.size)
    result["queue"] = "prefect at " + (
        "--prefect-api-url" if args.prefect_api_url else "a dead port"
    )
    return result


def run_uploadfile(args: argparse.Namespace, work: Path, expected: str) -> dict:
    store = work / "uploadfile-uploads"
    store.mkdir()
    env = {"BENCH_UPLOAD_DIR": str(store), "TMPDIR": str(work / "tmp")}
    target = "bench.upload_memory:create_baseline_app"
    with uvicorn_server(target, env, work / "uploadfile.log", factory=True) as (proc, url):
        result = measure(
            proc.pid, url + "/upload", {}, size=args.size, chunk=args.chunk, seed=args.seed
        )
    body = result["response"]
    stored = Path(body["path"]) if isinstance(body, dict) and "path" in body else None
    result["stored_sha256_ok"] = bool(stored and file_sha256(stored) == expected)
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    def mib(value: int | None) -> str:
        return "n/a" if value is None else f"{value / MIB:,.1f}"

    rows = [
        "| server | status | baseline RSS MiB | peak RSS MiB (sampled / kernel) | growth MiB |"
        " growth / upload | MiB/s | stored sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['status']} | {mib(r['baseline_rss'])} | {mib(r['peak_rss'])} /"
            f" {mib(r['kernel_peak_rss'])} | {mib(r['growth'])} | {r['growth_fraction']:.2%} |"
            f" {r['throughput_mib_s']} | {'ok' if r['stored_sha256_ok'] else 'MISMATCH'} |"
        )
    return "\n".join(rows)


def ratios(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else round(a / b, 2)

    return {
        "growth_ingestflow_over_uploadfile": ratio(ours["growth"], base["growth"]),
        "kernel_growth_ingestflow_over_uploadfile": ratio(
            ours["kernel_growth"], base["kernel_growth"]
        ),
        "throughput_ingestflow_over_uploadfile": ratio(
            ours["throughput_mib_s"], base["throughput_mib_s"]
        ),
    }


def machine() -> dict[str, Any]:
    import psutil

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="upload size in MiB")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="client write size in KiB")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/upload_memory.json")
    parser.add_argument("--prefect-api-url", help="submit the job there (default: nowhere)")
    parser.add_argument("--workdir", type=Path, help="parent of the temp folder (same disk)")
    args = parser.parse_args(argv)
    args.size, args.chunk = args.size_mb * MIB, args.chunk_kb * 1024
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"generating the sha256 of a {args.size_mb} MiB body ...", flush=True)
    expected = body_sha256(args.size, args.chunk, args.seed)
    work = Path(tempfile.mkdtemp(prefix="ingestflow-bench-upload-", dir=args.workdir))
    (work / "tmp").mkdir()
    try:
        with database() as db_url:
            print("ingestflow route ...", flush=True)
            ours = run_ingestflow(args, work, db_url, expected)
            print("UploadFile route ...", flush=True)
            base = run_uploadfile(args, work, expected)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"ingestflow (streaming)": ours, "FastAPI UploadFile": base}
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.upload_memory", *sys.argv[1:]]
        ),
        "machine": machine(),
        "upload_bytes": args.size,
        "client_chunk_bytes": args.chunk,
        "body_sha256": expected,
        "results": results,
        "ratios": ratios(ours, base),
    }
    print()
    print(table(results))
    print()
    for name, value in summary["ratios"].items():
        print(f"{name}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    if not (ours["stored_sha256_ok"] and ours["row_ok"] and base["stored_sha256_ok"]):
        sys.exit("a stored object does not match the body sent")


if __name__ == "__main__":
    main()

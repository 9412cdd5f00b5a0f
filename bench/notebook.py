"""``python -m bench notebook``: a notebook's ``ingest()`` with no Prefect server running,
in Prefect's ephemeral mode against the background server ingestflow starts on first use.

Each call is a fresh Python process (as a notebook kernel is) ingesting the same SciFact
documents into a new collection, with the OpenAI-compatible test server as the embedder so
the model is out of the picture. The background design's first call includes starting the
server (and creating its database); the later calls reuse it. Prints wall time per call and
the "database is locked" lines each call printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.corpus import write_scifact
from bench.harness import REPO

CHILD = """
import sys
from ingestflow import ingest
result = ingest([sys.argv[1]], collection=sys.argv[2])
failed = len(result.failed)
print("INDEXED", result.count("indexed"), "FAILED", failed)
"""


def _call(env: dict[str, str], folder: Path) -> tuple[float, int, str]:
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), f"nb-{uuid.uuid4().hex[:8]}"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"the notebook call failed:\n{proc.stderr[-3000:]}")
    outcome = next(line for line in proc.stdout.splitlines() if line.startswith("INDEXED"))
    return took, proc.stderr.count("database is locked"), outcome


def main(argv: list[str] | None = None) -> None:
    from tests.support.openai_server import run_openai_server
    from tests.support.processes import free_port

    parser = argparse.ArgumentParser(prog="python -m bench notebook", description=__doc__)
    parser.add_argument("--documents", type=int, default=500)
    parser.add_argument("--calls", type=int, default=3, help="calls per design")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ingestflow-bench-notebook-") as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        write_scifact(folder, limit=args.documents)
        port = free_port()
        with run_openai_server(dimension=1536) as server:
            base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            base |= {
                "XDG_DATA_HOME": f"{tmp}/data",
                "INGESTFLOW_QUEUE_PREFECT_PORT": str(port),
                "INGESTFLOW_EMBED_PROVIDER": "openai",
                "INGESTFLOW_EMBED_OPENAI_BASE_URL": server.base_url,
                "INGESTFLOW_EMBED_OPENAI_API_KEY": "bench",
                "INGESTFLOW_EMBED_MODEL": "text-embedding-3-small",
            }
            rows: dict[str, list[tuple[float, int, str]]] = {}
            try:
                for design in ("ephemeral", "background"):
                    env = base | {"INGESTFLOW_QUEUE_PREFECT_SERVER": design}
                    rows[design] = []
                    for n in range(args.calls):
                        rows[design].append(_call(env, folder))
                        took, locked, outcome = rows[design][-1]
                        print(f"{design} call {n + 1}: {took:.2f} s, {outcome}, locked {locked}")
            finally:
                stop = [str(Path(sys.executable).with_name("ingestflow")), "prefect", "stop"]
                subprocess.run(stop, env=base, capture_output=True, timeout=60)
    _report(rows, args.documents)


def _report(rows: dict[str, list[tuple[float, int, str]]], documents: int) -> None:
    ephemeral = [took for took, _, _ in rows["ephemeral"]]
    later = [took for took, _, _ in rows["background"][1:]] or [rows["background"][0][0]]
    print(f"\n{documents} documents per call")
    print(f"{'':30} {'ephemeral':>10} {'background':>11}")
    first_bg = rows["background"][0][0]
    print(f"{'first call, s':30} {ephemeral[0]:>10.2f} {first_bg:>11.2f}")
    print(
        f"{'later calls, median s':30} {statistics.median(ephemeral[1:] or ephemeral):>10.2f}"
        f" {statistics.median(later):>11.2f}"
    )
    locks = {d: sum(lk for _, lk, _ in r) for d, r in rows.items()}
    print(f"{'database is locked lines':30} {locks['ephemeral']:>10} {locks['background']:>11}")
    ratio = statistics.median(ephemeral[1:] or ephemeral) / statistics.median(later)
    print(f"later calls: background is {ratio:.2f}x faster than ephemeral")

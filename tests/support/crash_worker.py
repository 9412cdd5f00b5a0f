"""A worker process for crash tests: runs ``flows.ingest_batch`` until it finishes or is killed.

    python -m tests.support.crash_worker --collection NAME --batch-size 5 --sources LIST_FILE

LIST_FILE holds one source per line. Everything else comes from the environment, as for any
ingestflow process: DATABASE_URL, PREFECT_API_URL (the test harness's server), PREFECT_HOME,
INGESTFLOW_EMBED_PROVIDER / INGESTFLOW_EMBED_MODEL, OPENAI_BASE_URL / OPENAI_API_KEY. The
worker prints one line per completed micro-batch on stdout, and exits 0 when the flow
completes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--sources", type=Path, required=True, help="file with one source a line")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.read_text(encoding="utf-8").splitlines() if s.strip()]

    from flows import ingest_batch
    from ingestflow.progress import listen

    with listen(lambda p: print(f"done {p.done}/{p.total}", flush=True)):
        result = ingest_batch(sources, collection=args.collection, batch_size=args.batch_size)
    print(f"finished {len(result.outcomes)} documents", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A worker process for crash tests: runs ``flows.ingest_batch`` until it finishes or is killed.

    python -m tests.support.crash_worker --collection NAME --batch-size 5 --sources LIST_FILE
        [--trace-stages] [--die-at POINT:N]

LIST_FILE holds one source per line. Everything else comes from the environment, as for any
ingestflow process: DATABASE_URL, PREFECT_API_URL (the test harness's server), PREFECT_HOME,
INGESTFLOW_EMBED_PROVIDER / INGESTFLOW_EMBED_MODEL, OPENAI_BASE_URL / OPENAI_API_KEY. The
worker prints one line per completed micro-batch on stdout, and exits 0 when the flow
completes.

``--trace-stages`` prints ``start STAGE`` and ``end STAGE`` around every stage task's body,
so after a kill the last line of the log names the stage the worker was in.

``python -m tests.support.crash_worker --zygote`` imports once and forks a worker per
request (see ``zygote``), for tests that start many.

``--die-at POINT:N`` makes the worker SIGKILL itself the Nth time it reaches ``POINT`` (see
``FAULT_POINTS``): exactly what an outside ``kill -9`` landing at that instruction does (no
``finally``, no atexit, no flushing of Prefect's event queue), but at a chosen stage.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Stage tasks by name: (module, task attribute).
STAGE_TASKS = {
    "fetch": ("tasks.fetch", "fetch_task"),
    "hash": ("tasks.fetch", "hash_task"),
    "dedupe": ("tasks.dedupe", "dedupe_task"),
    "parse": ("tasks.parse", "parse_task"),
    "chunk": ("tasks.chunk", "chunk_task"),
    "embed": ("tasks.embed", "embed_task"),
    "upsert": ("tasks.upsert", "upsert_task"),
}
# Where ``--die-at`` can strike. ``STAGE:start`` is inside the stage's task run before any
# work (the server has seen it start); ``STAGE:end`` is after its work, before the task run
# returns (``dedupe:end``: claims committed; ``embed:end``: vectors cached but not written;
# ``upsert:end``: chunks committed). ``upsert:in-transaction`` is inside the upsert's
# transaction: old chunks deleted and new ones copied in, nothing committed yet.
FAULT_POINTS = (
    *(f"{stage}:{when}" for stage in STAGE_TASKS for when in ("start", "end")),
    "upsert:in-transaction",
)


def _die(point: str) -> None:
    print(f"dying at {point}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap_task(stage: str, before: Callable[[], None], after: Callable[[], None]) -> None:
    """Run ``before``/``after`` around the body of ``stage``'s task (the Task object is shared
    by every module that imported it, so changing its ``fn`` reaches the flow)."""
    import importlib

    module, name = STAGE_TASKS[stage]
    task = getattr(importlib.import_module(module), name)
    real = task.fn

    @functools.wraps(real)  # Prefect binds the call's parameters by this signature
    def traced(*args: Any, **kwargs: Any) -> Any:
        before()
        result = real(*args, **kwargs)
        after()
        return result

    task.fn = traced


def trace_stages() -> None:
    """Print ``start STAGE`` / ``end STAGE`` around every stage task's body."""
    for stage in STAGE_TASKS:
        _wrap_task(
            stage,
            functools.partial(print, f"start {stage}", flush=True),
            functools.partial(print, f"end {stage}", flush=True),
        )


def arm(point: str, nth: int) -> None:
    """SIGKILL this process the ``nth`` time (1-based) ``point`` is reached."""
    if point not in FAULT_POINTS:
        raise SystemExit(f"unknown fault point {point!r}; known: {', '.join(FAULT_POINTS)}")
    calls = itertools.count(1)

    def reached() -> None:
        if next(calls) == nth:
            _die(f"{point}:{nth}")

    if point == "upsert:in-transaction":
        import storage.documents

        mark = storage.documents.mark_indexed  # called after the COPY, before the commit

        def dying_mark(*args: Any, **kwargs: Any) -> None:
            reached()
            mark(*args, **kwargs)

        storage.documents.mark_indexed = dying_mark
        return
    stage, when = point.split(":")
    noop = lambda: None  # noqa: E731
    _wrap_task(stage, reached if when == "start" else noop, reached if when == "end" else noop)


def zygote() -> int:
    """Import the flows once, then fork one worker per request: a trial costs a fork instead
    of a fresh interpreter importing Prefect (~4 s here). Safe to fork: nothing has started a
    thread yet (the Prefect client starts its threads in the child, on first use).

    Each stdin line is JSON ``{"argv": [...], "env": {...}, "log": PATH}``; the zygote answers
    ``pid N`` when the child runs, then ``exit N CODE`` when it has ended (CODE as
    ``Popen.returncode``: -9 for SIGKILL). One child at a time; EOF ends the zygote.
    """
    import flows  # noqa: F401 - imported before forking, which is the point
    import ingestflow.core.progress  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


def _child(request: dict[str, Any]) -> None:
    code = 1
    try:
        os.environ.update(request["env"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        code = main(request["argv"])
    except BaseException:  # noqa: BLE001 - reported in the child's log, never to the zygote
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--sources", type=Path, required=True, help="file with one source a line")
    parser.add_argument("--trace-stages", action="store_true", help="print stage starts/ends")
    parser.add_argument("--die-at", metavar="POINT:N", help="SIGKILL self at the Nth POINT")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.read_text(encoding="utf-8").splitlines() if s.strip()]

    from flows import ingest_batch
    from ingestflow.core.progress import listen

    if args.die_at:
        point, _, nth = args.die_at.rpartition(":")
        arm(point, int(nth))
    if args.trace_stages:  # outside the fault, so "start STAGE" shows before a death at start
        trace_stages()
    with listen(lambda p: print(f"done {p.done}/{p.total}", flush=True)):
        result = ingest_batch(sources, collection=args.collection, batch_size=args.batch_size)
    print(f"finished {len(result.outcomes)} documents", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(zygote() if sys.argv[1:] == ["--zygote"] else main())

"""Shared pieces of the fault-injection tests: a seeded corpus, the crash worker, and the one
SQL check of the final state against a clean ingest.

Every scenario ends with ``exact_state_problems(collection, reference=clean)``: the
consistency checks of ``tests.support.db`` plus, per document, the same status class, chunk
count, chunk hashes and vectors as a clean ingest of the same files into ``clean``. An empty
list means the state is exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.db import consistency_problems

REPO = Path(__file__).resolve().parents[2]
SEED_ENV = "INGESTFLOW_FAULT_SEED"

_VOCABULARY = (
    "river",
    "stone",
    "lantern",
    "copper",
    "harbor",
    "meadow",
    "signal",
    "thunder",
    "velvet",
    "orbit",
    "glacier",
    "ember",
    "compass",
    "willow",
    "falcon",
    "quartz",
    "saddle",
    "beacon",
    "prism",
    "canyon",
    "ledger",
    "mosaic",
    "tundra",
    "cobalt",
)


def fault_seed() -> int:
    """The run's seed: ``INGESTFLOW_FAULT_SEED`` to replay a run, otherwise a new one (printed
    by the tests and named in their failure messages)."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value else random.SystemRandom().randrange(1, 2**31)


def make_corpus(
    folder: Path, nonce: str, *, count: int = 100, min_chars: int = 300, max_chars: int = 2200
) -> list[Path]:
    """``count`` small, distinct text files (1-3 chunks at the default 1000/200 chunking).

    ``nonce`` goes into every paragraph: the vector cache is shared by the test session, so
    fresh text keeps the first embedding of each chunk a real request.
    """
    rng = random.Random(nonce)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        target = rng.randint(min_chars, max_chars)
        paragraphs: list[str] = []
        while sum(map(len, paragraphs)) < target:
            words = " ".join(rng.choice(_VOCABULARY) for _ in range(rng.randint(15, 45)))
            paragraphs.append(f"Doc {i} {nonce}: {words}.")
        path = folder / f"doc-{i:03d}.txt"
        path.write_text("\n\n".join(paragraphs), encoding="utf-8")
        paths.append(path)
    return paths


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment (DATABASE_URL, embedder settings from the ``pipeline``
    fixture, PREFECT_HOME) plus the Prefect API and the repository on the path."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL")
    assert api_url, "no Prefect server: use the prefect_server (or pipeline) fixture"
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    for name in ("DATABASE_URL", "PREFECT_HOME", "INGESTFLOW_EMBED_PROVIDER", "OPENAI_BASE_URL"):
        assert env.get(name), f"{name} is not set"
    env.update(extra)
    return env


def start_crash_worker(
    *,
    folder: Path,
    collection: str,
    paths: Sequence[Path],
    batch_size: int,
    log: Path,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m tests.support.crash_worker`` over ``paths``, its output in ``log``."""
    command = _worker_argv(folder, collection, paths, batch_size, options)
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env or worker_env(), stdout=out, stderr=subprocess.STDOUT
        )


def zygote_env(prefect_api_url: str) -> dict[str, str]:
    """What a zygote needs before it imports Prefect (whose settings it reads at import); the
    rest comes with each request."""
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=prefect_api_url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


class Zygote:
    """``crash_worker --zygote``: forks crash workers from one process that imported the flows
    once. ``spawn`` starts one and returns it; one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "tests.support.crash_worker", "--zygote"]
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="zygote-reader").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())
        self._lines.put("eof")

    def next_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the zygote said nothing for {timeout:.0f} s") from None
        if line == "eof":
            raise AssertionError(f"the zygote exited ({self.proc.wait()})")
        return line

    def spawn(
        self,
        *,
        folder: Path,
        collection: str,
        paths: Sequence[Path],
        batch_size: int,
        log: Path,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> ForkedWorker:
        """A crash worker over ``paths`` (as ``start_crash_worker``), forked."""
        argv = _worker_argv(folder, collection, paths, batch_size, options)[3:]
        request = {"argv": argv, "env": env or worker_env(), "log": str(log)}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        word, pid = self.next_line(timeout=60).split()
        assert word == "pid", word
        return ForkedWorker(self, int(pid))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ForkedWorker:
    """A zygote's child, with the parts of ``Popen`` the tests use."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(queue.Empty):
                self._take(self.zygote._lines.get_nowait())
        return self.returncode

    def wait(self, timeout: float) -> int:
        if self.returncode is None:
            self._take(self.zygote.next_line(timeout))
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def _take(self, line: str) -> None:
        word, pid, code = line.split()
        assert (word, int(pid)) == ("exit", self.pid), line
        self.returncode = int(code)


def _worker_argv(
    folder: Path,
    collection: str,
    paths: Sequence[Path],
    batch_size: int,
    options: Sequence[str],
) -> list[str]:
    listing = folder / f"{collection}.sources"
    listing.write_text("\n".join(str(p) for p in paths), encoding="utf-8")
    command = [sys.executable, "-m", "tests.support.crash_worker", "--collection", collection]
    return command + ["--batch-size", str(batch_size), "--sources", str(listing), *options]


def status_counts(conn: Any, collection: str) -> dict[str, int]:
    """Documents of ``collection`` by status, on a connection of the caller's (so polling
    does not go through the pool of the process under test)."""
    rows = conn.execute(
        "SELECT d.status, count(*) FROM documents d JOIN collections c"
        " ON c.id = d.collection_id WHERE c.name = %s GROUP BY d.status",
        (collection,),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.01,
) -> Any:
    """Poll ``predicate`` until it is truthy; fail on timeout or when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not alive():
            raise AssertionError(f"the process under test ended before {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# The exact check -------------------------------------------------------------------------

_PER_DOCUMENT = """
WITH per_doc AS (
    SELECT c.name AS coll, d.source_uri,
           d.status IN ('indexed', 'unchanged') AND d.error IS NULL AS done,
           count(k.id) AS chunks,
           md5(coalesce(string_agg(k.ordinal || ':' || k.content_hash || ':' || k.embedding::text,
                                   ',' ORDER BY k.ordinal), '')) AS digest
    FROM documents d JOIN collections c ON c.id = d.collection_id
    LEFT JOIN chunks k ON k.document_id = d.id
    WHERE c.name IN (%(got)s, %(want)s) AND d.status <> 'deleted'
    GROUP BY c.name, d.source_uri, d.status, d.error
)
SELECT source_uri, g.done AS got_done, g.chunks AS got, w.done AS want_done, w.chunks AS want,
       g.digest IS DISTINCT FROM w.digest AS content_differs
FROM (SELECT * FROM per_doc WHERE coll = %(got)s) g
FULL JOIN (SELECT * FROM per_doc WHERE coll = %(want)s) w USING (source_uri)
WHERE g.done IS DISTINCT FROM w.done OR g.chunks IS DISTINCT FROM w.chunks
   OR g.digest IS DISTINCT FROM w.digest
ORDER BY source_uri
"""


def reference_problems(collection: str, *, reference: str) -> list[str]:
    """Per live document (by source URI): done-or-not, chunk count, and every chunk's ordinal,
    content hash and vector as in ``reference``. One line per difference."""
    from storage.db import connection

    with connection() as conn:
        rows = conn.execute(_PER_DOCUMENT, {"got": collection, "want": reference}).fetchall()
    return [
        f"{r['source_uri'].rsplit('/', 1)[-1]}: done {r['got_done']} vs {r['want_done']},"
        f" {r['got']} chunks vs {r['want']}" + (", content differs" if r["content_differs"] else "")
        for r in rows
    ]


def exact_state_problems(collection: str, *, reference: str) -> list[str]:
    """Everything wrong with ``collection``'s final state: the consistency checks (counts,
    duplicates, orphans, nothing left ``processing``) and any document that differs from the
    clean ingest ``reference``. Empty when exact."""
    return consistency_problems(collection) + reference_problems(collection, reference=reference)


def clean_ingest(paths: Sequence[Path | str], *, collection: str, batch_size: int) -> None:
    """Ingest ``paths`` in this process into a fresh collection: the reference state. Every
    document must end indexed."""
    from ingestflow import ingest

    result = ingest(list(paths), collection=collection, batch_size=batch_size)
    statuses = {str(o.status) for o in result.outcomes}
    assert statuses == {"indexed"}, f"the clean ingest was not clean: {statuses}"


def stage_retries(collection: str, *, task_runs: int, timeout: float = 60.0) -> dict[str, int]:
    """Retries of the stage task runs of the ingest flow run(s) into ``collection``, by stage,
    read back from the Prefect server once all ``task_runs`` are recorded as completed (task
    run states reach the server as events, a little after the run ends)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    def completed_runs() -> list[Any] | None:
        with get_client(sync_client=True) as client:
            name = FlowRunFilterName(any_=[f"ingest {collection}"])
            # Prefect 3.8's sync client sends nulls the server rejects unless all are given.
            flows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=name), sort=FlowRunSort.ID_DESC, limit=50
            )
            ids = FlowRunFilterId(any_=[f.id for f in flows])
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=ids), sort=TaskRunSort.ID_DESC, limit=200
            )
        done = [r for r in runs if r.state is not None and r.state.is_completed()]
        return runs if len(done) >= task_runs else None

    runs = wait_for(completed_runs, timeout=timeout, what="the task runs", interval=0.5)
    retries: dict[str, int] = {}
    for run in runs:
        if run.run_count > 1:
            stage = run.name.rsplit("-", 1)[0]
            retries[stage] = retries.get(stage, 0) + run.run_count - 1
    return retries

"""One bench run: ingestflow and its peers on the same corpus, embedder and Postgres.

``python -m bench run`` (see ``bench/__main__.py`` for the options) does, in order:

1. starts the shared Postgres (``bench.pg.database``: ``DATABASE_URL`` or an embedded one)
   and one Prefect server for the whole run, on its own database on the machine's Postgres
   (``tests/support/prefect_server.py``, as the tests do; ``--prefect-api-url`` uses a
   running one instead);
2. writes the SciFact corpus once and plans the edits (``bench.corpus``);
3. for each embedder and each system, on a fresh copy of the corpus: runs the protocol's
   phases (``bench/systems/__init__.py``) as subprocesses, measuring each one's peak RSS with
   ``os.wait4``, editing the folder between phases; reads the store once more (a ``final``
   read, untimed) after ``unchanged``, so the chunk texts the 5% change really made new are
   known; judges the final state (``bench.judge``);
4. runs ingestflow alone on the mixed-format corpus (PDFs, Office, HTML, ...);
5. runs the micro-benchmark modules that exist;
6. prints the tables and ratios, and writes the JSON result and PNG plots
   (``bench.harness_report``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from bench import corpus
from bench.judge import judge

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("ingestflow", "langchain", "llamaindex")
EMBEDDERS = ("minilm", "hash")  # run by default; "remote" only when asked for
INDEXING_PHASES = ("first", "unchanged", "change", "delete")
MICRO_MODULES = ("prefect_overhead", "embed_stage", "write_path", "search_latency")
CHUNK_SIZE, CHUNK_OVERLAP, EMBED_BATCH = 1000, 200, 64
DEFAULT_PREFECT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class RemoteAPI:
    """The OpenAI-compatible test server every system's own OpenAI integration calls for
    ``--embedder remote``: per-request latency, a per-token cost, and a tokens-per-minute
    limit enforced over a sliding minute with 429 and Retry-After."""

    latency: float = 0.25
    latency_per_token: float = 0.00001
    tokens_per_minute: int = 1_000_000


@dataclass
class Options:
    docs: int | None = None  # None: the whole corpus
    small: bool = False
    embedders: tuple[str, ...] = EMBEDDERS
    systems: tuple[str, ...] = SYSTEMS
    micro: bool = True
    mixed: bool = True
    out: Path = REPO / "bench" / "results"
    prefect_api_url: str | None = None
    seed: int = corpus.SEED
    remote: RemoteAPI | None = None  # the hosted-style API of ``--embedder remote``

    @property
    def doc_limit(self) -> int | None:
        if self.docs is not None:
            return self.docs
        return corpus.SMALL_DOCS if self.small else None


@dataclass
class PhaseRun:
    """One runner process: its result line, its peak RSS and its whole lifetime."""

    result: dict[str, Any]
    peak_rss_mib: float
    process_seconds: float


class PhaseFailed(RuntimeError):
    pass


@dataclass
class SystemRun:
    system: str
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    change: dict[str, Any] | None = None
    error: str | None = None


def run_phase(command: list[str], env: dict[str, str], log: Path) -> PhaseRun:
    """Run one runner process to its end; peak RSS from ``os.wait4`` (``ru_maxrss`` is KiB on
    Linux, the largest of the process and the children it reaped)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, log.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        stdout.seek(0)
        lines = [line for line in stdout.read().decode().splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise PhaseFailed(f"exit status {proc.returncode}; stderr ({log}) ends:\n{tail}")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise PhaseFailed(f"last stdout line is not JSON: {lines[-1][:200]!r}") from exc
    return PhaseRun(result, usage.ru_maxrss / 1024, elapsed)


class Bench:
    """The state of one run: where things are, and what was measured."""

    def __init__(self, options: Options, database_url: str, prefect_api_url: str, work: Path):
        self.options, self.database_url, self.work = options, database_url, work
        self.env = {
            **os.environ,
            "PREFECT_API_URL": prefect_api_url,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.tag = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        self.base = work / "corpus"
        self.ids = corpus.write_scifact(self.base, options.doc_limit)
        self.plan = corpus.plan_edits(self.ids, seed=options.seed)
        self.commands: dict[str, list[str]] = {}
        self.skipped: dict[str, str] = {}
        self.remote_server: Any = None  # tests/support/openai_server.py, for --embedder remote

    def serve_remote(self, server: Any) -> None:
        """The systems' OpenAI integrations call ``server`` (with a key it does not check)."""
        self.remote_server = server
        self.env |= {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "bench"}

    def prepare_systems(self) -> list[str]:
        """Interpreter and runner of each selected system; a peer that cannot run is skipped
        with the reason."""
        ingestflow_python = REPO / ".venv" / "bin" / "python"
        python = str(ingestflow_python if ingestflow_python.exists() else sys.executable)
        if "ingestflow" in self.options.systems:
            self.commands["ingestflow"] = [
                python,
                str(REPO / "bench" / "systems" / "ingestflow_runner.py"),
            ]
        peers = [s for s in self.options.systems if s != "ingestflow"]
        if peers:
            try:
                peer_python = str(_peer_environment())
            except Exception as exc:  # noqa: BLE001 - reported, and the peers are skipped
                for peer in peers:
                    self.skipped[peer] = f"peer environment unavailable: {exc}"
                peers = []
            for peer in peers:
                runner = REPO / "bench" / "peers" / f"{peer}_runner.py"
                if runner.exists():
                    self.commands[peer] = [peer_python, str(runner)]
                else:
                    self.skipped[peer] = f"{runner.relative_to(REPO)} does not exist"
        return [s for s in self.options.systems if s in self.commands]

    def command(self, system: str, phase: str, folder: Path, collection: str, embedder: str):
        return [
            *self.commands[system],
            "--phase",
            phase,
            "--corpus",
            str(folder),
            "--database-url",
            self.database_url,
            "--collection",
            collection,
            "--embedder",
            embedder,
            "--chunk-size",
            str(CHUNK_SIZE),
            "--chunk-overlap",
            str(CHUNK_OVERLAP),
            "--batch-size",
            str(EMBED_BATCH),
        ]

    def run_system(self, system: str, embedder: str) -> SystemRun:
        """All phases of one system on its own copy of the corpus."""
        run = SystemRun(system)
        folder = self.work / f"{embedder}-{system}"
        shutil.copytree(self.base, folder)
        collection = f"bench_{self.tag}_{embedder}_{system}"

        def phase(name: str, step: str | None = None) -> PhaseRun:
            step = step or name
            log = self.work / "logs" / f"{embedder}-{system}-{step}.log"
            print(f"  {system:<11} {step:<10}", end=" ", flush=True)
            done = run_phase(
                self.command(system, name, folder, collection, embedder), self.env, log
            )
            r = done.result
            if name != "final":
                print(
                    f"{r['seconds']:8.2f} s  {r['docs']:>6} docs  {r['embedded_chunks']:>7}"
                    f" embedded  {done.peak_rss_mib:7.0f} MiB",
                    flush=True,
                )
            else:
                print(f"{len(r['chunks']):>8} chunks stored", flush=True)
            return done

        remote: dict[str, Any] = {}
        try:
            for name in INDEXING_PHASES:
                if name == "change":
                    before = phase("final", "snapshot").result["chunks"]
                    corpus.apply_changes(folder, self.plan)
                if name == "delete":
                    corpus.apply_deletes(folder, self.plan)
                if embedder == "remote" and name == "first":
                    self._fresh_remote_minute()
                done = phase(name)
                run.phases[name] = _phase_record(done)
                if embedder == "remote" and name == "first":
                    remote = self._remote_use()
            final = phase("final")
        except PhaseFailed as exc:
            run.error = str(exc)
            print(f"FAILED\n{exc}", flush=True)
            return run
        chunks = final.result["chunks"]
        run.final = {
            **({"remote_first_ingest": remote} if remote else {}),
            **judge(chunks, folder).as_dict(),
            "peak_rss_mib": final.peak_rss_mib,
            **{k: v for k, v in final.result.items() if k not in ("chunks", "system", "phase")},
        }
        run.change = change_accounting(before, chunks, self.plan, run.phases["change"])
        return run

    def _fresh_remote_minute(self) -> None:
        """A fresh server minute (nothing admitted yet) with the configured latency and limit."""
        api = self.options.remote or RemoteAPI()
        self.remote_server.reset()
        self.remote_server.configure(
            latency=api.latency,
            latency_per_token=api.latency_per_token,
            tokens_per_window=api.tokens_per_minute,
            limit_window=60.0,
        )

    def _remote_use(self) -> dict[str, Any]:
        """The first ingest's requests, 429s and use of the limit, as the server saw them."""
        from bench.remote import limit_use

        api = self.options.remote or RemoteAPI()
        records = self.remote_server.stats().records
        tokens, utilisation, inside = limit_use(records, api.tokens_per_minute)
        use = {
            "requests": len(records),
            "refused_429": sum(1 for r in records if r.status == 429),
            "tokens": tokens,
            "limit_used": round(utilisation, 3) if utilisation else None,
            "inside_retry_after": inside,
        }
        limit = f"{utilisation:.0%} of the limit" if utilisation else "the limit did not bind"
        print(
            f"    {use['requests']} requests, {use['refused_429']} 429s, {tokens} tokens,"
            f" {limit}, {inside} inside a Retry-After",
            flush=True,
        )
        return use

    def run_mixed_formats(self, embedder: str) -> dict[str, Any]:
        """ingestflow alone on the PDFs and Office/HTML/CSV/JSON files: a first ingest."""
        folder = self.work / f"{embedder}-mixed"
        names = corpus.write_mixed_formats(folder)
        collection = f"bench_{self.tag}_{embedder}_mixed"
        log = self.work / "logs" / f"{embedder}-mixed-first.log"
        print(f"  {'ingestflow':<11} {'mixed':<10}", end=" ", flush=True)
        try:
            command = self.command("ingestflow", "first", folder, collection, embedder)
            done = run_phase(command, self.env, log)
        except PhaseFailed as exc:
            print(f"FAILED\n{exc}", flush=True)
            return {"files": len(names), "error": str(exc)}
        record = _phase_record(done)
        print(
            f"{record['seconds']:8.2f} s  {record['docs']:>6} files"
            f"  {record['report']['failed']:>3} failed  {done.peak_rss_mib:7.0f} MiB",
            flush=True,
        )
        return {"files": len(names), **record}

    def run_micro(self) -> dict[str, Any]:
        """Each micro-benchmark module that exists, as ``python -m bench.<name> --json OUT``."""
        results: dict[str, Any] = {}
        python = self.commands.get("ingestflow", [sys.executable])[0]
        for name in MICRO_MODULES:
            if not (REPO / "bench" / f"{name}.py").exists():
                results[name] = {"skipped": f"bench/{name}.py does not exist"}
                continue
            out = self.work / f"micro-{name}.json"
            command = [python, "-m", f"bench.{name}", "--json", str(out)]
            if self.options.small or self.options.docs is not None:
                command.append("--small")
            print(f"  micro-benchmark {name} ...", flush=True)
            log = self.work / "logs" / f"micro-{name}.log"
            with log.open("wb") as fh:
                code = subprocess.run(
                    command, env=self.env, cwd=REPO, stdout=fh, stderr=fh
                ).returncode
            if code != 0 or not out.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                results[name] = {"error": f"exit status {code}; output ends:\n{tail}"}
                print(f"    FAILED (exit status {code})", flush=True)
            else:
                results[name] = json.loads(out.read_text())
        return results


def _phase_record(done: PhaseRun) -> dict[str, Any]:
    record = {k: v for k, v in done.result.items() if k not in ("system", "phase")}
    return {**record, "peak_rss_mib": done.peak_rss_mib, "process_seconds": done.process_seconds}


def change_accounting(
    before: list[list[str]], after: list[list[str]], plan: corpus.EditPlan, change_phase: dict
) -> dict[str, Any]:
    """What the 5% change really made new, from the system's own chunks before and after:
    the chunk texts of changed documents that the document did not hold before. Changed and
    deleted documents are disjoint, so the final read holds the changed documents' chunks."""
    changed = {f"{doc_id}.txt" for doc_id in plan.changed}
    old = {(s, t) for s, t in before if s in changed}
    new_pairs = [(s, t) for s, t in after if s in changed]
    new_texts = {(s, t) for s, t in new_pairs if (s, t) not in old}
    return {
        "changed_documents": len(changed),
        "changed_documents_chunks": len(new_pairs),
        "changed_documents_chunks_before": len(old),
        "new_chunk_texts": len(new_texts),
        "kept_chunk_texts": len({p for p in new_pairs if p in old}),
        "embedded_chunks": change_phase["embedded_chunks"],
    }


def _peer_environment() -> Path:
    from bench.peers import env

    ensure = getattr(env, "ensure_env", None)
    return Path(ensure() if ensure else env.peer_python())


@contextmanager
def prefect_server(api_url: str | None) -> Iterator[tuple[str, str]]:
    """``(API URL, what it runs on)``: the given server, or one started for this run on a
    scratch database of the machine's Postgres (``BENCH_PREFECT_PG`` or
    ``PREFECT_TEST_SERVER_PG``, default 127.0.0.1:5432), SQLite when that is unreachable."""
    if api_url:
        yield api_url, "external"
        return
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support.prefect_server import run_prefect_server, scratch_postgres_database

    admin = os.environ.get("BENCH_PREFECT_PG") or os.environ.get(
        "PREFECT_TEST_SERVER_PG", DEFAULT_PREFECT_PG
    )
    with scratch_postgres_database(admin) as db_url:
        if db_url is None:
            print(
                "warning: no Postgres for the Prefect server; it runs on SQLite, whose lock"
                " waits (~2 s per task run) will dominate ingestflow's times",
                flush=True,
            )
        with run_prefect_server(db_url) as url:
            yield url, "postgres" if db_url else "sqlite"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    if cpuinfo.exists():
        models = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu_model"] = models[0] if models else platform.processor()
    if meminfo.exists():
        total = next(ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal"))
        info["ram_gib"] = round(int(total.split()[1]) / 1024**2, 1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    info["git_commit"] = commit.stdout.strip() or None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    info["git_dirty"] = bool(dirty.stdout.strip())
    return info


def run(options: Options, argv: list[str] | None = None) -> dict[str, Any]:
    """The whole bench; returns the result written to JSON."""
    from bench import harness_report
    from bench.pg import database

    started = time.perf_counter()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="ingestflow-bench-"))
    try:
        with (
            database() as db_url,
            prefect_server(options.prefect_api_url) as (api, on),
            ExitStack() as stack,
        ):
            bench = Bench(options, db_url, api, work)
            if "remote" in options.embedders:
                sys.path.insert(0, str(REPO))
                from tests.support.openai_server import run_openai_server

                bench.serve_remote(stack.enter_context(run_openai_server(dimension=1536)))
            systems = bench.prepare_systems()
            for peer, reason in bench.skipped.items():
                print(f"skipping {peer}: {reason}", flush=True)
            print(
                f"corpus: {len(bench.ids)} SciFact documents; change {len(bench.plan.changed)},"
                f" delete {len(bench.plan.deleted)} (seed {options.seed});"
                f" Prefect server on {on}",
                flush=True,
            )
            runs: dict[str, dict[str, Any]] = {}
            mixed: dict[str, Any] = {}
            for embedder in options.embedders:
                print(f"\nembedder {embedder}", flush=True)
                runs[embedder] = {s: vars(bench.run_system(s, embedder)) for s in systems}
                if options.mixed and "ingestflow" in systems:
                    mixed[embedder] = bench.run_mixed_formats(embedder)
            micro = bench.run_micro() if options.micro else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(["python -m bench", *(argv or [])]),
        "machine": info,
        "options": {
            "documents": len(bench.ids),
            "embedders": list(options.embedders),
            "systems": list(options.systems),
            "chunk_size": CHUNK_SIZE,
            "chunk_overlap": CHUNK_OVERLAP,
            "embed_batch_size": EMBED_BATCH,
            "seed": options.seed,
        },
        "corpus": {
            "source": str(corpus.SCIFACT),
            "documents": len(bench.ids),
            "changed": bench.plan.changed,
            "deleted": bench.plan.deleted,
        },
        "prefect_server": on,
        "skipped": bench.skipped,
        "runs": runs,
        "mixed_formats": mixed,
        "micro": micro,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    result["ratios"] = {e: harness_report.ratios(runs[e], e) for e in runs}
    print(harness_report.report_text(result), flush=True)
    path = harness_report.write(result, options.out)
    print(f"\nwrote {path} (and {options.out / 'latest.json'})")
    for plot in cast(list[str], result["plots"]):
        print(f"wrote {plot}")
    return result

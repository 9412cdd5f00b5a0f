"""Parsing in worker processes with resource limits.

One hostile file must not kill or exhaust the process that runs the flow, so parsing happens
in child processes that each parse one file at a time and are reused for the next::

    with ParseSandbox(workers=2) as sandbox:
        document = sandbox.parse(path, filename="report.pdf")

Limits, per document (``ParseLimits``, from the ``INGESTFLOW_PARSE_*`` settings; defaults
2 GiB, 120 s of CPU, 300 s of wall clock, 50 million characters):

- memory: ``RLIMIT_AS`` on the worker. A parser that asks for more gets ``MemoryError``
  (or a failed ``malloc`` in C), and the document fails with ``ParseMemoryLimitError``.
- CPU time: ``RLIMIT_CPU`` is set before each document to the worker's CPU time so far plus
  the budget, so the kernel stops (``SIGXCPU``) a parser even when it is stuck in C code.
- wall clock: the caller waits at most ``timeout_seconds``, then kills the worker (a parser
  waiting on something, or a machine so busy that CPU time lags far behind).
- extracted text: at most ``max_chars`` characters per document (``ParseOutputLimitError``).

A worker that hits a limit or dies (``ParserCrashedError`` names the signal) is replaced; the
document fails permanently with a reason naming the limit, and the caller and the other
documents carry on.

Workers are fresh interpreters (``subprocess``), not forks: a fork of the flow's process
would copy its threads' locks mid-use, and multiprocessing's spawn and forkserver re-import
the caller's main module, which would run an unguarded script's top-level ``ingest(...)``
again. A worker starts in about 0.2 s and is reused, so that cost is paid once per worker.

Parser plugins registered at run time in the calling process are not seen by the workers;
name their modules in ``INGESTFLOW_PARSE_PRELOAD`` (comma-separated) so each worker imports
them, or set ``INGESTFLOW_PARSE_ISOLATION=none`` to parse in process without limits.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import pickle
import queue
import resource
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingestflow.core.errors import (
    IngestError,
    ParseMemoryLimitError,
    ParseOutputLimitError,
    ParserCrashedError,
    ParseTimeLimitError,
)
from ingestflow.core.settings import ParseSettings
from ingestflow.core.types import ParsedDocument
from tasks.parsers import parse_file

GIB = 1024**3
MIB = 1024**2
# What C libraries say instead of raising MemoryError when malloc fails (libxml2 via lxml).
_OOM_MESSAGES = ("memory allocation failed", "out of memory", "cannot allocate memory")

Isolation = Literal["process", "none"]


@dataclass(frozen=True)
class ParseLimits:
    """Per-document limits of the parse step (see the module docstring)."""

    memory_bytes: int = 2 * GIB
    cpu_seconds: int = 120
    timeout_seconds: float = 300.0
    max_chars: int = 50_000_000
    # Long-lived parser processes may leak (caches in the libraries); a fresh one is cheap.
    jobs_per_worker: int = 500
    isolation: Isolation = "process"
    # Extra modules each worker imports, e.g. ones registering parser plugins.
    preload: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: ParseSettings) -> ParseLimits:
        """The limits ``INGESTFLOW_PARSE_*`` describe (``ingestflow.core.settings``)."""
        return cls(
            memory_bytes=int(settings.memory_mb * MIB),
            cpu_seconds=int(settings.cpu_seconds),
            timeout_seconds=settings.timeout_seconds,
            max_chars=int(settings.max_chars),
            jobs_per_worker=int(settings.jobs_per_worker),
            isolation=settings.isolation,
            preload=settings.preload_modules,
        )

    def memory_text(self) -> str:
        """``"2 GiB"`` / ``"1536 MiB"``: the memory limit as people write it."""
        if self.memory_bytes % GIB == 0:
            return f"{self.memory_bytes // GIB} GiB"
        return f"{self.memory_bytes / MIB:.0f} MiB"


def memory_limit_error(limits: ParseLimits) -> ParseMemoryLimitError:
    return ParseMemoryLimitError(
        f"parsing exceeded the memory limit ({limits.memory_text()}); "
        "the file is too large or crafted to expand (INGESTFLOW_PARSE_MEMORY_MB)"
    )


def cpu_limit_error(limits: ParseLimits) -> ParseTimeLimitError:
    return ParseTimeLimitError(
        f"parsing exceeded the time limit ({limits.cpu_seconds} s of CPU time; "
        "INGESTFLOW_PARSE_CPU_SECONDS)"
    )


def wall_limit_error(limits: ParseLimits) -> ParseTimeLimitError:
    return ParseTimeLimitError(
        f"parsing exceeded the time limit ({limits.timeout_seconds:g} s; "
        "INGESTFLOW_PARSE_TIMEOUT_SECONDS)"
    )


def check_output(document: ParsedDocument, max_chars: int) -> ParsedDocument:
    """``document``, or ``ParseOutputLimitError`` when its text is longer than ``max_chars``."""
    total = sum(len(segment.text) for segment in document.segments)
    if total > max_chars:
        raise ParseOutputLimitError(
            f"the extracted text ({total:,} characters) exceeds the limit of {max_chars:,} "
            "characters per document (INGESTFLOW_PARSE_MAX_CHARS); split the file"
        )
    return document


def parse_in_process(
    path: Path, *, filename: str = "", password: str | None = None, max_chars: int
) -> ParsedDocument:
    """Parse without a sandbox (no memory or time limits), still bounding the output."""
    return check_output(parse_file(path, filename=filename, password=password), max_chars)


# ------------------------------------------------------------------------------ the worker


@dataclass(frozen=True)
class _Job:
    path: str
    filename: str
    max_chars: int
    cpu_seconds: int
    password: str | None = field(default=None, repr=False)


def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker process: ``FD MEMORY_BYTES [MODULE ...]`` (see ``_Worker``)."""
    import sys
    from multiprocessing.connection import Connection

    args = list(sys.argv[1:] if argv is None else argv)
    _serve(Connection(int(args[0])), int(args[1]), args[2:])


def _serve(conn: Any, memory_bytes: int, preload: Sequence[str]) -> None:
    """A worker's life: set the static limits, then parse one job after another until the
    parent closes the pipe. Exits after running out of memory: a C library that failed a
    malloc may have been left in a state that is not worth trusting."""
    import importlib

    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    logging.basicConfig(level=logging.WARNING, format="parse worker: %(name)s: %(message)s")
    _set_limit(resource.RLIMIT_CORE, 0)  # SIGXCPU would dump core otherwise
    _set_limit(resource.RLIMIT_AS, memory_bytes)
    for name in ("tasks.parsers", *preload):
        importlib.import_module(name)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed us
        if job is None:
            return
        kind, value = _run(job, memory_bytes)
        # Retire after running out of memory, or after coming close: the next document
        # deserves a fresh address space (and VmPeak must belong to one document).
        retire = kind == "memory" or near_memory_limit(memory_bytes)
        try:
            conn.send((kind, value, retire))
        except MemoryError:
            conn.send(("memory", None, True))
            return
        except OSError:  # BrokenPipeError: the parent is gone
            return
        if retire:
            return


def _run(job: _Job, memory_bytes: int) -> tuple[str, Any]:
    _budget_cpu(job.cpu_seconds)
    try:
        document = parse_file(Path(job.path), filename=job.filename, password=job.password)
        return "ok", check_output(document, job.max_chars)
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        if _out_of_memory(exc) or near_memory_limit(memory_bytes):
            return "memory", None
        if isinstance(exc, IngestError):
            return "error", exc
        if not isinstance(exc, Exception):
            raise
        return "error", _picklable(exc)


def peak_memory() -> int | None:
    """This process's peak address-space size (``VmPeak``, the figure RLIMIT_AS bounds),
    or None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def near_memory_limit(memory_bytes: int) -> bool:
    """True when this process has come within 10% of its address-space limit. A C library
    whose malloc failed there reports odd errors ("unknown error" from libxml2) instead of
    MemoryError; at that height the limit is the real cause. A worker that got this close
    is replaced after its document, so the peak always belongs to the current one."""
    peak = peak_memory()
    return peak is not None and peak >= 0.9 * memory_bytes


def _watch_parent(interval: float = 1.0) -> None:
    """Exit when the parent dies. An idle worker sees the pipe close anyway, but a busy one
    only reads it between documents, and a parser blocked without using CPU would outlive
    its parent (whose wall-clock limit died with it). A thread checks the parent process id
    instead; it needs the GIL, which a blocked parser has released. (PR_SET_PDEATHSIG would
    fire when the parent's *thread* ends, and the parent starts workers from short-lived
    threads.)"""
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _set_limit(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _budget_cpu(seconds: int) -> None:
    """RLIMIT_CPU counts the process's whole life, so the budget starts from what this
    worker has used so far. Only the soft limit moves (an unprivileged process cannot raise
    a hard limit it lowered); at the soft limit the kernel sends SIGXCPU, which kills."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` or one of its causes says an allocation failed (``parse_file``
    wraps a parser's MemoryError in ParseError; lxml reports libxml2's failed mallocs as
    syntax errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        if any(marker in str(current).lower() for marker in _OOM_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure means: send a plain stand-in
        message = " ".join(str(exc).split())
        return RuntimeError(f"{type(exc).__name__}: {message}")
    return exc


# ------------------------------------------------------------------------------ the parent


class _WorkerGone(Exception):  # noqa: N818 - an internal signal: retry on a fresh worker
    """The worker died before it received the job (nothing was parsed)."""


# The command that starts a worker: the parent's sys.path first, so that whatever the caller
# can import (preloaded plugin modules, a checkout that is not installed) the worker can too.
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv.pop(1)); "
    "from tasks.sandbox import worker_main; worker_main()"
)


class _Worker:
    """One worker process (a fresh interpreter, not a fork: nothing of the caller's state,
    threads or main module comes along) and a socket to it."""

    def __init__(self, limits: ParseLimits) -> None:
        import json
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        self.limits = limits
        mine, theirs = socket.socketpair()
        paths = [p for p in sys.path if p]
        command = [sys.executable, "-c", _BOOT, json.dumps(paths), str(theirs.fileno())]
        command += [str(limits.memory_bytes), *limits.preload]
        try:
            self.process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stray prints of a parser must go nowhere
                close_fds=True,
            )
        finally:
            theirs.close()  # the child holds the only other end: its death means EOF here
        self.conn = Connection(mine.detach())
        self.jobs = 0
        self.closed = False

    @property
    def usable(self) -> bool:
        return (
            not self.closed
            and self.process.poll() is None
            and self.jobs < self.limits.jobs_per_worker
        )

    def parse(self, job: _Job) -> ParsedDocument:
        self.jobs += 1
        try:
            self.conn.send(job)
        except (BrokenPipeError, OSError) as e:
            self.close()
            raise _WorkerGone() from e
        if not self.conn.poll(self.limits.timeout_seconds):
            self.close(kill=True)
            raise wall_limit_error(self.limits)
        try:
            kind, value, retire = self.conn.recv()
        except (EOFError, OSError):
            raise self._death() from None
        if retire:
            self.close()  # it exits by itself; it must not get another document
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        if kind == "memory":
            raise memory_limit_error(self.limits)
        raise value

    def _death(self) -> Exception:
        """The error for a worker that died while parsing, from how it died."""
        code = self._wait(10)
        self.close(kill=True)
        if code == -signal.SIGXCPU:
            return cpu_limit_error(self.limits)
        if code is not None and code < 0:
            name = _signal_name(-code)
            hint = " (killed from outside, or out of memory)" if -code == signal.SIGKILL else ""
            return ParserCrashedError(f"the parser crashed on this file ({name}){hint}")
        return ParserCrashedError(f"the parser process exited unexpectedly (status {code})")

    def _wait(self, seconds: float) -> int | None:
        import subprocess

        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def close(self, *, kill: bool = False) -> None:
        """Stop the worker: ask it to exit, or kill it when it may be busy or stuck."""
        if self.closed:
            return
        self.closed = True
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                with contextlib.suppress(OSError):
                    self.conn.send(None)
            if self._wait(5) is None:
                self.process.kill()
                self._wait(5)
        self.conn.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class ParseSandbox:
    """Up to ``workers`` parser processes with ``limits``; ``parse`` is thread-safe and runs
    at most ``workers`` documents at once (callers beyond that wait for a free worker)."""

    def __init__(self, *, workers: int = 2, limits: ParseLimits | None = None) -> None:
        self.workers = max(1, workers)
        self.limits = limits or ParseLimits()
        self._slots = threading.BoundedSemaphore(self.workers)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._closed = False
        self.started = 0  # worker processes started, for tests and measurements

    def parse(
        self, path: Path, *, filename: str = "", password: str | None = None
    ) -> ParsedDocument:
        """Parse ``path`` in a worker process; see ``tasks.parsers.parse_file`` for the
        arguments and errors, plus the ``ParseLimitError`` family and ``ParserCrashedError``."""
        job = _Job(
            str(path),
            filename,
            self.limits.max_chars,
            self.limits.cpu_seconds,
            password,
        )
        crashed: ParserCrashedError | None = None
        with self._slots:
            for _ in range(3):
                worker = self._checkout()
                try:
                    document = worker.parse(job)
                except _WorkerGone:  # it died while idle, before taking the job
                    continue
                except ParserCrashedError as e:
                    # Once more on a fresh worker: an idle worker killed from outside can
                    # still take a job while its last thread exits. A file that crashes
                    # the parser crashes it again.
                    self._checkin(worker)
                    if crashed is not None:
                        raise
                    crashed = e
                    continue
                except BaseException:
                    self._checkin(worker)
                    raise
                self._checkin(worker)
                return document
        raise crashed or ParserCrashedError("the parser process could not be started")

    def start_idle(self, count: int = 1) -> None:
        """Start up to ``count`` workers now, so the first documents need not wait for them."""
        for _ in range(min(count, self.workers) - self._idle.qsize()):
            self.started += 1
            self._checkin(_Worker(self.limits))

    def _checkout(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the parse sandbox is closed")
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                self.started += 1
                return _Worker(self.limits)
            if worker.usable:
                return worker
            worker.close()

    def _checkin(self, worker: _Worker) -> None:
        if not self._closed and worker.usable:
            self._idle.put(worker)
        else:
            worker.close()

    def close(self) -> None:
        """Stop every idle worker (busy ones stop when their document is done)."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self) -> ParseSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ----------------------------------------------------------------- the process-wide sandbox

_shared: ParseSandbox | None = None
_shared_key: tuple[int, int, ParseLimits] | None = None
_shared_lock = threading.Lock()


def shared_sandbox(workers: int, limits: ParseLimits) -> ParseSandbox:
    """The process's sandbox for ``workers`` and ``limits``, kept between micro-batches and
    flow runs; replaced when they change. A process forked from this one gets its own."""
    global _shared, _shared_key
    key = (os.getpid(), max(1, workers), limits)
    with _shared_lock:
        if _shared is not None and _shared_key == key:
            return _shared
        if _shared is not None and _shared_key is not None and _shared_key[0] == os.getpid():
            _shared.close()  # settings changed; a forked child must not stop its parent's
        _shared = ParseSandbox(workers=workers, limits=limits)
        _shared_key = key
        return _shared


def close_shared_sandbox() -> None:
    """Stop the process-wide sandbox's workers (at exit, and for tests)."""
    global _shared, _shared_key
    with _shared_lock:
        if _shared is not None and _shared_key is not None and _shared_key[0] == os.getpid():
            _shared.close()
        _shared, _shared_key = None, None


atexit.register(close_shared_sandbox)

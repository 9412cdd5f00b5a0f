"""tasks.sandbox: parsing in real worker processes with memory, CPU, wall-clock and output
limits. The misbehaving parser plugin (tests.support.misbehaving_parser) is loaded into the
workers to spin, sleep, allocate, crash or exit on command; nothing is faked."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingestflow.core.errors import (
    ConfigError,
    ParseError,
    ParseMemoryLimitError,
    ParseOutputLimitError,
    ParserCrashedError,
    ParseTimeLimitError,
    UnsupportedTypeError,
    is_permanent,
)
from ingestflow.core.settings import get_settings
from ingestflow.core.types import DocumentStatus, FetchedSource
from tasks.parse import parse_documents
from tasks.parsers import parse_file
from tasks.sandbox import MIB, ParseLimits, ParseSandbox, parse_in_process
from tasks.work import DocWork, error_code
from tests.support.service import wait_until

PLUGIN = "tests.support.misbehaving_parser"
REPO = Path(__file__).resolve().parents[2]


def limits(**overrides) -> ParseLimits:
    values = {"cpu_seconds": 2, "timeout_seconds": 60.0, "preload": (PLUGIN,)}
    return ParseLimits(**{**values, **overrides})


@pytest.fixture
def sandbox():
    with ParseSandbox(workers=1, limits=limits()) as box:
        yield box


def order(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.txt"
    path.write_text(text)
    return path


def good(tmp_path: Path, word: str = "ordinary") -> Path:
    return order(tmp_path, f"good-{word}", f"an {word} text file about ducks")


def test_parses_like_parse_file_and_reuses_its_worker(tmp_path, sandbox):
    files = [good(tmp_path, f"w{i}") for i in range(5)]

    documents = [sandbox.parse(f, filename=f.name) for f in files]

    assert documents == [parse_file(f, filename=f.name) for f in files]
    assert sandbox.started == 1
    assert pickle.loads(pickle.dumps(documents)) == documents


def test_ordinary_parse_errors_come_back_and_keep_the_worker(tmp_path, sandbox):
    png = tmp_path / "image.pdf"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)

    with pytest.raises(UnsupportedTypeError, match="PNG image"):
        sandbox.parse(png, filename=png.name)

    assert sandbox.parse(good(tmp_path), filename="good.txt").segments
    assert sandbox.started == 1


def test_cpu_limit_stops_a_spinning_parser_and_the_next_file_parses(tmp_path, sandbox):
    with pytest.raises(ParseTimeLimitError) as caught:
        sandbox.parse(order(tmp_path, "spin", "#!spin"), filename="spin.txt")

    assert caught.value.reason.startswith("parsing exceeded the time limit (2 s of CPU time")
    assert error_code(caught.value) == "parse_time_limit" and is_permanent(caught.value)
    assert sandbox.parse(good(tmp_path), filename="good.txt").segments
    assert sandbox.started == 2


def test_cpu_budget_is_per_document_not_per_worker(tmp_path):
    # Three documents of 0.7 s CPU each on one worker: together past the 1 s budget.
    burn = order(tmp_path, "burn", "#!burn 0.7")
    with ParseSandbox(workers=1, limits=limits(cpu_seconds=1)) as box:
        for _ in range(3):
            assert box.parse(burn, filename="burn.txt").segments[0].text == "burnt"
        assert box.started == 1


def test_wall_clock_limit_stops_a_sleeping_parser(tmp_path):
    with ParseSandbox(workers=1, limits=limits(timeout_seconds=1.0)) as box:
        with pytest.raises(ParseTimeLimitError, match=r"time limit \(1 s;"):
            box.parse(order(tmp_path, "sleep", "#!sleep 600"), filename="sleep.txt")
        assert box.parse(good(tmp_path), filename="good.txt").segments


def test_memory_limit_turns_memory_error_into_a_reason(tmp_path):
    with ParseSandbox(workers=1, limits=limits(memory_bytes=768 * MIB)) as box:
        with pytest.raises(ParseMemoryLimitError) as caught:
            box.parse(order(tmp_path, "alloc", "#!alloc"), filename="alloc.txt")
        assert caught.value.reason.startswith("parsing exceeded the memory limit (768 MiB)")
        assert error_code(caught.value) == "parse_memory_limit"
        assert box.parse(good(tmp_path), filename="good.txt").segments
        assert box.started == 2  # a worker that ran out of memory is not reused


def test_a_c_library_failing_at_the_memory_ceiling_counts_as_the_memory_limit(tmp_path):
    box = ParseSandbox(workers=1, limits=limits(memory_bytes=1024 * MIB))
    with box, pytest.raises(ParseMemoryLimitError, match=r"memory limit \(1 GiB\)"):
        box.parse(order(tmp_path, "c-oom", "#!c-oom"), filename="c-oom.txt")


def test_a_crashing_parser_names_the_signal(tmp_path, sandbox):
    with pytest.raises(ParserCrashedError, match="crashed on this file \\(SIGSEGV\\)") as caught:
        sandbox.parse(order(tmp_path, "segv", "#!segv"), filename="segv.txt")

    assert error_code(caught.value) == "parser_crashed" and is_permanent(caught.value)
    assert sandbox.started == 2  # tried once more on a fresh worker: a crash may be bad luck
    assert sandbox.parse(good(tmp_path), filename="good.txt").segments


def test_an_exiting_parser_names_the_status(tmp_path, sandbox):
    with pytest.raises(ParserCrashedError, match="exited unexpectedly \\(status 3\\)"):
        sandbox.parse(order(tmp_path, "exit", "#!exit 3"), filename="exit.txt")


def test_output_limit(tmp_path):
    with ParseSandbox(workers=1, limits=limits(max_chars=1000)) as box:
        assert box.parse(order(tmp_path, "ok", "#!chars 1000"), filename="ok.txt")
        with pytest.raises(ParseOutputLimitError, match="1,001 characters.*limit of 1,000"):
            box.parse(order(tmp_path, "big", "#!chars 1001"), filename="big.txt")
        assert box.started == 1  # an output limit is an ordinary answer: the worker stays


def test_prints_of_a_parser_do_not_corrupt_the_channel(tmp_path, sandbox):
    document = sandbox.parse(order(tmp_path, "print", "#!print\nprinted words"), filename="p.txt")

    assert "printed words" in document.segments[0].text


def test_a_worker_that_died_while_idle_is_replaced(tmp_path, sandbox):
    pid = int(
        sandbox.parse(order(tmp_path, "pid", "#!pid"), filename="pid.txt")
        .segments[0]
        .text.split()[-1]
    )
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive(pid), timeout=30, what="the worker to die")

    assert sandbox.parse(good(tmp_path), filename="good.txt").segments
    assert sandbox.started == 2


def test_password_reaches_the_worker_and_no_reason_quotes_it(tmp_path, sandbox):
    from tests.support.hostile import case

    path = tmp_path / "encrypted.pdf"
    case("encrypted.pdf").build(path)

    document = sandbox.parse(path, filename=path.name, password="hostile-user-pw")
    assert "secret text" in document.segments[0].text
    with pytest.raises(ParseError) as caught:
        sandbox.parse(path, filename=path.name, password="wrong-pw-91")
    assert "wrong-pw-91" not in str(caught.value)


def _docwork(path: Path) -> DocWork:
    fetched = FetchedSource(path.as_uri(), path, path.stat().st_size, "0" * 64, path.name)
    return DocWork(source=path.as_uri(), fetched=fetched)


def test_a_batch_with_bad_files_fails_only_those(tmp_path):
    files = [
        good(tmp_path, "first"),
        order(tmp_path, "spin", "#!spin"),
        good(tmp_path, "second"),
        order(tmp_path, "segv", "#!segv"),
        order(tmp_path, "alloc", "#!alloc"),
        good(tmp_path, "third"),
    ]
    works = [_docwork(f) for f in files]

    done = parse_documents(works, workers=2, limits=limits(cpu_seconds=1, memory_bytes=768 * MIB))

    outcome = {w.fetched.filename: (w.status, w.error_code) for w in done if w.fetched}
    processing = DocumentStatus.PROCESSING
    assert outcome == {
        "good-first.txt": (processing, None),
        "spin.txt": (DocumentStatus.FAILED, "parse_time_limit"),
        "good-second.txt": (processing, None),
        "segv.txt": (DocumentStatus.FAILED, "parser_crashed"),
        "alloc.txt": (DocumentStatus.FAILED, "parse_memory_limit"),
        "good-third.txt": (processing, None),
    }
    assert all(w.segments for w in done if w.status is processing)


def test_isolation_none_parses_in_process(tmp_path):
    works = [_docwork(good(tmp_path))]

    done = parse_documents(works, limits=ParseLimits(isolation="none", max_chars=5))

    assert done[0].error_code == "parse_output_limit"
    document = parse_in_process(good(tmp_path), max_chars=1000)
    assert document.segments[0].text.startswith("an ordinary")


def test_limits_from_the_environment(monkeypatch):
    env = {
        "INGESTFLOW_PARSE_MEMORY_MB": "1536",
        "INGESTFLOW_PARSE_CPU_SECONDS": "30",
        "INGESTFLOW_PARSE_TIMEOUT_SECONDS": "45.5",
        "INGESTFLOW_PARSE_MAX_CHARS": "1000000",
        "INGESTFLOW_PARSE_ISOLATION": "none",
        "INGESTFLOW_PARSE_PRELOAD": "a.b, c",
    }

    got = _limits_from(env, monkeypatch)

    assert got == ParseLimits(
        memory_bytes=1536 * MIB,
        cpu_seconds=30,
        timeout_seconds=45.5,
        max_chars=1_000_000,
        isolation="none",
        preload=("a.b", "c"),
    )
    assert got.memory_text() == "1536 MiB"
    assert _limits_from({}, monkeypatch) == ParseLimits()
    assert ParseLimits().memory_text() == "2 GiB"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGESTFLOW_PARSE_MEMORY_MB", "lots"),
        ("INGESTFLOW_PARSE_CPU_SECONDS", "0"),
        ("INGESTFLOW_PARSE_TIMEOUT_SECONDS", "-1"),
        ("INGESTFLOW_PARSE_MAX_CHARS", "inf"),
        ("INGESTFLOW_PARSE_ISOLATION", "thread"),
    ],
)
def test_bad_limits_are_a_config_error(name, value, monkeypatch):
    with pytest.raises(ConfigError, match=name):
        _limits_from({name: value}, monkeypatch)


def _limits_from(env: dict[str, str], monkeypatch) -> ParseLimits:
    for name in list(os.environ):
        if name.startswith("INGESTFLOW_PARSE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return ParseLimits.from_settings(get_settings().parse)
    finally:
        get_settings.cache_clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _run_script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )


def test_a_script_without_a_main_guard_parses_once(tmp_path):
    # multiprocessing's spawn/forkserver would re-run this module in every worker.
    (tmp_path / "doc.txt").write_text("plain words for an unguarded script")
    proc = _run_script(
        tmp_path,
        """
        from pathlib import Path
        from tasks.sandbox import ParseSandbox
        with ParseSandbox(workers=2) as box:
            print("parsed:", box.parse(Path("doc.txt")).segments[0].text)
        """,
    )
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0
    assert out.splitlines() == ["parsed: plain words for an unguarded script"]


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    proc = _run_script(
        tmp_path,
        f"""
        import sys, time
        from pathlib import Path
        from tasks.sandbox import ParseLimits, ParseSandbox
        Path("pid.txt").write_text("#!pid")
        Path("sleep.txt").write_text("#!sleep 600")
        box = ParseSandbox(workers=2, limits=ParseLimits(preload=({PLUGIN!r},)))
        print(box.parse(Path("pid.txt")).segments[0].text.split()[-1], flush=True)
        box.parse(Path("sleep.txt"))
        """,
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    assert _alive(worker)

    proc.kill()
    proc.wait()

    wait_until(lambda: not _alive(worker), timeout=60, what="the orphaned worker to exit")

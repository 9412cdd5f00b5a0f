"""The warm pool: processes spawned ahead that run one call each, and the Prefect names
``deployments.warm_pool`` relies on (so a Prefect upgrade that moves them fails here)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest

from deployments.warm_pool import WarmPool, WarmStarts, install


def test_prefect_still_has_what_the_warm_starts_mirror() -> None:
    import prefect.runner._starter_direct as direct
    from prefect import flow_engine
    from prefect.utilities.callables import cloudpickle_wrapped_call

    # The starter calls this module global for every run it starts.
    original = direct.run_flow_in_subprocess
    assert (
        list(inspect.signature(original).parameters)
        == list(inspect.signature(WarmStarts.__call__).parameters)[1:]
    )
    assert {"PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN"} == set(
        flow_engine._CONTROL_CHANNEL_ENV_KEYS
    )
    assert callable(flow_engine._run_serialized_call_with_control_bootstrap)
    assert callable(flow_engine._runtime_subprocess_env)
    wrapped = cloudpickle_wrapped_call(print, "x")
    assert isinstance(wrapped, functools.partial) and isinstance(wrapped.args[0], bytes)


def test_a_warm_process_runs_its_one_call_and_the_pool_refills(tmp_path: Path) -> None:
    pool = WarmPool(2, preload=("json",))
    try:
        first = pool.take()
        first.run(Path.write_text, (tmp_path / "done.txt", "ran"))
        first.process.join(60)
        assert first.process.exitcode == 0
        assert (tmp_path / "done.txt").read_text() == "ran"
        second = pool.take()
        assert second.process.pid != first.process.pid
        second.run(Path.write_text, (tmp_path / "again.txt", "ran"))
        second.process.join(60)
        assert second.process.exitcode == 0
    finally:
        pool.close()


def test_a_warm_process_that_died_waiting_is_not_handed_out() -> None:
    pool = WarmPool(1, preload=())
    try:
        dead = pool.take()  # the pool spawns a replacement behind it
        dead.process.kill()
        dead.process.join(30)
        waiting = pool._ready[0]
        waiting.process.kill()
        waiting.process.join(30)
        taken = pool.take()
        assert taken.process.is_alive() and taken is not waiting
        taken.discard()
    finally:
        pool.close()


def test_a_failing_call_is_a_nonzero_exit(tmp_path: Path) -> None:
    pool = WarmPool(1, preload=())
    try:
        warm = pool.take()
        warm.run(Path.read_text, (tmp_path / "missing.txt",))
        warm.process.join(60)
        assert warm.process.exitcode not in (0, None)
    finally:
        pool.close()


def test_warm_starts_take_flow_runs_only() -> None:
    with pytest.raises(ValueError, match="flow run"):
        WarmStarts(WarmPool(0))(object(), parameters={"x": 1})  # type: ignore[arg-type]


def test_install_replaces_the_starters_subprocess_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.runner._starter_direct as direct

    monkeypatch.setattr(direct, "run_flow_in_subprocess", direct.run_flow_in_subprocess)
    pool = WarmPool(0)
    install(pool)
    assert isinstance(direct.run_flow_in_subprocess, WarmStarts)
    assert direct.run_flow_in_subprocess.pool is pool

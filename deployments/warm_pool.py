"""Flow runs started in processes that are already warm.

Prefect's served runner starts each flow run in a new process (``run_flow_in_subprocess``):
that process imports Prefect, the flows and the pipeline's libraries before the run's first
state change, which costs seconds on a small machine for a run that itself takes a fraction
of one. ``WarmPool`` keeps ``size`` processes spawned ahead of time, each with those imports
done, the database schema checked and its connections open, waiting for one call. A run takes
one, and a new one is spawned behind it.

Everything else is Prefect's: each run is still one process of its own that the runner
watches, cancels by signalling it and marks crashed if it dies; the payload it runs is the one
``run_flow_in_subprocess`` builds (``flow_call`` mirrors it), and the runner's starter calls
``start_flow_run`` in its place, as ``prefect.runner._starter_direct`` invites.
tests/unit/test_warm_pool.py pins the Prefect names this relies on.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow

log = logging.getLogger(__name__)

# What a warm process imports while it waits, before ``tasks.warm.warm_up``.
PRELOAD = ("flows", "prefect.flow_engine")
WARM_UP_DELAY = 1.5  # seconds


def _warm_process_main(
    conn: multiprocessing.connection.Connection, preload: tuple[str, ...]
) -> None:
    """A warm process: import and connect, then wait for one call and run it.

    The warm-up waits ``WARM_UP_DELAY`` first: this process was forked when a run took its
    predecessor, and that run should have the CPU (two cores, here) for its first second.
    A call that comes sooner is run at once, warming up as it goes.
    """
    for name in preload:
        importlib.import_module(name)
    if "flows" in preload and not conn.poll(WARM_UP_DELAY):
        from tasks.warm import warm_up

        warm_up()
    try:
        target, args = conn.recv()
    except (EOFError, KeyboardInterrupt):  # the pool closed without a run for this one
        return
    conn.close()
    target(*args)


class WarmProcess:
    """A spawned process that waits for its one call."""

    def __init__(
        self, ctx: multiprocessing.context.ForkServerContext, preload: tuple[str, ...]
    ) -> None:
        self._conn, child_end = ctx.Pipe()
        self.process = ctx.Process(target=_warm_process_main, args=(child_end, preload))
        self.process.start()
        child_end.close()

    def run(self, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._conn.send((target, args))
        self._conn.close()

    def discard(self) -> None:
        self._conn.close()  # EOF: the process returns without running anything
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


class WarmPool:
    """``size`` warm processes; ``take`` hands one out and spawns its replacement."""

    def __init__(self, size: int, preload: Iterable[str] = PRELOAD) -> None:
        self.size = size
        self.preload = tuple(preload)
        # A fork server imports ``preload`` once; each warm process is forked from it, so
        # it starts with those imports done instead of paying seconds of CPU for them.
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(self.preload))
        self._ready: deque[WarmProcess] = deque()
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._fill()

    def take(self) -> WarmProcess:
        with self._lock:
            while self._ready and not self._ready[0].process.is_alive():
                self._ready.popleft()  # died while waiting (killed by hand, out of memory)
            taken = self._ready.popleft() if self._ready else WarmProcess(self._ctx, self.preload)
            self._fill()
        return taken

    def close(self) -> None:
        with self._lock:
            self._closed = True
            waiting, self._ready = list(self._ready), deque()
        for process in waiting:
            process.discard()

    def _fill(self) -> None:
        while not self._closed and len(self._ready) < self.size:
            self._ready.append(WarmProcess(self._ctx, self.preload))


def flow_call(
    flow: Flow[..., Any], flow_run: FlowRun | None, env: dict[str, str | None] | None
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The process target and arguments ``run_flow_in_subprocess`` would start the run with."""
    from prefect.context import serialize_context
    from prefect.flow_engine import (
        _CONTROL_CHANNEL_ENV_KEYS,
        _run_serialized_call_with_control_bootstrap,
        _runtime_subprocess_env,
    )
    from prefect.settings.context import get_current_settings
    from prefect.utilities.callables import cloudpickle_wrapped_call
    from prefect.utilities.processutils import sanitize_subprocess_env

    merged: dict[str, str | None] = {
        **get_current_settings().to_environment_variables(exclude_unset=True),
        **os.environ,
        "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
        **(env or {}),
    }
    sanitized = sanitize_subprocess_env(merged)
    startup_env = {k: v for k, v in sanitized.items() if k in _CONTROL_CHANNEL_ENV_KEYS}
    wrapped = cloudpickle_wrapped_call(
        run_flow_with_env,
        env=_runtime_subprocess_env(sanitized),
        remove_env={key for key, value in merged.items() if value is None},
        flow=flow_reference(flow) or flow,
        flow_run=flow_run,
        parameters=None,
        wait_for=None,
        context=serialize_context(),
    )
    payload = cast("functools.partial[bytes]", wrapped).args[0]  # the pickled call
    return _run_serialized_call_with_control_bootstrap, (payload, startup_env)


def flow_reference(flow: Flow[..., Any]) -> str | None:
    """``module:name`` of a flow defined at the top of an importable module, else None.

    A warm process imports the flow by it instead of unpickling it: cloudpickle copies a
    function without the names its annotations use only as strings (``from __future__
    import annotations``), and Prefect's parameter validation then fails on them.
    """
    module, name = getattr(flow.fn, "__module__", None), getattr(flow.fn, "__name__", "")
    if not module or module == "__main__":
        return None
    found = getattr(importlib.import_module(module), name, None)
    return f"{module}:{name}" if found is flow else None


def _imported_flow(reference: str) -> Flow[..., Any]:
    module, _, name = reference.partition(":")
    return cast("Flow[..., Any]", getattr(importlib.import_module(module), name))


def run_flow_with_env(
    *args: Any,
    env: dict[str, str] | None = None,
    remove_env: set[str] | None = None,
    **kwargs: Any,
) -> None:
    """In the warm process: the run's environment and settings, then Prefect's ``run_flow``
    (the body of the wrapper inside ``run_flow_in_subprocess``); a flow given by reference
    is imported."""
    if isinstance(kwargs.get("flow"), str):
        kwargs["flow"] = _imported_flow(kwargs["flow"])
    from prefect.context import SettingsContext, get_settings_context
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import run_flow
    from prefect.settings.models.root import Settings

    for key in remove_env or ():
        os.environ.pop(key, None)
    os.environ.update(env or {})
    settings_context = get_settings_context()
    flow_run = kwargs.get("flow_run")
    with (
        SettingsContext(profile=settings_context.profile, settings=Settings()),
        handle_engine_signals(getattr(flow_run, "id", None)),
    ):
        result = run_flow(*args, **kwargs)
        if asyncio.iscoroutine(result):
            asyncio.run(result)


class WarmStarts:
    """``start_flow_run`` with the signature of ``run_flow_in_subprocess``, on a pool."""

    def __init__(self, pool: WarmPool) -> None:
        self.pool = pool

    def __call__(
        self,
        flow: Flow[..., Any],
        flow_run: FlowRun | None = None,
        parameters: dict[str, Any] | None = None,
        wait_for: Any = None,
        context: dict[str, Any] | None = None,
        env: dict[str, str | None] | None = None,
    ) -> multiprocessing.context.SpawnProcess:
        """The warm process, started on the run; typed as what Prefect's starter expects
        (it uses only ``pid``, ``exitcode`` and ``join``, which every process has)."""
        if parameters is not None or wait_for is not None or context is not None:
            raise ValueError("warm starts take a flow run, not parameters, futures or context")
        target, args = flow_call(flow, flow_run, env)
        warm = self.pool.take()
        warm.run(target, args)
        return cast("multiprocessing.context.SpawnProcess", warm.process)


def install(pool: WarmPool) -> None:
    """Make the served runner's starter use ``pool`` for every run it starts."""
    import prefect.runner._starter_direct as direct

    direct.run_flow_in_subprocess = WarmStarts(pool)  # type: ignore[assignment]

"""The runner behind ``serve_deployments``: Prefect's own ``Runner``, which starts the runs
it finds due in the order of their scheduled start, taught to start them by priority first
and to leave the runs of a paused queue waiting.

A run's queue is its ``priority:<name>`` tag (``PrefectBackend.submit`` writes one;
``work_pool.queue_of``): a run without one (a sweep or re-queue schedule) is ``normal``, as
on the work pool, whose default queue is ``normal``. Which queues are paused is read from the
``ingestflow-process`` pool's work queues at every poll, so one pause
(``POST /v1/ops/queues/{queue}:pause``) holds for this runner and for the pool's workers
alike; with no pool, nothing is paused.

Prefect 3.8's ``Runner`` builds its poller (``ScheduledRunPoller``) in ``__aenter__`` and
offers no hook for the order of runs. ``PriorityRunner`` gives the poller it built this
module's subclass, which overrides the one method that picks runs; that method still does
the picking, one queue at a time, high first. tests/unit/test_priority_runner.py pins the
Prefect names this relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

from prefect.runner import Runner
from prefect.runner._scheduled_run_poller import ScheduledRunPoller

from deployments.warm_pool import WarmPool, install
from deployments.work_pool import QUEUE_ORDER, queue_of, read_queues

if TYPE_CHECKING:
    import anyio.abc
    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger(__name__)
# How often the served runner asks for due runs: a run waits half of it on average before it
# starts. Each poll is two small requests to the Prefect server.
POLL_SECONDS = 0.25


def by_queue(runs: Iterable[FlowRun], paused: set[str]) -> list[list[FlowRun]]:
    """The runs grouped by queue, high first, without the paused queues' runs."""
    lanes: dict[str, list[FlowRun]] = {name: [] for name in QUEUE_ORDER}
    for run in runs:
        lanes[queue_of(run.tags)].append(run)
    return [lanes[name] for name in QUEUE_ORDER if lanes[name] and name not in paused]


class PriorityRunPoller(ScheduledRunPoller):
    """Prefect's poller, picking the runs of one queue at a time, high to low."""

    _paused: set[str] = set()  # the last answer, kept while the server cannot be asked

    async def _submit_scheduled_flow_runs(
        self, flow_run_response: list[FlowRun], task_group: anyio.abc.TaskGroup
    ) -> None:
        # Prefect's method sorts the runs it is given by start time and takes as many as
        # there are free slots: given one queue at a time, a lower queue gets only what the
        # higher ones left.
        for lane in by_queue(flow_run_response, await self._paused_queues()):
            await super()._submit_scheduled_flow_runs(lane, task_group)

    async def _paused_queues(self) -> set[str]:
        from prefect.exceptions import ObjectNotFound

        try:
            queues = await read_queues(self._client)
        except ObjectNotFound:
            self._paused = set()
        except Exception as exc:  # noqa: BLE001 - a poll must not stop on it
            log.warning("could not read which queues are paused (%s)", type(exc).__name__)
        else:
            self._paused = {q.name for q in queues if q.is_paused}
        return self._paused


class PriorityRunner(Runner):
    """Prefect's ``Runner`` with ``PriorityRunPoller`` as its poller."""

    async def __aenter__(self) -> Self:
        runner = await super().__aenter__()
        # The subclass adds no state of its own, so the built poller can take its class.
        self._scheduled_run_poller.__class__ = PriorityRunPoller
        return runner


def serve(
    flows: Sequence[tuple[Flow[..., Any], dict[str, Any]]],
    *,
    limit: int | None = None,
    warm: int = 0,
) -> None:
    """What ``prefect.serve`` does, on a ``PriorityRunner``: serve each flow as the
    deployment its keyword arguments describe from this process until interrupted, at most
    ``limit`` runs at once, each started in one of ``warm`` processes kept ready
    (``deployments.warm_pool``; the runner holds the flow objects, ``Runner.add_flow``).
    With ``warm`` 0 each run is a new ``python -m prefect.engine`` that imports its flow by
    entrypoint, as a process worker does."""
    from prefect.exceptions import TerminationSignal

    pool = WarmPool(warm) if warm else None
    if pool is not None:
        install(pool)
    runner = PriorityRunner(limit=limit, query_seconds=POLL_SECONDS)
    for flow, options in flows:
        if pool is not None:
            runner.add_flow(flow, **options)
        else:
            runner.add_deployment(cast("RunnerDeployment", flow.to_deployment(**options)))
    log.info("serving %d deployments, %s runs at once", len(flows), limit or "any")
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:
        log.info("%s: shutting down", type(exc).__name__)
    finally:
        if pool is not None:
            pool.close()

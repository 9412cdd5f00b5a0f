"""The ``ingestflow-process`` work pool and its three priority queues: their names, how a run
is placed in one, and creating them.

Whichever runner runs the jobs, the pool's work queues are where a queue is paused: a
``prefect worker`` on the pool honours it natively, and the served runner
(``deployments.priority_runner``) reads it at every poll. Prefect is imported inside the
functions: the API imports this module through the Prefect backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from ingestflow.core.types import Priority

WORK_POOL = "ingestflow-process"
# The pool's work queues by name, with their priority (1 is polled first). A run with no
# queue named goes to the pool's default queue, which is "normal".
WORK_QUEUES: dict[str, int] = {
    Priority.HIGH.value: 1,
    Priority.NORMAL.value: 2,
    Priority.LOW.value: 3,
}
QUEUE_ORDER = tuple(sorted(WORK_QUEUES, key=WORK_QUEUES.__getitem__))
DEFAULT_QUEUE = Priority.NORMAL.value
PRIORITY_TAG = "priority:"


def queue_name(priority: Priority) -> str:
    """The work queue that runs jobs of ``priority``."""
    return Priority(priority).value


def queue_of(tags: Iterable[str]) -> str:
    """The queue a flow run belongs to by its ``priority:`` tag; ``normal`` without one (a
    scheduled run of the sweep or the re-queue)."""
    for tag in tags:
        name = tag.removeprefix(PRIORITY_TAG)
        if name != tag and name in WORK_QUEUES:
            return name
    return DEFAULT_QUEUE


def ensure_work_pool() -> None:
    """Create the ``ingestflow-process`` pool and its queues high (1), normal (2, the
    default) and low (3), or bring existing ones to those priorities. Idempotent.

    A worker polls the queues in priority order, so when the pool or the worker has a
    concurrency limit (``prefect worker start --limit N``) high-priority runs start first.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        pool = _read_or_create_pool(client)
        queues = {q.name: q for q in read_queues(client)}
        default = next((q for q in queues.values() if q.id == pool.default_queue_id), None)
        if DEFAULT_QUEUE not in queues and default is not None and default.name == "default":
            # Runs that name no queue go to the pool's default queue: make it "normal".
            client.update_work_queue(default.id, name=DEFAULT_QUEUE)
            queues[DEFAULT_QUEUE] = default
        # In priority order: the server renumbers the other queues on every change.
        for name in QUEUE_ORDER:
            queue, priority = queues.get(name), WORK_QUEUES[name]
            if queue is None:
                # Another runner or worker starting at the same time may create it first.
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_work_queue(name=name, priority=priority, work_pool_name=WORK_POOL)
            elif queue.priority != priority:
                client.update_work_queue(queue.id, priority=priority)


def read_queues(client: Any) -> Any:
    """The pool's work queues, from a sync client, or a coroutine of them from an async one
    (``ObjectNotFound`` when there is no pool)."""
    from prefect.client.schemas.filters import WorkQueueFilter

    # Prefect 3.8's sync client sends nulls the server rejects unless all three are given.
    return client.read_work_queues(
        work_pool_name=WORK_POOL, work_queue_filter=WorkQueueFilter(), limit=200, offset=0
    )


def _read_or_create_pool(client: Any) -> Any:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        return client.read_work_pool(WORK_POOL)
    except ObjectNotFound:
        pass
    template = ProcessWorker.get_default_base_job_template()
    # Another process may create it in between; either way it exists afterwards.
    with contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(
            WorkPoolCreate(name=WORK_POOL, type="process", base_job_template=template)
        )
    return client.read_work_pool(WORK_POOL)

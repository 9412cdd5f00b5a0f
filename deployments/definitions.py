"""The Prefect deployments of the ingest, delete, re-queue and sweep flows, in Python.

Two ways to run them:

- ``serve_deployments()`` serves them from one process, no work pool needed (``serve()`` has
  no work queues, so job priorities only show in the tags);
- ``deploy_to_work_pool()`` creates the ``ingestflow-process`` pool with its priority queues
  (``ensure_work_pool()``) and registers the deployments there, for
  ``prefect worker start --pool ingestflow-process``. ``prefect.yaml`` declares the same
  deployments for ``prefect deploy --all``.

``requeue-documents`` runs every five minutes. The ``sweep-bucket`` deployment is scheduled
by ``INGESTFLOW_SWEEP_CRON`` and sweeps ``INGESTFLOW_SWEEP_URI`` into
``INGESTFLOW_SWEEP_COLLECTION``.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from deployments.requeue import requeue_documents
from flows import delete_documents, ingest_batch, ingest_document, sweep_bucket
from ingestflow.core.settings import get_settings
from ingestflow.core.types import Priority

WORK_POOL = "ingestflow-process"
DEPLOYMENT_TAGS = ["ingestflow"]
# The pool's work queues by name, with their priority (1 is polled first). A run with no
# queue named goes to the pool's default queue, which is "normal".
WORK_QUEUES: dict[str, int] = {
    Priority.HIGH.value: 1,
    Priority.NORMAL.value: 2,
    Priority.LOW.value: 3,
}
DEFAULT_QUEUE = Priority.NORMAL.value
# How often requeue-documents looks for documents left waiting; it only takes those idle for
# INGESTFLOW_QUEUE_STUCK_AFTER_SECONDS, so a short interval costs one cheap query.
REQUEUE_INTERVAL_SECONDS = 300
# A fixed anchor puts runs on five-minute marks; the default anchor (now) would start one
# the moment the deployments are served.
_REQUEUE_ANCHOR = datetime(2024, 1, 1, tzinfo=UTC)


def deployment_specs() -> dict[str, dict[str, Any]]:
    """Name -> keyword arguments shared by ``to_deployment`` and prefect.yaml."""
    return {
        "ingest-document": {
            "description": "Ingest one document by path or URI.",
            "tags": DEPLOYMENT_TAGS,
        },
        "ingest-batch": {
            "description": "Ingest many documents in micro-batches.",
            "tags": DEPLOYMENT_TAGS,
        },
        "delete-documents": {
            "description": "Delete documents: chunks, index rows and uploaded copies.",
            "tags": DEPLOYMENT_TAGS,
        },
        "requeue-documents": {
            "description": "Submit again the documents whose job is gone, on a schedule.",
            "tags": DEPLOYMENT_TAGS,
        },
        "sweep-bucket": {
            "description": "Keep a collection in step with a bucket prefix, on a schedule.",
            "tags": DEPLOYMENT_TAGS,
        },
    }


def build_deployments(*, for_work_pool: bool = False) -> list[Any]:
    """RunnerDeployments of the flows; the sweep only when a URI is configured.

    ``for_work_pool`` targets the pool's default queue and names the flows by module path
    (``flows.ingest.ingest_batch``), so a worker imports them from the installed package
    without any code storage.
    """
    from prefect import Flow
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Interval

    specs = deployment_specs()
    extra: dict[str, Any] = {}
    if for_work_pool:
        extra = {
            "work_pool_name": WORK_POOL,
            "work_queue_name": DEFAULT_QUEUE,
            "entrypoint_type": EntrypointType.MODULE_PATH,
        }
    flows: dict[str, Flow[..., Any]] = {
        "ingest-document": ingest_document,
        "ingest-batch": ingest_batch,
        "delete-documents": delete_documents,
    }
    built = [flow.to_deployment(name=name, **specs[name], **extra) for name, flow in flows.items()]
    requeue: Flow[..., Any] = requeue_documents
    built.append(
        requeue.to_deployment(
            name="requeue-documents",
            schedule=Interval(REQUEUE_INTERVAL_SECONDS, anchor_date=_REQUEUE_ANCHOR),
            **specs["requeue-documents"],
            **extra,
        )
    )
    sweep = get_settings().sweep
    if sweep.uri:
        sweep_flow: Flow[..., Any] = sweep_bucket
        built.append(
            sweep_flow.to_deployment(
                name="sweep-bucket",
                cron=sweep.cron,
                parameters={
                    "uri": sweep.uri,
                    "collection": sweep.collection,
                    "max_delete_fraction": sweep.max_delete_fraction,
                },
                **specs["sweep-bucket"],
                **extra,
            )
        )
    return built


def serve_deployments(limit: int | None = None) -> None:
    """Serve the deployments from this process until interrupted, running at most ``limit``
    flow runs at once (each is a process of its own)."""
    from prefect import serve

    serve(*build_deployments(), limit=limit)


def ensure_work_pool() -> None:
    """Create the ``ingestflow-process`` pool and its queues high (1), normal (2, the
    default) and low (3), or bring existing ones to those priorities. Idempotent.

    A worker polls the queues in priority order, so when the pool or the worker has a
    concurrency limit (``prefect worker start --limit N``) high-priority runs start first.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkQueueFilter

    with get_client(sync_client=True) as client:
        pool = _read_or_create_pool(client)
        # Prefect 3.8's sync client sends nulls the server rejects unless all three are given.
        found = client.read_work_queues(
            work_pool_name=WORK_POOL, work_queue_filter=WorkQueueFilter(), limit=200, offset=0
        )
        queues = {q.name: q for q in found}
        default = next((q for q in queues.values() if q.id == pool.default_queue_id), None)
        if DEFAULT_QUEUE not in queues and default is not None and default.name == "default":
            # Runs that name no queue go to the pool's default queue: make it "normal".
            client.update_work_queue(default.id, name=DEFAULT_QUEUE)
            queues[DEFAULT_QUEUE] = default
        # In priority order: the server renumbers the other queues on every change.
        for name, priority in sorted(WORK_QUEUES.items(), key=lambda item: item[1]):
            queue = queues.get(name)
            if queue is None:
                client.create_work_queue(name=name, priority=priority, work_pool_name=WORK_POOL)
            elif queue.priority != priority:
                client.update_work_queue(queue.id, priority=priority)


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


def deploy_to_work_pool() -> list[UUID]:
    """Register the deployments on the ``ingestflow-process`` pool (creating it and its
    queues first); returns their ids. Run a worker with
    ``prefect worker start --pool ingestflow-process``."""
    ensure_work_pool()
    # RunnerDeployment.apply rather than prefect.deploy(): in Prefect 3.8 the sync deploy()
    # asks the server for the pool's workers with a request it rejects (422).
    return [
        cast(UUID, d.apply(work_pool_name=WORK_POOL, _sync=True))
        for d in build_deployments(for_work_pool=True)
    ]

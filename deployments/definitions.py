"""The Prefect deployments of the ingest, delete, re-queue and sweep flows, in Python.

Two ways to run them, both honouring job priorities and paused queues:

- ``serve_deployments()`` serves them from one process (``deployments.priority_runner``);
- ``deploy_to_work_pool()`` registers them on the ``ingestflow-process`` pool, for
  ``prefect worker start --pool ingestflow-process``. ``prefect.yaml`` declares the same
  deployments for ``prefect deploy --all``.

Either way the pool and its priority queues are created first (``ensure_work_pool()``): they
are where a queue is paused.

``requeue-documents`` runs every five minutes. The ``sweep-bucket`` deployment is scheduled
by ``INGESTFLOW_SWEEP_CRON`` and sweeps ``INGESTFLOW_SWEEP_URI`` into
``INGESTFLOW_SWEEP_COLLECTION``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from deployments.requeue import requeue_documents
from deployments.work_pool import DEFAULT_QUEUE, WORK_POOL, ensure_work_pool
from flows import delete_documents, ingest_batch, ingest_document, ingest_parts, sweep_bucket
from ingestflow.core.settings import get_settings

if TYPE_CHECKING:
    from prefect import Flow

DEPLOYMENT_TAGS = ["ingestflow"]
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
        "ingest-parts": {
            "description": "Help a large ingest job: take its parts until none is left.",
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


def deployed_flows() -> list[tuple[Flow[..., Any], dict[str, Any]]]:
    """Each deployment's flow with the keyword arguments of its deployment (name, schedule,
    parameters, description, tags); the sweep only when a URI is configured."""
    from prefect.schedules import Interval

    specs = deployment_specs()
    flows: list[tuple[Flow[..., Any], dict[str, Any]]] = [
        (ingest_document, {"name": "ingest-document", **specs["ingest-document"]}),
        (ingest_batch, {"name": "ingest-batch", **specs["ingest-batch"]}),
        (ingest_parts, {"name": "ingest-parts", **specs["ingest-parts"]}),
        (delete_documents, {"name": "delete-documents", **specs["delete-documents"]}),
        (
            requeue_documents,
            {
                "name": "requeue-documents",
                "schedule": Interval(REQUEUE_INTERVAL_SECONDS, anchor_date=_REQUEUE_ANCHOR),
                **specs["requeue-documents"],
            },
        ),
    ]
    sweep = get_settings().sweep
    if sweep.uri:
        parameters = {
            "uri": sweep.uri,
            "collection": sweep.collection,
            "max_delete_fraction": sweep.max_delete_fraction,
        }
        options = {"name": "sweep-bucket", "cron": sweep.cron, "parameters": parameters}
        flows.append((sweep_bucket, {**options, **specs["sweep-bucket"]}))
    return flows


def build_deployments(*, for_work_pool: bool = False) -> list[Any]:
    """RunnerDeployments of the flows; the sweep only when a URI is configured.

    ``for_work_pool`` targets the pool's default queue and names the flows by module path
    (``flows.ingest.ingest_batch``), so a worker imports them from the installed package
    without any code storage.
    """
    from prefect.deployments.runner import EntrypointType

    extra: dict[str, Any] = {}
    if for_work_pool:
        extra = {
            "work_pool_name": WORK_POOL,
            "work_queue_name": DEFAULT_QUEUE,
            "entrypoint_type": EntrypointType.MODULE_PATH,
        }
    return [flow.to_deployment(**options, **extra) for flow, options in deployed_flows()]


def serve_deployments(limit: int | None = None, warm: int | None = None) -> None:
    """Serve the deployments from this process until interrupted, running at most ``limit``
    flow runs at once, high-priority runs first. Each run is a process of its own, taken
    from ``warm`` processes kept ready (``deployments.warm_pool``; by default
    ``INGESTFLOW_QUEUE_WARM_PROCESSES``, else as many as ``limit``, or 2; 0 starts a new
    process per run, as Prefect does)."""
    from deployments.priority_runner import serve

    if warm is None:
        warm = get_settings().queue.warm_processes
    ensure_work_pool()
    serve(deployed_flows(), limit=limit, warm=(limit or 2) if warm is None else warm)


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

"""The Prefect deployments of the ingest and sweep flows, defined in Python.

``prefect.yaml`` declares the same deployments for ``prefect deploy --all`` on a process
work pool; ``serve_deployments()`` runs them in this process without a work pool.
The ``sweep-bucket`` deployment is scheduled by ``INGESTFLOW_SWEEP_CRON`` and sweeps
``INGESTFLOW_SWEEP_URI`` into ``INGESTFLOW_SWEEP_COLLECTION``.
"""

from __future__ import annotations

from typing import Any

from ingestflow.settings import get_settings

WORK_POOL = "ingestflow-process"
DEPLOYMENT_TAGS = ["ingestflow"]


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
        "sweep-bucket": {
            "description": "Keep a collection in step with a bucket prefix, on a schedule.",
            "tags": DEPLOYMENT_TAGS,
        },
    }


def build_deployments() -> list[Any]:
    """RunnerDeployments for ``prefect.serve``; the sweep only when a URI is configured."""
    from prefect import Flow

    from flows import ingest_batch, ingest_document, sweep_bucket

    specs = deployment_specs()
    built = [
        ingest_document.to_deployment(name="ingest-document", **specs["ingest-document"]),
        ingest_batch.to_deployment(name="ingest-batch", **specs["ingest-batch"]),
    ]
    sweep = get_settings().sweep
    if sweep.uri:
        flow: Flow[..., Any] = sweep_bucket
        built.append(
            flow.to_deployment(
                name="sweep-bucket",
                cron=sweep.cron,
                parameters={
                    "uri": sweep.uri,
                    "collection": sweep.collection,
                    "max_delete_fraction": sweep.max_delete_fraction,
                },
                **specs["sweep-bucket"],
            )
        )
    return built


def serve_deployments() -> None:
    """Serve the deployments from this process until interrupted."""
    from prefect import serve

    serve(*build_deployments())

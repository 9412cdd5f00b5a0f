"""The Prefect deployments of the ingest flows, defined in Python.

``prefect.yaml`` declares the same deployments for ``prefect deploy --all`` on a process
work pool; ``serve_deployments()`` runs them in this process without a work pool.
"""

from __future__ import annotations

from typing import Any

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
    }


def build_deployments() -> list[Any]:
    """RunnerDeployments for ``prefect.serve``."""
    from prefect import Flow

    from flows import ingest_batch, ingest_document

    flows: dict[str, Flow[..., Any]] = {
        "ingest-document": ingest_document,
        "ingest-batch": ingest_batch,
    }
    return [
        flows[name].to_deployment(name=name, **spec) for name, spec in deployment_specs().items()
    ]


def serve_deployments() -> None:
    """Serve the deployments from this process until interrupted."""
    from prefect import serve

    serve(*build_deployments())

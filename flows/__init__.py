"""Prefect flows: composition of the tasks in ``tasks/``."""

from flows.delete import delete_documents
from flows.fan_out import helped_by, ingest_parts
from flows.ingest import ingest_batch, ingest_document
from flows.sweep import sweep_bucket

__all__ = [
    "delete_documents",
    "helped_by",
    "ingest_batch",
    "ingest_document",
    "ingest_parts",
    "sweep_bucket",
]

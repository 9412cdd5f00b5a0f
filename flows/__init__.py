"""Prefect flows: composition of the tasks in ``tasks/``."""

from flows.ingest import ingest_batch, ingest_document

__all__ = ["ingest_batch", "ingest_document"]

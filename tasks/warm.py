"""What a run would otherwise pay for on its first document, done ahead by a process that
will run flows (a warm flow-run process, a Celery worker's child): the schema check, a
database connection, the default embedder and its client library, a parser process."""

from __future__ import annotations

import importlib
import logging

from ingestflow.core.settings import get_settings
from storage.db import connection
from storage.migrate import ensure_schema
from tasks.embedders import get_embedder
from tasks.sandbox import ParseLimits, shared_sandbox

log = logging.getLogger(__name__)

# Imported by a run's first embedding request or document otherwise: together about 1.5 s.
MODULES = ("openai", "tasks.parsers.pdf", "tasks.parsers.word", "tasks.parsers.webpage")


def warm_up() -> None:
    """Best effort: what fails here, the run meets again and reports."""
    try:
        for name in MODULES:
            importlib.import_module(name)
        ensure_schema()
        with connection() as conn:
            conn.execute("SELECT 1")
        embedder = get_embedder()  # the default provider's client; the model loads lazily
        embedder.count_tokens("warm-up")  # loads the tokenizer, where there is one
        if get_settings().embedding.model_server_url and embedder.provider == "local":
            embedder.embed(["warm-up"])  # our own model server: the client's first request
        settings = get_settings()
        limits = ParseLimits.from_settings(settings.parse)
        if limits.isolation == "process":
            shared_sandbox(settings.ingest.parse_workers, limits).start_idle(1)
    except Exception as exc:  # noqa: BLE001 - the run will meet it again and say so
        log.debug("warm-up did not finish: %s", exc)

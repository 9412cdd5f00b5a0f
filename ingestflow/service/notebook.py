"""The notebook front door, ``from ingestflow import ingest, search, status``: each does the
process-wide set-up first (once per process), then calls the service."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from ingestflow.core.types import IngestResult
from ingestflow.service import documents
from ingestflow.service import ingest as ingesting
from ingestflow.service import search as searching
from ingestflow.service.runtime import prepare

F = TypeVar("F", bound=Callable[..., Any])


def _front_door(fn: F, *, prefect: bool) -> F:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        prepare(prefect=prefect)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def _with_password_hint(result: IngestResult) -> IngestResult:
    """A document that needed a password says how to give one here."""
    hint = "; give its password as ingest(..., password=...)"
    outcomes = [
        replace(o, error=f"{o.error}{hint}") if o.error_code == "password_required" else o
        for o in result.outcomes
    ]
    return replace(result, outcomes=outcomes)


@functools.wraps(ingesting.ingest)
def ingest(*args: Any, **kwargs: Any) -> IngestResult:
    prepare(prefect=True)
    return _with_password_hint(ingesting.ingest(*args, **kwargs))


search = _front_door(searching.search, prefect=False)
status = _front_door(documents.status, prefect=False)

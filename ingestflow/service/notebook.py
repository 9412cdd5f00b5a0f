"""The notebook front door, ``from ingestflow import ingest, search, status``: each does the
process-wide set-up first (once per process), then calls the service."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

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


ingest = _front_door(ingesting.ingest, prefect=True)
search = _front_door(searching.search, prefect=False)
status = _front_door(documents.status, prefect=False)

"""Progress reporting from a running ingest to whoever started it in this process.

``listen(callback)`` scopes a listener to a ``with`` block (a context variable, so concurrent
ingests in other threads or tasks do not see each other's progress).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ingestflow.core.types import DocumentOutcome


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    outcomes: list[DocumentOutcome]


Listener = Callable[[Progress], None]
_listener: ContextVar[Listener | None] = ContextVar("ingestflow_progress", default=None)


@contextmanager
def listen(callback: Listener) -> Iterator[None]:
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def report(progress: Progress) -> None:
    callback = _listener.get()
    if callback is not None:
        callback(progress)

"""Submissions that arrive together leave together: ingest jobs submitted within a short
window (``INGESTFLOW_QUEUE_COALESCE_MS``) of each other for the same tenant, collection,
priority and ``force`` are handed to the backend as one run, whose micro-batches hold all
their documents. A group leaves once no submission joined it for a window, or
``MAX_WAIT_WINDOWS`` windows after its first: one upload waits one window, and a long burst
becomes a few large runs instead of many small ones.

Each job keeps its own record, documents, progress and end (the run names every job with its
sources; ``flows.ingest_batch`` ends each by its own documents). The first submission of a
window waits it out and submits the group; the others wait for that submission, so each
caller still learns at once whether the backend took its job, and a refusal reaches every
caller of the group. A full group (``MAX_GROUP_DOCUMENTS``) leaves without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

MAX_GROUP_DOCUMENTS = 256
MAX_WAIT_WINDOWS = 10

M = TypeVar("M")


@dataclass
class _Group(Generic[M]):
    members: list[M] = field(default_factory=list)
    documents: int = 0
    full: threading.Event = field(default_factory=threading.Event)
    joined: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Coalescer(Generic[M]):
    """Groups members by key for ``window`` seconds and hands each group to ``submit``."""

    def __init__(
        self,
        window: float,
        submit: Callable[[list[M]], None],
        *,
        max_documents: int = MAX_GROUP_DOCUMENTS,
    ) -> None:
        self.window = window
        self.max_documents = max_documents
        self._submit = submit
        self._lock = threading.Lock()
        self._open: dict[Hashable, _Group[M]] = {}

    def add(self, key: Hashable, member: M, documents: int) -> None:
        """Add ``member`` (of ``documents`` documents) to the open group of ``key`` and
        return once the group was submitted; raises what the submission raised."""
        with self._lock:
            group = self._open.get(key)
            leader = group is None
            if group is None:
                group = self._open[key] = _Group()
            group.members.append(member)
            group.documents += documents
            group.joined.set()
            if group.documents >= self.max_documents:
                del self._open[key]  # the next submission starts a new group
                group.full.set()
        if leader:
            self._lead(key, group)
        else:
            group.done.wait()
        if group.error is not None:
            raise group.error

    def _lead(self, key: Hashable, group: _Group[M]) -> None:
        deadline = time.monotonic() + self.window * MAX_WAIT_WINDOWS
        while not group.full.is_set():
            with self._lock:
                group.joined.clear()
            left = deadline - time.monotonic()
            # ``joined`` is set by every add, the one that fills the group too.
            if left <= 0 or not group.joined.wait(min(self.window, left)):
                break  # a window passed with nobody joining, or the group waited its most
        with self._lock:
            if self._open.get(key) is group:
                del self._open[key]
        try:
            self._submit(group.members)
        except BaseException as exc:  # every member's caller hears it
            group.error = exc
        finally:
            group.done.set()

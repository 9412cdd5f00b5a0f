"""One way to plug things in: a named registry per extension point, filled from entry points.

Each extension point (embedders, parsers, object stores, queue backends) is a ``Registry``
with an entry-point group. ingestflow declares its own built-ins in that group in
pyproject.toml exactly as another package declares a plugin in its own::

    [project.entry-points."ingestflow.embedders"]
    my-provider = "my_package.embedder:MyEmbedder"

An entry is loaded (its module imported) only when its name is first asked for, so a cloud
SDK or Celery is imported only by the process that uses it. ``register`` adds an entry at
run time (a notebook, a test), and wins over an entry point of the same name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar, overload

from ingestflow.core.errors import ConfigError

T = TypeVar("T")

EMBEDDERS = "ingestflow.embedders"
PARSERS = "ingestflow.parsers"
STORES = "ingestflow.stores"
QUEUE_BACKENDS = "ingestflow.queue_backends"


class Registry(Generic[T]):
    """Named entries of one kind: ``what`` names the kind in errors ("embedding provider");
    ``unknown`` words the error for a name with no entry, given the name and the known ones."""

    def __init__(
        self, group: str, what: str, unknown: Callable[[str, str], str] | None = None
    ) -> None:
        self.group, self.what = group, what
        self._unknown = unknown or (lambda name, known: f"unknown {what} {name!r} (known: {known})")
        self._entries: dict[str, T] = {}
        self._declared: dict[str, EntryPoint] | None = None
        self._lock = threading.RLock()

    @overload
    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(
        self, name: str, entry: T | None = None, *, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Add ``entry`` under ``name``, or, without ``entry``, return a decorator that adds
        what it decorates. A name that already has another entry is refused unless
        ``replace``."""
        if entry is None:
            return lambda item: self._add(name, item, replace)
        return self._add(name, entry, replace)

    def _add(self, name: str, entry: T, replace: bool) -> T:
        with self._lock:
            known = self._entries.get(name)
            if not replace and known is not None and known is not entry:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Forget the entry registered at run time under ``name`` (an entry point stays)."""
        with self._lock:
            self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry named ``name``, loading its entry point on first use; ``ConfigError``
        naming the known ones when there is none."""
        with self._lock:
            if name not in self._entries:
                declared = self._entry_points().get(name)
                if declared is None:
                    raise ConfigError(self._unknown(name, ", ".join(self.names()) or "none"))
                self._entries[name] = declared.load()
            return self._entries[name]

    def names(self) -> list[str]:
        """Every name that has an entry, registered or declared, sorted."""
        with self._lock:
            return sorted(set(self._entries) | set(self._entry_points()))

    def all(self) -> dict[str, T]:
        """Every entry, each entry point loaded."""
        return {name: self.get(name) for name in self.names()}

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._declared is None:
            self._declared = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._declared

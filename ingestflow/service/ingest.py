"""Ingesting now, in this process: files, folders, globs or URIs through the ingest flows, and
one sweep of a prefix.

    from ingestflow import ingest
    result = ingest(["reports/", "notes/*.md"], collection="docs")
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flows import ingest_batch, ingest_document, sweep_bucket
from flows.sweep import SweepReport
from ingestflow.core.types import IngestResult
from storage.objectstore import scheme_of
from tasks.config import ChunkingConfig
from tasks.work import split_password


def ingest(
    sources: str | Path | Iterable[str | Path],
    *,
    collection: str = "default",
    metadata: dict[str, Any] | None = None,
    force: bool = False,
    batch_size: int | None = None,
    password: str | None = None,
    chunking: ChunkingConfig | None = None,
) -> IngestResult:
    """Ingest files, folders, globs or URIs through the Prefect ingest flow, in this process.

    One source runs ``ingest_document``; several run ``ingest_batch``. ``password`` (or
    ``metadata["password"]``) opens encrypted PDFs and is never stored. ``chunking``
    overrides the chunking settings for this run (and so re-indexes what was chunked
    otherwise).
    """
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    expanded = expand_sources(items)
    public, secret = split_password(metadata, password)
    options: dict[str, Any] = {
        "collection": collection,
        "metadata": public,
        "force": force,
        "password": SecretStr(secret) if secret is not None else None,
    }
    if len(expanded) == 1 and chunking is None:
        return ingest_document(expanded[0], **options)
    return ingest_batch(expanded, batch_size=batch_size, chunking=chunking, **options)


def sweep(
    uri: str,
    *,
    collection: str = "default",
    prune: bool = True,
    max_delete_fraction: float = 0.2,
) -> SweepReport:
    """One sweep of a bucket prefix or folder now (see ``flows.sweep.sweep_bucket``).

    Raises ``SweepGuardError`` when the deletion guard held.
    """
    return sweep_bucket(
        uri, collection=collection, prune=prune, max_delete_fraction=max_delete_fraction
    )


_GLOB_CHARS = frozenset("*?[")


def expand_sources(items: Iterable[str | Path]) -> list[str]:
    """Files stay as given, folders become their files (recursively, hidden ones skipped),
    globs are expanded, and URIs of other schemes pass through. Order is kept, sorted within
    each folder or glob, so runs are repeatable."""
    out: list[str] = []
    for item in items:
        text = str(item)
        if scheme_of(text) != "file" or text.startswith("file://"):
            out.append(text)
            continue
        text = os.path.expanduser(text)
        if _GLOB_CHARS & set(text) and not Path(text).exists():  # report[1].pdf is a file
            out.extend(p for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file())
        elif Path(text).is_dir():
            out.extend(str(p) for p in _files_under(Path(text)))
        else:
            out.append(text)
    return out


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )

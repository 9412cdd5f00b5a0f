"""Turning what a user typed (files, folders, globs, URIs) into a list of sources."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from storage.objectstore import scheme_of

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

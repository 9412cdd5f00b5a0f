"""Judging a system's final state from what it stored and what the corpus folder holds now.

Every system reports its stored chunks as ``[source_file_name, chunk_text]`` pairs, read by
SQL from its own tables. The same rules then apply to all of them, so a store cannot look
clean because of how its own bookkeeping counts:

- a **duplicate** is a (source, text) pair stored more than once: each extra copy counts;
- a chunk is **stale** when its source file is gone from the folder, or when its text no
  longer occurs in the file's current content (both compared after collapsing whitespace,
  since splitters strip and join whitespace differently).

Only plain-text corpora can be judged this way: a PDF's chunks are parsed text, which does
not occur in the file's bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Judgement:
    chunks: int
    duplicates: int
    stale: int
    stale_source_gone: int
    stale_text_changed: int
    sources: int  # distinct source files with at least one chunk
    files_without_chunks: int  # files in the folder that no chunk comes from

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def normalise(text: str) -> str:
    """Whitespace collapsed to single spaces, ends trimmed."""
    return " ".join(text.split())


def judge(chunks: Iterable[Sequence[str]], folder: Path) -> Judgement:
    """Count chunks, duplicates and stale chunks of ``chunks`` against ``folder``'s files."""
    pairs = [(str(source), str(text)) for source, text in chunks]
    copies = Counter(pairs)
    files = {p.name: p for p in folder.iterdir() if p.is_file()}
    current: dict[str, str] = {}
    gone = changed = 0
    for source, text in pairs:
        path = files.get(source)
        if path is None:
            gone += 1
            continue
        if source not in current:
            current[source] = normalise(path.read_text(encoding="utf-8"))
        if normalise(text) not in current[source]:
            changed += 1
    sources = {source for source, _ in pairs}
    return Judgement(
        chunks=len(pairs),
        duplicates=sum(n - 1 for n in copies.values()),
        stale=gone + changed,
        stale_source_gone=gone,
        stale_text_changed=changed,
        sources=len(sources),
        files_without_chunks=len(set(files) - sources),
    )

"""The chunk step: segments -> overlapping chunks that keep provenance and a content hash.

A recursive splitter breaks text at the coarsest boundary that fits (paragraph, line,
sentence, word, character), then packs the pieces greedily up to ``size`` with ``overlap``
carried from the end of the previous chunk. Pieces from consecutive small segments share a
chunk, so a spreadsheet's row groups or a slide deck's short slides do not become tiny chunks;
such a chunk's provenance names the first segment and, as ``<key>_end``, the last one.

Lengths are counted by a function: ``len`` for characters, or an embedder's tokenizer for
token-aware chunking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ingestflow.core.types import Chunk, Segment
from tasks.jobs import chunks_by_job
from tasks.options import stage_task
from tasks.work import DocWork, StageContext, per_document

SEPARATORS = ("\n\n", "\n", ". ", "。", " ")
LengthFn = Callable[[str], int]


@dataclass(frozen=True)
class _Piece:
    text: str
    length: int
    segment: int


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_segments(
    segments: Sequence[Segment],
    *,
    size: int = 1000,
    overlap: int = 200,
    length: LengthFn = len,
) -> list[Chunk]:
    """Split and pack ``segments`` into chunks of at most ``size`` (as counted by ``length``)."""
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap}) must be smaller than chunk size ({size})")
    pieces = [
        _Piece(text, length(text), i)
        for i, seg in enumerate(segments)
        # A paragraph break after each segment keeps packed segments apart in the chunk.
        for text in split_text(seg.text.rstrip() + "\n\n", size=size, length=length)
    ]
    chunks: list[Chunk] = []
    for group in _pack(pieces, size=size, overlap=overlap):
        text = "".join(p.text for p in group).strip()
        if text:
            # Whitespace-only pieces (an empty segment's break) must not widen the provenance.
            content = [p for p in group if p.text.strip()]
            prov = _provenance(segments[content[0].segment], segments[content[-1].segment])
            chunks.append(Chunk(len(chunks), text, content_hash(text), prov))
    return chunks


def split_text(text: str, *, size: int, length: LengthFn = len) -> list[str]:
    """Cut ``text`` into pieces no longer than ``size``; joining them gives ``text`` back."""
    return _split(text, SEPARATORS, size, length)


def _split(text: str, separators: Sequence[str], size: int, length: LengthFn) -> list[str]:
    if length(text) <= size:
        return [text] if text else []
    for i, sep in enumerate(separators):
        if sep in text:
            out: list[str] = []
            for part in _split_keep(text, sep):
                out.extend(_split(part, separators[i + 1 :], size, length))
            return out
    return _hard_cut(text, size, length)


def _split_keep(text: str, sep: str) -> list[str]:
    """Split after each separator, keeping it on the left piece."""
    parts = text.split(sep)
    return [p + sep for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _hard_cut(text: str, size: int, length: LengthFn) -> list[str]:
    """Cut text without separators at the longest prefix that fits (binary search)."""
    out = []
    while text:
        lo, hi = 1, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if length(text[:mid]) <= size:
                lo = mid
            else:
                hi = mid - 1
        out.append(text[:lo])
        text = text[lo:]
    return out


def _pack(pieces: list[_Piece], *, size: int, overlap: int) -> list[list[_Piece]]:
    groups: list[list[_Piece]] = []
    current: list[_Piece] = []
    total = 0
    for piece in pieces:
        if current and total + piece.length > size:
            groups.append(list(current))  # a copy: the overlap trimming below mutates current
            # Keep whole pieces from the end as overlap, as long as they fit the budget
            # and leave room for the next piece.
            while current and (total > overlap or total + piece.length > size):
                total -= current.pop(0).length
        current.append(piece)
        total += piece.length
    if current:
        groups.append(current)
    return groups


def _provenance(first: Segment, last: Segment) -> dict:
    prov = dict(first.provenance)
    if last is not first:
        for key, value in last.provenance.items():
            if prov.get(key) != value:
                prov[f"{key}_end"] = value
    return prov


def chunk_documents(
    works: Sequence[DocWork], ctx: StageContext, *, final_attempt: bool = True
) -> list[DocWork]:
    """The chunk stage over a micro-batch, as ``ctx.config.chunking`` says (sizes counted in
    characters, or in the collection's embedder's tokens); segments are dropped once chunked."""
    chunking = ctx.config.chunking
    length: LengthFn = len
    if chunking.unit == "tokens":
        length = ctx.config.embedding.embedder().count_tokens

    def step(work: DocWork) -> DocWork:
        chunks = chunk_segments(
            work.segments or [], size=chunking.size, overlap=chunking.overlap, length=length
        )
        return replace(work, chunks=chunks, segments=None)

    done = per_document(works, step, stage="chunk", final_attempt=True)
    found = ((w.source, len(w.chunks or [])) for w in done if w.active)
    chunks_by_job(ctx.jobs, found, what="total", flush=True)
    return done


chunk_task = stage_task("chunk", timeout_seconds=1800)(chunk_documents)

"""The parse step: bytes -> text segments with provenance, type detected from content.

Parsing runs in a small thread pool so a micro-batch's documents overlap their I/O; the
parsers themselves live in ``tasks.parsers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from prefect import task

from ingestflow.errors import EmptyDocumentError
from tasks.options import stage_options
from tasks.parsers import parse_file
from tasks.work import DocWork, per_document

# Bump when the parsers' output changes, so the next run re-indexes unchanged bytes.
PARSER_VERSION = 1


def parse_one(work: DocWork) -> DocWork:
    assert work.fetched is not None
    parsed = parse_file(work.fetched.path, filename=work.fetched.filename, password=work.password)
    if not any(seg.text.strip() for seg in parsed.segments):
        raise EmptyDocumentError(f"no text found in this {parsed.media_type} document")
    return replace(work, media_type=parsed.media_type, segments=parsed.segments)


def parse_documents(works: Sequence[DocWork], *, workers: int = 1) -> list[DocWork]:
    """The parse stage over a micro-batch, ``workers`` documents at a time.

    Every parse error is final for its document: the same bytes fail the same way again.
    """

    def one(work: DocWork) -> list[DocWork]:
        return per_document([work], parse_one, stage="parse", final_attempt=True)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="parse") as pool:
        return [w for part in pool.map(one, works) for w in part]


@task(**stage_options("parse", timeout_seconds=3600))
def parse_task(works: list[DocWork], workers: int) -> list[DocWork]:
    return parse_documents(works, workers=workers)

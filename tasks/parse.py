"""The parse step: bytes -> text segments with provenance, type detected from content.

The parsers (``tasks.parsers``) run in worker processes with limits on memory, CPU and wall
time and on the length of the extracted text (``tasks.sandbox``), so a hostile file fails
its own document with a reason naming the limit while the flow's process and the rest of
the micro-batch carry on. A few threads feed the workers, so a micro-batch's documents
are parsed ``workers`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ingestflow.core.errors import EmptyDocumentError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import ParsedDocument
from storage.db import transaction
from storage.passwords import take_passwords
from tasks.options import stage_task
from tasks.sandbox import (
    ParseLimits,
    ParseSandbox,
    parse_in_process,
    shared_sandbox,
)
from tasks.work import DocWork, StageContext, per_document


def parse_one(work: DocWork, limits: ParseLimits, sandbox: ParseSandbox | None = None) -> DocWork:
    """Parse one fetched document, in ``sandbox`` when given, else in this process."""
    assert work.fetched is not None
    fetched = work.fetched
    parsed: ParsedDocument
    if sandbox is not None:
        parsed = sandbox.parse(fetched.path, filename=fetched.filename, password=work.password)
    else:
        parsed = parse_in_process(
            fetched.path,
            filename=fetched.filename,
            password=work.password,
            max_chars=limits.max_chars,
        )
    if not any(seg.text.strip() for seg in parsed.segments):
        raise EmptyDocumentError(f"no text found in this {parsed.media_type} document")
    return replace(work, media_type=parsed.media_type, segments=parsed.segments)


def parse_documents(
    works: Sequence[DocWork],
    ctx: StageContext | None = None,
    *,
    final_attempt: bool = True,
    workers: int | None = None,
    limits: ParseLimits | None = None,
) -> list[DocWork]:
    """The parse stage over a micro-batch, ``workers`` (else ``ctx.limits.parse_workers``) documents
    at a time, within ``limits`` (else the ``INGESTFLOW_PARSE_*`` settings).

    Every parse error is final for its document: the same bytes fail the same way again.
    """
    workers = workers or (ctx.limits.parse_workers if ctx else 1)
    limits = limits or ParseLimits.from_settings(get_settings().parse)
    works = _with_held_passwords(works)
    sandbox = None
    if limits.isolation == "process":
        sandbox = shared_sandbox(workers, limits)

    def one(work: DocWork) -> list[DocWork]:
        def step(w: DocWork) -> DocWork:
            return parse_one(w, limits, sandbox)

        return per_document([work], step, stage="parse", final_attempt=True)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="parse") as pool:
        return [w for part in pool.map(one, works) for w in part]


def _with_held_passwords(works: Sequence[DocWork]) -> list[DocWork]:
    """Documents whose password came with their request (held until now, then gone)."""
    wanting = [w.document_id for w in works if w.active and w.document_id and w.password is None]
    if not wanting:
        return list(works)
    with transaction() as conn:
        held = take_passwords(conn, document_ids=wanting)
    return [replace(w, password=held[w.document_id]) if w.document_id in held else w for w in works]


# Each document is bounded by the sandbox's wall-clock limit; this is only the backstop for
# a whole micro-batch, so it must allow a batch of slow documents.
parse_task = stage_task("parse", timeout_seconds=4 * 3600)(parse_documents)

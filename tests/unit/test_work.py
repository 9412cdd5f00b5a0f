"""Unit tests of tasks.work: per-document isolation, error classification and reasons."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import tasks.work as work_module
from ingestflow.core.errors import FetchError, IngestError, ParseError, StoreError, TooLargeError
from ingestflow.core.types import Chunk, DocumentStatus, FetchedSource, Segment
from tasks.work import DocWork, describe_error, per_document, split_password


def _batch(*names: str) -> list[DocWork]:
    return [DocWork(source=name) for name in names]


class _Step:
    """A stage step that records the documents it saw and fails the ones it is told to."""

    def __init__(self, failures: dict[str, Exception] | None = None) -> None:
        self.failures = failures or {}
        self.seen: list[str] = []

    def __call__(self, work: DocWork) -> DocWork:
        self.seen.append(work.source)
        if work.source in self.failures:
            raise self.failures[work.source]
        return replace(work, media_type="text/plain")


@pytest.mark.parametrize("final_attempt", [False, True])
def test_permanent_error_fails_only_that_document(final_attempt: bool) -> None:
    step = _Step({"b": ParseError("PDF is damaged")})
    works = _batch("a", "b", "c")
    works[1] = replace(works[1], segments=[Segment("x")], chunks=[Chunk(0, "x", "h")])
    out = per_document(works, step, stage="parse", final_attempt=final_attempt)
    assert [w.source for w in out] == ["a", "b", "c"]
    assert [w.status for w in out] == [
        DocumentStatus.PROCESSING,
        DocumentStatus.FAILED,
        DocumentStatus.PROCESSING,
    ]
    assert out[1].error == "PDF is damaged"
    assert out[1].segments is None and out[1].chunks is None and out[1].vectors is None
    assert out[0].media_type == out[2].media_type == "text/plain"
    assert out[1].media_type is None


@pytest.mark.parametrize("error", [FetchError("network blip"), ValueError("odd")])
def test_transient_error_is_raised_after_the_others_are_processed(error: Exception) -> None:
    step = _Step({"b": error})
    with pytest.raises(type(error)) as raised:
        per_document(_batch("a", "b", "c"), step, stage="fetch", final_attempt=False)
    assert raised.value is error
    assert step.seen == ["a", "b", "c"]


def test_first_transient_error_is_the_one_raised() -> None:
    first, second = StoreError("db down"), FetchError("timeout")
    step = _Step({"a": first, "c": second})
    with pytest.raises(StoreError) as raised:
        per_document(_batch("a", "b", "c"), step, stage="upsert", final_attempt=False)
    assert raised.value is first
    assert step.seen == ["a", "b", "c"]


def test_permanent_and_transient_in_one_batch_still_raise_to_retry() -> None:
    step = _Step({"a": TooLargeError("too big"), "b": FetchError("blip")})
    with pytest.raises(FetchError):
        per_document(_batch("a", "b", "c"), step, stage="fetch", final_attempt=False)


def test_transient_error_on_final_attempt_fails_that_document_only() -> None:
    step = _Step({"b": FetchError("connection reset"), "c": KeyError("k")})
    out = per_document(_batch("a", "b", "c", "d"), step, stage="fetch", final_attempt=True)
    assert [w.status for w in out] == [
        DocumentStatus.PROCESSING,
        DocumentStatus.FAILED,
        DocumentStatus.FAILED,
        DocumentStatus.PROCESSING,
    ]
    assert out[1].error == "connection reset"
    assert out[2].error == "unexpected KeyError: 'k' (at __call__)"


def test_inactive_documents_pass_through_untouched() -> None:
    failed = DocWork(source="f", status=DocumentStatus.FAILED, error="earlier")
    unchanged = DocWork(source="u", status=DocumentStatus.UNCHANGED)
    active = DocWork(source="a")
    step = _Step()
    out = per_document([failed, active, unchanged], step, stage="chunk", final_attempt=True)
    assert out[0] is failed and out[2] is unchanged
    assert step.seen == ["a"]
    assert "chunk" not in out[0].timings and "chunk" not in out[2].timings


def test_empty_batch() -> None:
    assert per_document([], _Step(), stage="parse", final_attempt=False) == []


def test_timings_accumulate_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 12.5, 20.0, 20.25])  # two calls, 2.5 s then 0.25 s
    monkeypatch.setattr(work_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    work = DocWork(source="a", timings={"fetch": 1.0, "parse": 3.0})
    [once] = per_document([work], _Step(), stage="fetch", final_attempt=True)
    assert once.timings == {"fetch": 3.5, "parse": 3.0}
    [twice] = per_document([once], _Step(), stage="hash", final_attempt=True)
    assert twice.timings == {"fetch": 3.5, "parse": 3.0, "hash": 0.25}
    assert work.timings == {"fetch": 1.0, "parse": 3.0}  # the input is not mutated


def test_timings_are_real_durations() -> None:
    [done] = per_document(_batch("a"), _Step(), stage="parse", final_attempt=True)
    assert 0.0 <= done.timings["parse"] < 5.0


# describe_error ---------------------------------------------------------------------------


def test_describe_error_gives_the_ingest_error_reason() -> None:
    assert describe_error(ParseError("DOCX is damaged or unreadable: bad zip")) == (
        "DOCX is damaged or unreadable: bad zip"
    )
    assert describe_error(IngestError("plain reason")) == "plain reason"


def _raise_value_error() -> None:
    raise ValueError("bad value")


def test_describe_error_names_unexpected_errors_and_where() -> None:
    try:
        _raise_value_error()
    except ValueError as exc:
        assert describe_error(exc) == "unexpected ValueError: bad value (at _raise_value_error)"


def test_describe_error_is_one_line() -> None:
    def explode() -> None:
        raise RuntimeError("first line\nsecond line\n\n  third")

    try:
        explode()
    except RuntimeError as exc:
        reason = describe_error(exc)
    assert "\n" not in reason
    assert reason == "unexpected RuntimeError: first line second line third (at explode)"


def test_describe_error_without_traceback() -> None:
    assert describe_error(OSError("disk full")) == "unexpected OSError: disk full"


# DocWork and metadata ---------------------------------------------------------------------


def test_split_password_takes_it_out_of_the_metadata() -> None:
    metadata = {"password": "hunter2", "team": "finance", "year": 2024}
    assert split_password(metadata) == ({"team": "finance", "year": 2024}, "hunter2")
    assert metadata["password"] == "hunter2"  # the input is left alone
    assert split_password(metadata, "explicit") == ({"team": "finance", "year": 2024}, "explicit")
    assert split_password(None) == ({}, None)


def test_password_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(DocWork(source="a.pdf", password="hunter2"))


def test_failed_clears_payload_and_keeps_identity() -> None:
    work = DocWork(
        source="a",
        sha256="abc",
        segments=[Segment("x")],
        chunks=[Chunk(0, "x", "h")],
        vectors=np.zeros((1, 3), dtype=np.float32),
    )
    failed = work.failed("no good")
    assert not failed.active
    assert (failed.status, failed.error, failed.sha256) == (DocumentStatus.FAILED, "no good", "abc")
    assert failed.segments is None and failed.chunks is None and failed.vectors is None


def test_active_only_while_processing() -> None:
    assert DocWork(source="a").active
    for status in set(DocumentStatus) - {DocumentStatus.PROCESSING}:
        assert not DocWork(source="a", status=status).active


def test_outcome_prefers_the_canonical_uri_and_counts_chunks(tmp_path: Path) -> None:
    fetched = FetchedSource("file:///data/a.txt", tmp_path / "f", 3, "h", "a.txt")
    work = DocWork(source="a.txt", fetched=fetched, chunks=[Chunk(0, "x", "h")] * 4, embedded=2)
    outcome = work.outcome()
    assert (outcome.source_uri, outcome.chunk_count, outcome.embedded_chunks) == (
        "file:///data/a.txt",
        4,
        2,
    )
    bare = DocWork(source="a.txt", chunk_count=7).outcome()
    assert (bare.source_uri, bare.chunk_count) == ("a.txt", 7)


def test_result_counts_by_enum_or_value():
    from ingestflow.core.types import DocumentOutcome, IngestResult

    result = IngestResult(
        "c",
        [
            DocumentOutcome("a", DocumentStatus.INDEXED),
            DocumentOutcome("b", DocumentStatus.FAILED, error="x"),
        ],
    )
    assert result.count("indexed") == result.count(DocumentStatus.INDEXED) == 1
    assert [o.source_uri for o in result.failed] == ["b"]

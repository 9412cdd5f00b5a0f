"""Every failure gets a stable snake_case error code next to its human reason."""

from __future__ import annotations

import pickle
import re
from dataclasses import replace

import pytest

from ingestflow.core import errors
from ingestflow.core.errors import (
    BackendUnavailableError,
    CollectionMismatchError,
    ConfigError,
    EmbedError,
    EmbedRequestRejected,
    EmptyDocumentError,
    EncryptedDocumentError,
    FetchError,
    IngestError,
    InvalidKeyError,
    InvalidRequestError,
    ParseError,
    SourceNotFoundError,
    StoreError,
    TooLargeError,
    UnsupportedTypeError,
)
from ingestflow.core.types import DocumentStatus
from tasks.work import INTERNAL_ERROR, DocWork, error_code, per_document

EXPECTED: dict[type[IngestError], str] = {
    IngestError: "ingest_error",
    ConfigError: "config_error",
    FetchError: "fetch_error",
    SourceNotFoundError: "source_not_found",
    TooLargeError: "too_large",
    ParseError: "parse_error",
    UnsupportedTypeError: "unsupported_type",
    EncryptedDocumentError: "encrypted",
    errors.PasswordRequiredError: "password_required",
    EmptyDocumentError: "empty_document",
    EmbedError: "embed_error",
    EmbedRequestRejected: "embed_rejected",
    StoreError: "store_error",
    InvalidKeyError: "invalid_key",
    CollectionMismatchError: "collection_mismatch",
    InvalidRequestError: "invalid_request",
    BackendUnavailableError: "backend_unavailable",
    errors.ParseLimitError: "parse_limit",
    errors.ParseMemoryLimitError: "parse_memory_limit",
    errors.ParseTimeLimitError: "parse_time_limit",
    errors.ParseOutputLimitError: "parse_output_limit",
    errors.ParserCrashedError: "parser_crashed",
    errors.CollectionNotFoundError: "collection_not_found",
    errors.DocumentNotFoundError: "document_not_found",
    errors.JobNotFoundError: "job_not_found",
    errors.QueueNotFoundError: "queue_not_found",
    errors.JobConflictError: "job_conflict",
    errors.DocumentsFailedError: "documents_failed",
    errors.LimitExceededError: "limit_exceeded",
    errors.RateLimitedError: "rate_limited",
    errors.TooManyJobsError: "too_many_jobs",
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_error_class_has_its_code(cls: type[IngestError]) -> None:
    assert error_code(cls("some reason")) == EXPECTED[cls]


def test_every_error_class_of_the_hierarchy_is_covered() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, IngestError)
    }
    assert defined == set(EXPECTED)


def test_codes_are_snake_case_and_distinct() -> None:
    codes = list(EXPECTED.values()) + [INTERNAL_ERROR]
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", c) for c in codes)
    assert len(set(codes)) == len(codes)


def test_a_subclass_without_a_code_inherits_its_parents() -> None:
    class ImageOnlyPdf(EmptyDocumentError):
        pass

    assert error_code(ImageOnlyPdf("no text layer")) == "empty_document"


def test_an_instance_may_refine_its_code() -> None:
    exc = InvalidRequestError("bad multipart body")
    exc.code = "malformed_multipart"
    assert error_code(exc) == "malformed_multipart"
    assert error_code(InvalidRequestError("other")) == "invalid_request"


@pytest.mark.parametrize("exc", [ValueError("odd"), KeyError("k"), OSError("disk full")])
def test_unexpected_exceptions_are_internal_errors(exc: Exception) -> None:
    assert error_code(exc) == INTERNAL_ERROR == "internal_error"


def test_code_survives_pickling() -> None:
    # Stage results cross process boundaries (Prefect results, Celery payloads).
    assert error_code(pickle.loads(pickle.dumps(TooLargeError("too big")))) == "too_large"


def test_failed_documents_carry_the_code_of_their_error() -> None:
    failures: dict[str, Exception] = {
        "encrypted.pdf": EncryptedDocumentError("PDF is encrypted"),
        "big.bin": TooLargeError("larger than 10 bytes"),
        "odd.txt": ZeroDivisionError("division by zero"),
    }

    def step(work: DocWork) -> DocWork:
        if work.source in failures:
            raise failures[work.source]
        return replace(work, media_type="text/plain")

    works = [DocWork(source=s) for s in ["ok.txt", *failures]]
    out = per_document(works, step, stage="parse", final_attempt=True)
    assert [(w.source, w.status, w.error_code) for w in out] == [
        ("ok.txt", DocumentStatus.PROCESSING, None),
        ("encrypted.pdf", DocumentStatus.FAILED, "encrypted"),
        ("big.bin", DocumentStatus.FAILED, "too_large"),
        ("odd.txt", DocumentStatus.FAILED, "internal_error"),
    ]
    assert out[1].error == "PDF is encrypted"


def test_failed_defaults_to_internal_error() -> None:
    failed = DocWork(source="a").failed("something broke")
    assert (failed.error, failed.error_code) == ("something broke", INTERNAL_ERROR)
    assert DocWork(source="a").failed("no text", "empty_document").error_code == "empty_document"

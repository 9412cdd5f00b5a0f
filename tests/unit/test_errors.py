"""Unit tests of ingestflow.core.errors: classification and pickling of every error class."""

from __future__ import annotations

import inspect
import pickle

import pytest

from ingestflow.core import errors
from ingestflow.core.errors import IngestError, is_permanent

PERMANENT = {
    errors.ConfigError,
    errors.SourceNotFoundError,
    errors.TooLargeError,
    errors.ParseError,
    errors.UnsupportedTypeError,
    errors.EncryptedDocumentError,
    errors.PasswordRequiredError,
    errors.EmptyDocumentError,
    errors.EmbedRequestRejected,
    errors.CollectionMismatchError,
    errors.InvalidKeyError,
    errors.InvalidRequestError,
    errors.ParseLimitError,
    errors.ParseMemoryLimitError,
    errors.ParseTimeLimitError,
    errors.ParseOutputLimitError,
    errors.ParserCrashedError,
    errors.CollectionNotFoundError,
    errors.DocumentNotFoundError,
    errors.JobNotFoundError,
    errors.QueueNotFoundError,
    errors.JobConflictError,
    errors.DocumentsFailedError,
    errors.LimitExceededError,
    errors.RateLimitedError,
    errors.TooManyJobsError,
}
TRANSIENT = {
    errors.IngestError,
    errors.FetchError,
    errors.EmbedError,
    errors.StoreError,
    errors.BackendUnavailableError,
}
ALL = sorted(PERMANENT | TRANSIENT, key=lambda cls: cls.__name__)


def test_every_error_class_is_classified_here() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, IngestError)
    }
    assert defined <= PERMANENT | TRANSIENT, "a new error class needs a row in this test"


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_is_permanent(cls: type[IngestError]) -> None:
    assert is_permanent(cls("reason")) is (cls in PERMANENT)


@pytest.mark.parametrize("cls", ALL, ids=lambda cls: cls.__name__)
def test_pickles_with_class_and_reason(cls: type[IngestError]) -> None:
    try:
        raise cls("the file is damaged: bad header") from ValueError("cause")
    except IngestError as exc:
        original = exc
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert copy.reason == original.reason == "the file is damaged: bad header"
    assert str(copy) == str(original)
    assert copy.args == original.args
    assert is_permanent(copy) is is_permanent(original)


@pytest.mark.parametrize("exc", [ValueError("x"), OSError("disk"), KeyboardInterrupt()])
def test_other_exceptions_are_not_permanent(exc: BaseException) -> None:
    assert not is_permanent(exc)


def test_subclasses_inherit_their_stage() -> None:
    assert issubclass(errors.SourceNotFoundError, errors.FetchError)
    assert issubclass(errors.TooLargeError, errors.FetchError)
    assert issubclass(errors.EmptyDocumentError, errors.ParseError)
    assert issubclass(errors.EmbedRequestRejected, errors.EmbedError)
    assert all(issubclass(cls, IngestError) for cls in ALL)

"""README says what the code does: its error codes, its routes and its settings are read from
the code and compared with README's lists, so neither can change without the other."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

from api.app import create_app
from api.errors import ANSWERS, _http_code
from ingestflow.core import errors, settings
from tasks.work import INTERNAL_ERROR

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
CODE = re.compile(r"`([a-z]+(?:_[a-z]+)*)`")
# Codes written where an answer is made: ApiError(401, "missing_api_key", ...) and the like.
LITERAL = re.compile(r"(?:ApiError|error_response)\(\s*\d{3},\s*\"([a-z_]+)\"")
# The generic handler's codes for requests no route takes (or whose body cannot be read).
HTTP_WORDS = {_http_code(404), _http_code(405), _http_code(400)}
# Document failures come from the stages: what fetching, parsing, embedding and storing raise,
# a configuration the run found wrong, and a cancelled job's unfinished documents.
DOCUMENT_ERRORS = (
    errors.FetchError,
    errors.ParseError,
    errors.EmbedError,
    errors.StoreError,
    errors.ConfigError,
    errors.InvalidKeyError,
)


def listed(label: str) -> set[str]:
    """The backquoted codes of README's paragraph that starts with ``label``."""
    start = README.index(label)
    end = README.find("\n\n", start)
    return set(CODE.findall(README[start:end]))


def test_readme_lists_every_error_code_an_answer_can_carry():
    shown = {answer.shown_as or code for code, answer in ANSWERS.items()}
    literals = {
        code
        for path in (REPO / "api").rglob("*.py")
        for code in LITERAL.findall(path.read_text(encoding="utf-8"))
    }
    assert listed("API error codes:") == shown | literals | HTTP_WORDS


def test_readme_lists_every_error_code_a_document_can_carry():
    codes = {
        cls.__dict__.get("code", "")
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, DOCUMENT_ERRORS)
    }
    assert listed("Document error codes:") == (codes - {""}) | {"cancelled", INTERNAL_ERROR}


def test_readme_lists_every_route():
    routes = {
        (method, path)
        for path, operations in create_app().openapi()["paths"].items()
        for method in operations
    }
    table = README[README.index("**Routes**") : README.index("**Tenants and operators.**")]
    for method, path in sorted(routes):
        tail = path.removeprefix("/v1/collections/{collection}")
        spellings = {path, f"...{tail}", path.replace("{collection}", "{c}")}
        spellings |= {s.replace("{queue}", "{q}").replace("{job_id}", "{id}") for s in spellings}
        spellings |= {s.replace("{document_id}", "{id}") for s in spellings}
        assert any(f"{method.upper()} {s}`" in table for s in spellings), (method, path)
    assert "GET /v1/jobs/{id}/ws" in table  # a WebSocket is not in the OpenAPI schema


def documented_settings() -> set[str]:
    """Every variable README's settings table names. A row may abbreviate the ones after its
    first: ``| `INGESTFLOW_CHUNK_SIZE` / `_CHUNK_OVERLAP` |`` names INGESTFLOW_CHUNK_OVERLAP."""
    found: set[str] = set()
    for row in re.findall(r"^\| (`[A-Z][^|]*)\|", README, flags=re.MULTILINE):
        names = re.findall(r"`(_?[A-Z][A-Z0-9_]*)`", row)
        full = [n for n in names if not n.startswith("_")]
        found.update(full)
        if full:
            parts = full[0].split("_")
            prefixes = {"_".join(parts[:i]) for i in range(1, len(parts))}
            found.update(p + n for n in names if n.startswith("_") for p in prefixes)
    return found


def test_readme_lists_every_setting():
    documented = documented_settings()
    missing = [
        settings._variable(cls, name)
        for cls in vars(settings).values()
        if isinstance(cls, type) and issubclass(cls, BaseSettings) and cls is not BaseSettings
        for name in cls.model_fields
        if settings._variable(cls, name) not in documented
    ]
    assert not missing, f"README's settings table lacks {missing}"

"""The one registry mechanism: entries from entry points (the built-ins too), loaded on first
use, and entries registered at run time; a plugin package installed beside ingestflow is
found the same way a built-in is."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestflow.core import registry
from ingestflow.core.errors import ConfigError
from ingestflow.core.registry import Registry
from ingestflow.core.types import Segment
from tasks.parsers import base as parsers_base
from tasks.parsers import parse_file, register_parser
from tasks.parsers.base import FunctionParser


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A package installed beside ingestflow (a module and a dist-info with entry points), as
    ``pip install`` leaves one: it declares an embedder, a parser, a store and a backend."""
    (tmp_path / "logbook_plugin.py").write_text(
        textwrap.dedent(
            """
            from ingestflow.core.types import Segment
            from tasks.parsers import parser

            @parser("application/x-logbook", label="logbook", extensions=(".logbook",))
            def parse_logbook(source):
                for number, line in enumerate(source.path.read_text().splitlines(), 1):
                    yield Segment(line.upper(), {"line": number})

            def backend():
                return "a backend"
            """
        )
    )
    info = tmp_path / "logbook_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: logbook-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[ingestflow.parsers]\nlogbook = logbook_plugin:parse_logbook\n\n"
        "[ingestflow.queue_backends]\nlogbook = logbook_plugin:backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("logbook_plugin", None)


def test_the_builtins_are_entry_points() -> None:
    assert {"local", "openai"} <= set(Registry(registry.EMBEDDERS, "x").names())
    assert {"file", "s3", "gs", "az"} == set(Registry(registry.STORES, "x").names())
    assert {"prefect", "celery"} == set(Registry(registry.QUEUE_BACKENDS, "x").names())
    parsers = Registry(registry.PARSERS, "x").names()
    assert {"pdf", "docx", "xlsx", "pptx", "html", "csv", "json", "markdown", "text"} <= set(
        parsers
    )


def test_an_entry_is_imported_only_when_its_name_is_used(plugin_package: Path) -> None:
    backends = Registry(registry.QUEUE_BACKENDS, "queue backend")
    assert "logbook" in backends.names()
    assert "logbook_plugin" not in sys.modules
    assert backends.get("logbook")() == "a backend"
    assert "logbook_plugin" in sys.modules


def test_an_unknown_name_is_a_config_error_naming_the_known_ones() -> None:
    backends = Registry(registry.QUEUE_BACKENDS, "queue backend")
    with pytest.raises(ConfigError, match=r"unknown queue backend 'rabbit' \(known: celery, pre"):
        backends.get("rabbit")


def test_registered_at_run_time_wins_and_a_clash_needs_replace() -> None:
    things: Registry[str] = Registry("ingestflow.nothing", "thing")
    things.register("a", "first")
    with pytest.raises(ValueError, match="already registered"):
        things.register("a", "second")
    things.register("a", "second", replace=True)

    @things.register("b")
    def b() -> str:
        return "made by b"

    assert things.get("a") == "second" and things.get("b") is b
    assert things.names() == ["a", "b"]
    things.unregister("a")
    with pytest.raises(ConfigError):
        things.get("a")


def test_a_plugin_parser_is_found_by_its_extension(
    plugin_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh parser index, read from the entry points as they are now.
    monkeypatch.setattr(parsers_base, "PARSERS", Registry(registry.PARSERS, "parser"))
    monkeypatch.setattr(parsers_base, "_by_type", None)
    entry = tmp_path / "trip.logbook"
    entry.write_text("cast off\nwind NW 4")
    parsed = parse_file(entry)
    assert parsed.media_type == "application/x-logbook"
    assert parsed.segments == [Segment("CAST OFF", {"line": 1}), Segment("WIND NW 4", {"line": 2})]
    # Content the built-in detection recognises keeps its own parser.
    named = tmp_path / "really.logbook"
    named.write_text("<!doctype html><html><body><p>a page</p></body></html>")
    assert parse_file(named).media_type == "text/html"


def test_register_parser_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsers_base, "_by_type", dict(parsers_base._index()))
    shouty = FunctionParser(
        ("application/x-shout",),
        "shout",
        lambda s: [Segment(s.path.read_text().upper())],
        (".shout",),
    )
    register_parser(shouty)
    note = tmp_path / "a.shout"
    note.write_text("hi")
    assert parse_file(note).segments == [Segment("HI")]

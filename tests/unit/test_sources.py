"""Unit tests of ingestflow.service.ingest.expand_sources on a generated folder tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestflow.service.ingest import expand_sources


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = [
        "docs/b.md",
        "docs/a.md",
        "docs/notes.txt",
        "docs/sub/c.txt",
        "docs/sub/deeper/d.txt",
        "docs/.hidden.txt",
        "docs/.git/config",
        "docs/sub/.cache/e.txt",
        "top.txt",
        "report[1].pdf",
        "report1.pdf",
    ]
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (tmp_path / "docs" / "empty-dir").mkdir()
    return tmp_path


def _rel(root: Path, paths: list[str]) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


def test_folder_expands_recursively_sorted_skipping_hidden(tree: Path) -> None:
    out = expand_sources([tree / "docs"])
    assert _rel(tree, out) == [
        "docs/a.md",
        "docs/b.md",
        "docs/notes.txt",
        "docs/sub/c.txt",
        "docs/sub/deeper/d.txt",
    ]


def test_hidden_folder_given_explicitly_is_expanded(tree: Path) -> None:
    assert _rel(tree, expand_sources([str(tree / "docs" / ".git")])) == ["docs/.git/config"]


def test_glob_is_expanded_sorted(tree: Path) -> None:
    assert _rel(tree, expand_sources([f"{tree}/docs/*.md"])) == ["docs/a.md", "docs/b.md"]


def test_recursive_glob_skips_hidden_and_folders(tree: Path) -> None:
    out = expand_sources([f"{tree}/docs/**/*.txt"])
    assert _rel(tree, out) == ["docs/notes.txt", "docs/sub/c.txt", "docs/sub/deeper/d.txt"]
    assert _rel(tree, expand_sources([f"{tree}/docs/*"])) == ["docs/a.md", "docs/b.md"] + [
        "docs/notes.txt"
    ]


def test_glob_matching_nothing_gives_nothing(tree: Path) -> None:
    assert expand_sources([f"{tree}/*.nope"]) == []


def test_relative_glob_and_folder(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert expand_sources(["docs/*.md"]) == ["docs/a.md", "docs/b.md"]
    assert expand_sources(["docs/sub"]) == ["docs/sub/c.txt", "docs/sub/deeper/d.txt"]


def test_existing_file_with_glob_characters_is_kept_as_given(tree: Path) -> None:
    name = str(tree / "report[1].pdf")
    assert expand_sources([name]) == [name]


def test_order_of_items_is_kept(tree: Path) -> None:
    items = [
        "s3://bucket/prefix/z.pdf",
        str(tree / "top.txt"),
        f"{tree}/docs/*.md",
        "file:///data/a%20b.txt",
        str(tree / "docs" / "sub"),
        "gs://b/k",
        "az://container/blob",
        str(tree / "missing.pdf"),
    ]
    assert expand_sources(items) == [
        "s3://bucket/prefix/z.pdf",
        str(tree / "top.txt"),
        str(tree / "docs" / "a.md"),
        str(tree / "docs" / "b.md"),
        "file:///data/a%20b.txt",
        str(tree / "docs" / "sub" / "c.txt"),
        str(tree / "docs" / "sub" / "deeper" / "d.txt"),
        "gs://b/k",
        "az://container/blob",
        str(tree / "missing.pdf"),
    ]


def test_uris_pass_through_even_with_glob_characters() -> None:
    # Object stores are not globbed here; the URI is the user's to get right.
    items = ["s3://bucket/*.pdf", "file:///nowhere/[x].txt"]
    assert expand_sources(items) == items


def test_nonexistent_plain_paths_are_kept(tmp_path: Path) -> None:
    items: list[str | Path] = ["relative/missing.txt", str(tmp_path / "missing")]
    items.append(Path("also/missing.pdf"))
    assert expand_sources(items) == ["relative/missing.txt", str(tmp_path / "missing")] + [
        str(Path("also/missing.pdf"))
    ]


def test_empty_input() -> None:
    assert expand_sources([]) == []


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    assert expand_sources(["~/docs"]) == [str(tmp_path / "docs" / "a.txt")]

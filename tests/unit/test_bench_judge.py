"""The bench's judge of a final state: chunk count, duplicates, stale chunks."""

from __future__ import annotations

from pathlib import Path

from bench.judge import judge


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_counts_duplicates_and_both_kinds_of_stale(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "Alpha beta.\nGamma  delta epsilon.")
    write(tmp_path, "b.txt", "Zeta eta theta.")
    write(tmp_path, "c.txt", "Never indexed.")
    chunks = [
        ["a.txt", "Alpha beta. Gamma"],  # found after collapsing the newline
        ["a.txt", "Gamma delta epsilon."],  # found after collapsing the double space
        ["a.txt", "Gamma delta epsilon."],  # a second copy: one duplicate
        ["b.txt", "Zeta eta theta."],
        ["b.txt", "Zeta old text."],  # b.txt no longer holds this: stale
        ["gone.txt", "Deleted source."],  # no such file: stale
        ["gone.txt", "Deleted source."],  # stale and a duplicate
    ]

    result = judge(chunks, tmp_path)

    assert result.chunks == 7
    assert result.duplicates == 2
    assert result.stale_text_changed == 1
    assert result.stale_source_gone == 2
    assert result.stale == 3
    assert result.sources == 3  # a.txt, b.txt, gone.txt
    assert result.files_without_chunks == 1  # c.txt


def test_a_clean_store_has_nothing_to_report(tmp_path: Path) -> None:
    write(tmp_path, "1.txt", "One sentence. Another sentence.")
    write(tmp_path, "2.txt", "Two.")

    result = judge(
        [("1.txt", "One sentence."), ("1.txt", "Another sentence."), ("2.txt", "Two.")], tmp_path
    )

    assert (result.chunks, result.duplicates, result.stale) == (3, 0, 0)
    assert result.files_without_chunks == 0


def test_the_same_text_in_two_sources_is_not_a_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "x.txt", "Shared words.")
    write(tmp_path, "y.txt", "Shared words.")

    result = judge([("x.txt", "Shared words."), ("y.txt", "Shared words.")], tmp_path)

    assert result.duplicates == 0
    assert result.stale == 0

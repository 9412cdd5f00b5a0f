"""Unit tests of tasks.chunk: the recursive splitter and the packer, on generated inputs."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from ingestflow.core.errors import ConfigError
from ingestflow.core.settings import get_settings
from ingestflow.core.types import DocumentStatus, Segment
from tasks.chunk import chunk_documents, chunk_segments, content_hash, split_text
from tasks.config import ChunkingConfig, EmbeddingConfig, PipelineConfig
from tasks.work import DocWork, StageContext

# Atoms for random texts: words, every separator the splitter knows, CJK runs without spaces,
# long words, and characters outside ASCII.
_ATOMS = [
    "lorem",
    "ipsum",
    "dolor",
    "a",
    "\n\n",
    "\n",
    ". ",
    "。",
    " ",
    "  ",
    "\t",
    "漢字仮名交じり文",
    "x" * 57,
    "é",
    "🙂",
]


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:  # no separator at all
        return "".join(rng.choice("abc") for _ in range(rng.randint(0, 400)))
    if kind < 0.3:  # CJK without spaces or full stops
        return "".join(rng.choice("日本語の文章を書きます") for _ in range(rng.randint(0, 400)))
    if kind < 0.35:  # one very long word
        return "w" * rng.randint(1, 3000)
    return "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 150)))


def _words(n: int, start: int = 0) -> list[str]:
    """Distinct fixed-width words, so any chunk holding a whole word is found once."""
    return [f"w{i:05d}" for i in range(start, start + n)]


def _word_count(text: str) -> int:
    return len(text.split())


def _spans(text: str, chunks: list[str]) -> list[tuple[int, int]]:
    spans = []
    for chunk in chunks:
        start = text.find(chunk)
        assert start >= 0, f"chunk not found in the source text: {chunk!r}"
        assert text.find(chunk, start + 1) == -1, f"chunk is ambiguous: {chunk!r}"
        spans.append((start, start + len(chunk)))
    return spans


# split_text -------------------------------------------------------------------------------


def test_split_text_round_trips_and_respects_size_over_random_inputs() -> None:
    rng = random.Random(20240611)
    for _ in range(400):
        text = _random_text(rng)
        size = rng.randint(1, 150)
        pieces = split_text(text, size=size)
        assert "".join(pieces) == text
        assert all(0 < len(p) <= size for p in pieces), (text, size, pieces)


def test_split_text_round_trips_with_a_token_length() -> None:
    rng = random.Random(7)
    for _ in range(200):
        text = _random_text(rng)
        size = rng.randint(1, 20)
        pieces = split_text(text, size=size, length=_word_count)
        assert "".join(pieces) == text
        assert all(p and _word_count(p) <= size for p in pieces)


def test_split_text_cuts_text_without_separators_at_size() -> None:
    assert [len(p) for p in split_text("x" * 2500, size=1000)] == [1000, 1000, 500]


def test_split_text_cuts_cjk_without_spaces() -> None:
    text = "日本語の文章を書きます" * 30
    pieces = split_text(text, size=7)
    assert "".join(pieces) == text
    assert [len(p) for p in pieces[:-1]] == [7] * (len(pieces) - 1)


def test_split_text_prefers_cjk_full_stops_over_hard_cuts() -> None:
    text = "日本語の文章。" * 4
    assert split_text(text, size=10) == ["日本語の文章。"] * 4


def test_split_text_prefers_the_coarsest_separator() -> None:
    text = "one two\n\nthree four"
    assert split_text(text, size=12) == ["one two\n\n", "three four"]
    assert split_text(text, size=100) == [text]
    assert split_text("", size=10) == []


# chunk_segments: shape -------------------------------------------------------------------


def test_chunks_respect_size_and_are_well_formed_over_random_inputs() -> None:
    rng = random.Random(1234)
    for _ in range(150):
        segments = [
            Segment(_random_text(rng), {"page": n}) for n in range(1, rng.randint(1, 5) + 1)
        ]
        size = rng.randint(2, 300)
        overlap = rng.randint(0, size - 1)
        chunks = chunk_segments(segments, size=size, overlap=overlap)
        assert [c.ordinal for c in chunks] == list(range(len(chunks)))
        for chunk in chunks:
            assert 0 < len(chunk.content) <= size
            assert chunk.content == chunk.content.strip()
            assert chunk.content_hash == hashlib.sha256(chunk.content.encode()).hexdigest()
        # Every non-whitespace character of the input lands in some chunk.
        source_chars = sum(len("".join(s.text.split())) for s in segments)
        chunk_chars = sum(len("".join(c.content.split())) for c in chunks)
        assert chunk_chars >= source_chars


def test_content_hash_is_sha256_of_utf8() -> None:
    assert content_hash("héllo 🙂") == hashlib.sha256("héllo 🙂".encode()).hexdigest()


def test_output_is_deterministic() -> None:
    segments = [Segment(" ".join(_words(300)), {"page": 1}), Segment("tail text", {"page": 2})]
    first = chunk_segments(segments, size=120, overlap=30)
    assert first == chunk_segments(segments, size=120, overlap=30)
    assert len(first) > 5


@pytest.mark.parametrize("overlap", [100, 101, 500])
def test_overlap_not_smaller_than_size_is_rejected(overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_segments([Segment("text")], size=100, overlap=overlap)


@pytest.mark.parametrize(
    "segments",
    [[], [Segment("")], [Segment("   \n\n\t  ")], [Segment(""), Segment(" \n "), Segment("\t")]],
)
def test_empty_or_whitespace_segments_make_no_chunks(segments: list[Segment]) -> None:
    assert chunk_segments(segments, size=50, overlap=10) == []


# chunk_segments: coverage and overlap ----------------------------------------------------


@pytest.mark.parametrize(("size", "overlap"), [(60, 15), (100, 40), (200, 0), (37, 36)])
def test_chunks_cover_the_text_in_order_with_bounded_overlap(size: int, overlap: int) -> None:
    words = _words(200)
    text = " ".join(words)
    chunks = [c.content for c in chunk_segments([Segment(text)], size=size, overlap=overlap)]
    assert len(set(chunks)) == len(chunks), "chunks repeat"
    spans = _spans(text, chunks)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (start, end), (next_start, next_end) in zip(spans, spans[1:], strict=False):
        assert start < next_start and end < next_end
        shared = end - next_start
        assert shared <= overlap, "overlap exceeds its budget"
        if overlap >= len(words[0]) + 1:
            assert shared > 0, "consecutive chunks should share text"
        else:
            assert next_start <= end + 1, "a gap between chunks loses text"
    covered = " ".join(chunks).split()
    assert set(covered) == set(words)


def test_overlap_is_carried_from_the_previous_chunk_end() -> None:
    text = " ".join(_words(20))  # 20 words of 6 chars
    chunks = chunk_segments([Segment(text)], size=35, overlap=14)
    assert chunks[0].content == "w00000 w00001 w00002 w00003 w00004"
    assert len(chunks[0].content) == 34
    # The last two words (14 chars with their spaces) start the next chunk.
    assert chunks[1].content.startswith("w00003 w00004 w00005")


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    paragraphs = [f"paragraph {i} " + "text " * 10 for i in range(6)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk_segments([Segment(text)], size=130, overlap=20)
    for chunk in chunks:
        # No chunk starts or ends in the middle of a paragraph.
        assert chunk.content.startswith("paragraph")
        assert chunk.content.endswith("text")


# chunk_segments: segments and provenance -------------------------------------------------


def test_small_segments_are_packed_together_without_fusing_words() -> None:
    rows = [Segment(f"row {i} value {i * 10}", {"sheet": "Data", "row": i}) for i in range(10)]
    chunks = chunk_segments(rows, size=1000, overlap=200)
    assert len(chunks) == 1
    assert chunks[0].content.split() == " ".join(r.text for r in rows).split()
    assert chunks[0].provenance == {"sheet": "Data", "row": 0, "row_end": 9}


def test_chunk_spanning_segments_records_the_last_segment_as_end() -> None:
    segments = [Segment("first page text", {"page": 1}), Segment("second page", {"page": 2})]
    [chunk] = chunk_segments(segments, size=100, overlap=10)
    assert chunk.provenance == {"page": 1, "page_end": 2}


def test_chunk_within_one_segment_has_that_segments_provenance() -> None:
    segments = [
        Segment(" ".join(_words(25)), {"page": 1, "heading": "Intro"}),
        Segment(" ".join(_words(30, start=25)), {"page": 2, "heading": "Intro"}),
    ]
    chunks = chunk_segments(segments, size=70, overlap=0)
    assert chunks[0].provenance == {"page": 1, "heading": "Intro"}
    assert chunks[-1].provenance == {"page": 2, "heading": "Intro"}
    spanning = [c for c in chunks if "w00024" in c.content and "w00025" in c.content]
    assert spanning
    for chunk in spanning:  # shared keys with equal values get no _end twin
        assert chunk.provenance == {"page": 1, "heading": "Intro", "page_end": 2}


def test_empty_segment_does_not_widen_provenance() -> None:
    # An empty segment still yields a paragraph break; packed first in a chunk, or carried as
    # overlap into the next one, it must not name a page that holds none of the text.
    segments = [
        Segment("", {"page": 1}),
        Segment("alpha beta gamma delta", {"page": 2}),
        Segment("", {"page": 3}),
        Segment("one two three", {"page": 4}),
    ]
    chunks = chunk_segments(segments, size=30, overlap=5)
    assert [c.content for c in chunks] == ["alpha beta gamma delta", "one two three"]
    assert [c.provenance for c in chunks] == [{"page": 2}, {"page": 4}]


def test_segment_provenance_is_not_shared_with_the_chunk() -> None:
    segment = Segment("some text", {"page": 1})
    [chunk] = chunk_segments([segment], size=50, overlap=5)
    chunk.provenance["page_end"] = 9
    assert segment.provenance == {"page": 1}


# token-aware mode ------------------------------------------------------------------------


def test_token_mode_respects_the_token_size_and_overlap() -> None:
    words = _words(120)
    text = " ".join(words)
    chunks = chunk_segments([Segment(text)], size=12, overlap=3, length=_word_count)
    assert len(chunks) > 10
    for chunk in chunks:
        assert _word_count(chunk.content) <= 12
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        shared = set(prev.content.split()) & set(nxt.content.split())
        assert 1 <= len(shared) <= 3
    assert {w for c in chunks for w in c.content.split()} == set(words)


def test_token_mode_keeps_a_long_single_token_whole() -> None:
    # 5000 characters but one "token": the length function decides, not characters.
    chunks = chunk_segments([Segment("y" * 5000)], size=4, overlap=1, length=_word_count)
    assert [c.content for c in chunks] == ["y" * 5000]


def test_token_mode_uses_the_given_length_function() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return len(text.split())

    chunk_segments([Segment("a b c d e f g h")], size=3, overlap=1, length=counting)
    assert calls


# the stage over DocWork ------------------------------------------------------------------


def _work(segments: list[Segment] | None, status: DocumentStatus = DocumentStatus.PROCESSING):
    return DocWork(source="s", segments=segments, status=status)


def test_chunk_documents_replaces_segments_with_chunks() -> None:
    works = [
        _work([Segment("hello world", {"page": 1})]),
        _work(None, status=DocumentStatus.UNCHANGED),
    ]
    done = chunk_documents(works, _ctx(ChunkingConfig(size=100, overlap=10)))
    assert done[0].segments is None
    assert [c.content for c in done[0].chunks or []] == ["hello world"]
    assert "chunk" in done[0].timings
    assert done[1] is works[1]


def test_bad_chunk_options_are_refused_before_any_document(monkeypatch) -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(size=10, overlap=10)
    monkeypatch.setenv("INGESTFLOW_CHUNK_SIZE", "100")
    monkeypatch.setenv("INGESTFLOW_CHUNK_OVERLAP", "100")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="^INGESTFLOW_CHUNK_OVERLAP: chunk overlap"):
            get_settings()
    finally:
        get_settings.cache_clear()


def _ctx(chunking: ChunkingConfig) -> StageContext:
    config = PipelineConfig(
        chunking=chunking, embedding=EmbeddingConfig(provider="unused", model="unused")
    )
    return StageContext(collection_id=0, config=config, workdir=Path("."))

"""The local all-MiniLM-L6-v2 embedder with the real packaged model (offline, a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ingestflow.core.errors import ConfigError
from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders import local
from tasks.embedders.local import LocalEmbedder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # EmbeddingSettings reads the environment for every field a test leaves out.
    for name in list(os.environ):
        if name.startswith("INGESTFLOW_EMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a stray download attempt fails instead of hanging


def make(model: str | None = None, **settings) -> LocalEmbedder:
    return LocalEmbedder(model, EmbeddingSettings(**settings))


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    # One model load for the module; batch_size 3 so that batching is exercised; float32,
    # whose results are exact (bfloat16 has tests of its own below).
    return LocalEmbedder(None, EmbeddingSettings(batch_size=3, torch_threads=1, precision="fp32"))


def _scifact_chunks(n: int) -> list[str]:
    import json

    corpus = REPO.parent / "shared" / "eval-data" / "scifact" / "corpus.jsonl"
    lines = corpus.read_text(encoding="utf-8").splitlines()[:n]
    return [f"{d['title']}. {d['text']}"[:800] for d in map(json.loads, lines)]


@pytest.mark.skipif(not local.bf16_supported(), reason="this CPU has no native bfloat16")
def test_bfloat16_vectors_stay_within_cosine_0999_of_float32(embedder: LocalEmbedder) -> None:
    texts = _scifact_chunks(96)
    bf16 = LocalEmbedder(None, EmbeddingSettings(batch_size=32, torch_threads=2, precision="bf16"))
    got, want = bf16.embed(texts), embedder.embed(texts)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.999
    alone = np.vstack([bf16.embed_batch([t]) for t in texts[:8]])
    assert float(np.min(np.sum(alone * got[:8], axis=1))) >= 0.999  # batching barely matters


def test_precision_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "bf16_supported", lambda: False)
    assert not local.use_bf16("auto") and local.use_bf16("bf16") and not local.use_bf16("fp32")
    monkeypatch.setattr(local, "bf16_supported", lambda: True)
    assert local.use_bf16("auto") and not local.use_bf16("fp32")


def test_shape_dtype_and_unit_norm(embedder: LocalEmbedder) -> None:
    texts = ["The cat sat on the mat.", "Quarterly revenue grew 8%.", "", "x" * 3000]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384) and embedder.dimension == 384
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_independent_of_batching(embedder: LocalEmbedder) -> None:
    texts = [f"Sentence number {i} about proteins and cells." for i in range(7)]
    batched = embedder.embed(texts)  # batches of 3, 3, 1
    again = embedder.embed(texts)
    alone = np.vstack([embedder.embed_batch([t]) for t in texts])
    np.testing.assert_array_equal(batched, again)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_paraphrase_is_closer_than_unrelated_text(embedder: LocalEmbedder) -> None:
    anchor, paraphrase, unrelated = embedder.embed(
        [
            "The physician prescribed antibiotics for the infection.",
            "The doctor gave the patient medicine to treat the bacterial infection.",
            "The stock market closed higher on Friday after a tech rally.",
        ]
    )
    assert anchor @ paraphrase > anchor @ unrelated + 0.2


def test_long_input_is_truncated_by_the_model(embedder: LocalEmbedder) -> None:
    long_text = "Cells divide and grow. " * 200  # 1000 tokens, far past max_seq_length
    assert embedder.count_tokens(long_text) > 3 * embedder.max_seq_length
    head, with_tail = embedder.embed([long_text, long_text + " Unrelated final words."])
    np.testing.assert_allclose(head, with_tail, atol=1e-6)


def test_count_tokens_matches_the_model_tokenizer(embedder: LocalEmbedder) -> None:
    from tokenizers import Tokenizer

    # WordPiece, lowercased: hello , world ! -> 4 tokens, [CLS]/[SEP] not counted.
    assert embedder.count_tokens("Hello, world!") == 4
    assert embedder.count_tokens("") == 0
    # Untruncated: the shipped tokenizer.json alone would stop at 128.
    assert embedder.count_tokens("word " * 300) == 300
    # The shipped tokenizer.json pads to 128, so compare real tokens: its attention mask.
    raw = Tokenizer.from_file(str(local.model_path() / "tokenizer.json"))
    text = "Tokenization of unbelievably idiosyncratic words."
    real_tokens = sum(raw.encode(text).attention_mask)
    assert embedder.count_tokens(text) == real_tokens - 2  # minus [CLS] and [SEP]


def test_count_tokens_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from ingestflow.core.settings import EmbeddingSettings\n"
        "from tasks.embedders.local import LocalEmbedder\n"
        "assert LocalEmbedder(None, EmbeddingSettings()).count_tokens('Hello, world!') == 4\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_model_names() -> None:
    assert make().identity == "local:all-MiniLM-L6-v2"
    # The alias maps to the same identity, so cached vectors are shared.
    assert make("sentence-transformers/all-MiniLM-L6-v2").identity == "local:all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="unknown model 'all-mpnet-base-v2'"):
        make("all-mpnet-base-v2")


def test_batches_respect_batch_size() -> None:
    embedder = make(batch_size=3)
    assert [len(b) for b in embedder.batches(["a b c"] * 10)] == [3, 3, 3, 1]
    # The token budget splits too: 4 tokens each, 10 per batch -> two texts per batch.
    tight = make(batch_size=64, max_batch_tokens=10)
    assert [len(b) for b in tight.batches(["alpha beta gamma delta"] * 5)] == [2, 2, 1]


def test_missing_torch_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ConfigError, match=r"pip install 'ingestflow\[local\]'"):
        make().embed_batch(["hello"])


def test_model_loads_once_under_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def slow_load(threads: int, precision: str) -> object:
        calls.append(threads)
        time.sleep(0.05)  # widen the race window
        return object()

    monkeypatch.setattr(local, "_load_model", slow_load)
    embedder = make(torch_threads=2)
    seen: list[object] = []

    def grab() -> None:
        seen.append(embedder._get_model())

    workers = [threading.Thread(target=grab) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert calls == [2] and len({id(m) for m in seen}) == 1

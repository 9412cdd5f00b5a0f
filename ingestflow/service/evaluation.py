"""Retrieval quality on a BEIR-format dataset: ingest the corpus, run the test queries
through the same search as every front door, and score the rankings.

MTEB embeds each document as ``title + " " + text``; each document here is a text file with
exactly that content, so one chunk per document reproduces the published setting.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingestflow.core.types import SearchMode
from ingestflow.service.ingest import ingest
from ingestflow.service.search import search
from tasks.config import ChunkingConfig

# Bigger than any document: one chunk per document, as MTEB embeds them (the model itself
# truncates at its 256 tokens).
ONE_CHUNK_PER_DOCUMENT = ChunkingConfig(size=1_000_000, overlap=0)


@dataclass(frozen=True)
class Scores:
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with graded relevance (BEIR/pytrec_eval: gain = rel, discount log2(rank+1))."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 100) -> float:
    wanted = {doc for doc, rel in relevant.items() if rel > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> Scores:
    """Mean metrics over the queries that have relevance judgements."""
    qids = [q for q in qrels if q in rankings]
    n = len(qids) or 1
    return Scores(
        ndcg_at_10=sum(ndcg_at_k(rankings[q], qrels[q]) for q in qids) / n,
        recall_at_100=sum(recall_at_k(rankings[q], qrels[q]) for q in qids) / n,
        mrr_at_10=sum(mrr_at_k(rankings[q], qrels[q]) for q in qids) / n,
        queries=len(qids),
    )


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            qid, doc, rel = line.split("\t")
            qrels.setdefault(qid, {})[doc] = int(rel)
    return qrels


def _jsonl(path: Path) -> Iterable[dict]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def write_corpus(dataset: Path, folder: Path, keep: set[str] | None = None) -> int:
    """One ``<_id>.txt`` per document (``title text``); returns how many were written."""
    count = 0
    for doc in _jsonl(dataset / "corpus.jsonl"):
        if keep is None or doc["_id"] in keep:
            text = f"{doc.get('title', '')} {doc['text']}".strip()
            (folder / f"{doc['_id']}.txt").write_text(text, encoding="utf-8")
            count += 1
    return count


def run_beir(
    dataset: Path,
    *,
    collection: str,
    small: bool = False,
    k: int = 100,
    mode: SearchMode = "vector",
    chunking: ChunkingConfig | None = None,
) -> tuple[Scores, int]:
    """Ingest ``dataset`` into ``collection`` (chunked as ``chunking`` says, else as the
    settings say) and score its test queries, searched in ``mode``.

    ``small`` keeps the first 30 judged queries and only their relevant documents plus 200
    others, for a quick smoke run. Returns the scores and the number of documents.
    """
    qrels = load_qrels(dataset / "qrels" / "test.tsv")
    queries = {q["_id"]: q["text"] for q in _jsonl(dataset / "queries.jsonl") if q["_id"] in qrels}
    keep = None
    if small:
        qrels = dict(list(qrels.items())[:30])
        keep = {doc for rel in qrels.values() for doc in rel}
        keep |= {
            d["_id"] for _, d in zip(range(200), _jsonl(dataset / "corpus.jsonl"), strict=False)
        }
    with tempfile.TemporaryDirectory(prefix="ingestflow-beir-") as tmp:
        docs = write_corpus(dataset, Path(tmp), keep)
        ingest(tmp, collection=collection, batch_size=64, chunking=chunking)
    rankings = {}
    for qid in qrels:
        hits = search(queries[qid], collection=collection, k=k, mode=mode)
        rankings[qid] = _documents_in_order(h.source_uri for h in hits)
    return score(rankings, qrels), docs


def _documents_in_order(uris: Iterable[str]) -> list[str]:
    """Document ids by their best chunk's rank."""
    seen: dict[str, None] = {}
    for uri in uris:
        seen.setdefault(uri.rsplit("/", 1)[-1].removesuffix(".txt"), None)
    return list(seen)

"""`ingestflow eval beir` on a tiny BEIR-format dataset, through the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from ingestflow.service.evaluation import run_beir
from tests.support.parts import CATALOGUE, PART_QUERY

DOCS = {
    "d1": ("Otters", "Sea otters hold hands while they sleep so they do not drift apart."),
    "d2": ("Volcanoes", "Shield volcanoes erupt basalt lava that flows a long way."),
    "d3": ("Tea", "Oolong tea is partly oxidised, between green and black tea."),
    "d4": ("Bread", "A sourdough starter needs flour and water every day."),
}
QUERIES = {
    "q1": "why do otters hold hands",
    "q2": "what lava do shield volcanoes erupt",
    "q3": "oolong tea oxidation",
}
QRELS = {"q1": "d1", "q2": "d2", "q3": "d3"}


def make_dataset(
    folder: Path,
    tag: str,
    docs: dict[str, tuple[str, str]] = DOCS,
    queries: dict[str, str] = QUERIES,
    qrels: dict[str, str] = QRELS,
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as fh:
        for doc_id, (title, text) in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": f"{text} {tag}"}) + "\n")
    with (folder / "queries.jsonl").open("w") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in qrels.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_beir_run_scores_a_tiny_dataset(pipeline, collection, tmp_path):
    dataset = make_dataset(tmp_path / "tiny", collection)

    scores, docs = run_beir(dataset, collection=collection)

    assert docs == 4 and scores.queries == 3
    # Lexically distinct topics: the hashed-word test embedder ranks each answer first.
    assert scores.mrr_at_10 == 1.0 and scores.ndcg_at_10 == 1.0
    assert scores.recall_at_100 == 1.0


def test_beir_run_searches_in_the_mode_asked_for(pipeline, collection, tmp_path):
    # A part number the hashed-word embedder confuses with its near misses (tests/support/
    # parts.py): vectors alone rank its entry low, hybrid search first.
    docs = {name: ("", text) for name, text in CATALOGUE.items()}
    dataset = make_dataset(tmp_path / "parts", collection, docs, {"q": PART_QUERY}, {"q": "xq7731"})

    vector, _ = run_beir(dataset, collection=collection, mode="vector")
    hybrid, _ = run_beir(dataset, collection=f"{collection}_hybrid", mode="hybrid")

    assert vector.mrr_at_10 < 1.0
    assert hybrid.mrr_at_10 == 1.0 and hybrid.ndcg_at_10 == 1.0

"""The retrieval metrics on small cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from ingestflow.service.evaluation import mrr_at_k, ndcg_at_k, recall_at_k, score


def test_ndcg_by_hand():
    # Relevant: a (rel 1) found at rank 2, b (rel 1) at rank 4, c (rel 1) never found.
    ranked = ["x", "a", "y", "b"]
    relevant = {"a": 1, "b": 1, "c": 1}
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # 0.6309 + 0.4307
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # 1 + 0.6309 + 0.5
    assert ndcg_at_k(ranked, relevant) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, relevant) == pytest.approx(0.4982, abs=1e-4)


def test_ndcg_perfect_and_cutoff():
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert ndcg_at_k(["x"] * 10 + ["a"], {"a": 1}) == 0.0  # rank 11 is past @10


def test_graded_relevance_prefers_the_more_relevant_first():
    relevant = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b"], relevant) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a"], relevant) < 1.0


def test_recall_and_mrr():
    relevant = {"a": 1, "b": 1}
    assert recall_at_k(["a", "x", "y"], relevant) == 0.5
    assert recall_at_k(["x"] * 100 + ["a"], relevant, k=100) == 0.0
    assert mrr_at_k(["x", "y", "b"], relevant) == pytest.approx(1 / 3)
    assert mrr_at_k(["x"] * 10 + ["a"], relevant) == 0.0


def test_score_averages_over_judged_queries():
    rankings = {"q1": ["a"], "q2": ["x", "b"], "unjudged": ["z"]}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    s = score(rankings, qrels)
    assert s.queries == 2
    assert s.mrr_at_10 == pytest.approx((1 + 0.5) / 2)
    assert s.recall_at_100 == 1.0

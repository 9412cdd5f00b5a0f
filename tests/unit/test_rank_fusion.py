"""Reciprocal rank fusion on small cases worked out by hand."""

from __future__ import annotations

import pytest

from storage.chunks import reciprocal_rank_fusion


def test_fused_scores_by_hand():
    # a: rank 1 and 3 -> 1/61 + 1/63; b: rank 2 and 1 -> 1/62 + 1/61; c: rank 3 only -> 1/63;
    # d: rank 2 only -> 1/62.
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]])

    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused) == pytest.approx(
        {"b": 1 / 62 + 1 / 61, "a": 1 / 61 + 1 / 63, "d": 1 / 62, "c": 1 / 63}
    )
    assert dict(fused)["b"] == pytest.approx(0.032522, abs=1e-6)


def test_the_constant_sets_how_much_a_top_rank_counts():
    # k=0: rank 1 in one list (1/1) ties with rank 2 in both (1/2 + 1/2), and the first seen
    # comes first. k=60: rank 2 in both (2/62) beats rank 1 in one (1/61).
    assert reciprocal_rank_fusion([["x", "y"], ["z", "y"]], k=0)[:2] == [("x", 1.0), ("y", 1.0)]
    assert reciprocal_rank_fusion([["x", "y"], ["z", "y"]])[0][0] == "y"


def test_one_list_keeps_its_order_and_an_empty_list_adds_nothing():
    fused = reciprocal_rank_fusion([["p", "q", "r"], []])

    assert fused == [("p", 1 / 61), ("q", 1 / 62), ("r", 1 / 63)]
    assert reciprocal_rank_fusion([[], []]) == []

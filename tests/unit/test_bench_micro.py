"""Unit tests of the micro-benchmarks' arithmetic: percentiles, recall@k, ratio rows, the
alternating order of repetitions and how chunk rows are spread over documents."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from bench.search_latency import distance_recall_at_k, percentile, recall_at_k
from bench.write_path import alternate, chunk_rows, ratio_row


def test_percentile_interpolates_between_closest_ranks() -> None:
    # Ranks are (n - 1) * q / 100 = 3q/100 over [1, 2, 3, 4]:
    # p50 -> rank 1.5, halfway from 2 to 3; p95 -> rank 2.85, 0.85 of the way from 3 to 4.
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 95) == 7.0


def test_percentile_agrees_with_numpy() -> None:
    values = list(np.random.default_rng(3).exponential(size=101))
    for q in (50, 95, 99):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_recall_counts_the_true_top_k_found() -> None:
    truth = ["a", "b", "c", "d", "e"]
    assert recall_at_k(["a", "b", "c"], truth, 3) == 1.0
    assert recall_at_k(["c", "x", "a"], truth, 3) == pytest.approx(2 / 3)
    # Only the top k of each side count: "d" is 4th in both, beyond k = 3.
    assert recall_at_k(["x", "y", "z", "d"], truth, 3) == 0.0


def test_distance_recall_counts_ties_with_the_kth_as_found() -> None:
    true_distances = [0.1, 0.2, 0.3]
    # The third hit is another chunk at exactly the true 3rd distance: found, by distance.
    assert distance_recall_at_k([0.1, 0.2, 0.3], true_distances, 3) == 1.0
    assert distance_recall_at_k([0.1, 0.25, 0.31], true_distances, 3) == pytest.approx(2 / 3)
    assert distance_recall_at_k([0.4, 0.5, 0.6], true_distances, 3) == 0.0


def test_ratio_row_is_ingestflow_over_baseline_against_its_target() -> None:
    met = ratio_row("m", 80.0, 100.0, "rows/s", at_least=0.7)
    assert (met.ratio, met.target, met.met) == (pytest.approx(0.8), ">= 0.7", True)
    missed = ratio_row("m", 60.0, 100.0, "rows/s", at_least=0.7)
    assert missed.met is False
    untargeted = ratio_row("m", 5.0, 20.0, "ms", at_least=None)
    assert (untargeted.ratio, untargeted.target, untargeted.met) == (0.25, "none stated", None)


def test_alternate_reverses_the_order_every_other_repetition() -> None:
    calls: list[tuple[str, int]] = []

    def measure(name: str, value: float):
        def run(i: int) -> float:
            calls.append((name, i))
            return value + i

        return run

    a, b, c = alternate(3, measure("a", 0), measure("b", 10), measure("c", 20))
    assert calls == [
        ("a", 0), ("b", 0), ("c", 0),
        ("c", 1), ("b", 1), ("a", 1),
        ("a", 2), ("b", 2), ("c", 2),
    ]  # fmt: skip
    assert (a, b, c) == ([0, 1, 2], [10, 11, 12], [20, 21, 22])


def test_chunk_rows_spread_texts_evenly_over_documents_in_order() -> None:
    docs = [uuid.uuid4(), uuid.uuid4()]
    vectors = np.eye(5, dtype=np.float32)
    rows = chunk_rows(7, docs, ["t0", "t1", "t2", "t3", "t4"], vectors)
    # Five texts over two documents: three to the first, two to the second, ordinals per doc.
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (docs[0], 0, "t0"), (docs[0], 1, "t1"), (docs[0], 2, "t2"),
        (docs[1], 0, "t3"), (docs[1], 1, "t4"),
    ]  # fmt: skip
    assert all(r[1] == 7 for r in rows)
    assert all(np.array_equal(r[6], vectors[i]) for i, r in enumerate(rows))

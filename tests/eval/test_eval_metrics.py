"""Metric wiring: ir_measures measures under the reported names, averaged over every judged query."""

from __future__ import annotations

import math

import pytest

from tessera.eval.metrics import MEASURES, evaluate_run


def test_reported_names():
    assert set(MEASURES) == {"ndcg@10", "recall@100", "mrr@10", "map"}
    assert {str(m) for m in MEASURES.values()} == {"nDCG@10", "R@100", "RR@10", "AP"}


def test_perfect_run_scores_one():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 2}}
    run = {"q1": {"a": 3.0, "x": 1.0}, "q2": {"c": 5.0, "b": 4.0, "y": 0.5}}
    assert evaluate_run(qrels, run) == pytest.approx(
        {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "map": 1.0}
    )


def test_known_run_hand_computed():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}
    # q1: the relevant document at rank 2.  q2: b at rank 1, c not retrieved.
    run = {"q1": {"x": 2.0, "a": 1.0}, "q2": {"b": 9.0, "y": 8.0}}
    ndcg_q1 = (1 / math.log2(3)) / 1.0
    ndcg_q2 = 1.0 / (1.0 + 1 / math.log2(3))
    expected = {
        "ndcg@10": (ndcg_q1 + ndcg_q2) / 2,
        "recall@100": (1.0 + 0.5) / 2,
        "mrr@10": (0.5 + 1.0) / 2,
        "map": (0.5 + 0.5) / 2,
    }
    assert evaluate_run(qrels, run) == pytest.approx(expected)


def test_cutoffs_apply():
    qrels = {"q1": {"a": 1}}
    run = {"q1": {f"x{i}": 100.0 - i for i in range(10)} | {"a": 1.0}}  # relevant at rank 11
    result = evaluate_run(qrels, run)
    assert result["ndcg@10"] == 0.0 and result["mrr@10"] == 0.0
    assert result["recall@100"] == 1.0
    assert result["map"] == pytest.approx(1 / 11)


def test_query_missing_from_run_counts_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    result = evaluate_run(qrels, {"q1": {"a": 1.0}, "q2": {}})
    assert result == pytest.approx({"ndcg@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5, "map": 0.5})
    assert evaluate_run(qrels, {}) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map": 0.0}

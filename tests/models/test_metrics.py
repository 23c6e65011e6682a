"""Metrics against hand-computed values, and the evaluation protocol on a tiny frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.metrics import (
    bootstrap_ci,
    evaluate_scorer,
    mrr,
    ndcg_at_k,
    next_item_events,
    paired_bootstrap,
    recall_at_k,
    summarise,
    target_ranks,
)


def test_target_ranks_counts_better_items():
    scores = np.array([[0.1, 0.9, 0.5, 0.3],
                       [0.4, 0.3, 0.2, 0.1]])
    assert target_ranks(scores, [2, 0]).tolist() == [1.0, 0.0]
    assert target_ranks(scores[0], [0]).tolist() == [3.0]  # a single row is accepted


def test_ties_count_half():
    # target 1 ties with items 2 and 3, one item is better: rank = 1 + 2/2 = 2
    assert target_ranks(np.array([[5.0, 1.0, 1.0, 1.0]]), [1]).tolist() == [2.0]


def test_exclude_removes_items_but_never_the_target():
    scores = np.array([[0.9, 0.8, 0.1]])
    assert target_ranks(scores, [2], exclude=[[0, 1]]).tolist() == [0.0]
    assert target_ranks(scores, [1], exclude=[[0, 1]]).tolist() == [0.0]  # target kept


def test_recall_ndcg_mrr_by_hand():
    ranks = np.array([0, 2, 9, 10, 50])
    assert recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    expected_ndcg = (1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(11)) / 5
    assert ndcg_at_k(ranks, 10) == pytest.approx(expected_ndcg)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 11 + 1 / 51) / 5)


def test_empty_ranks_give_zero():
    assert recall_at_k(np.array([]), 10) == 0.0
    assert ndcg_at_k(np.array([]), 10) == 0.0
    assert mrr(np.array([])) == 0.0


def test_bootstrap_interval_contains_mean_and_is_degenerate_for_constants():
    values = np.r_[np.ones(30), np.zeros(70)]
    lo, hi = bootstrap_ci(values, n_boot=500)
    assert lo < 0.3 < hi
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_summarise_reports_all_numbers():
    report = summarise(np.array([0, 20]), k=10, ci=True)
    assert (report.n_events, report.recall, report.mrr) == (2, 0.5, pytest.approx((1 + 1 / 21) / 2))
    assert report.recall_ci is not None
    assert "recall@10" in report.as_dict()


def _frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "kind"])


def test_next_item_events_history_spans_parts():
    before = _frame([("u1", "a", 1, "click"), ("u1", "b", 2, "purchase"), ("u2", "a", 1, "click")])
    part = _frame([("u1", "c", 3, "purchase"), ("u1", "a", 4, "click"),
                   ("u1", "z", 5, "purchase"),  # not in the catalog: dropped
                   ("u3", "b", 6, "purchase")])  # no history: dropped
    ev = next_item_events(["a", "b", "c"], before, part, target_kinds=("purchase",))
    assert ev.histories == [["a", "b"]]
    assert ev.kinds == [["click", "purchase"]]
    assert ev.targets.tolist() == [2]
    both = next_item_events(["a", "b", "c"], before, part, target_kinds=("purchase", "click"))
    assert both.histories == [["a", "b"], ["a", "b", "c"]]
    assert both.targets.tolist() == [2, 0]
    capped = next_item_events(["a", "b", "c"], before, part, target_kinds=("purchase", "click"),
                              max_history=1, max_events=1)
    assert len(capped) == 1 and len(capped.histories[0]) == 1


def test_evaluate_scorer_uses_full_catalog_ranking():
    before = _frame([("u1", "a", 1, "click")])
    part = _frame([("u1", "b", 2, "purchase")])
    ev = next_item_events(["a", "b", "c"], before, part)
    perfect = evaluate_scorer(lambda h, k: np.array([0.0, 1.0, 0.5]), ev, k=1)
    worst = evaluate_scorer(lambda h, k: np.array([1.0, 0.0, 0.5]), ev, k=1)
    assert perfect.recall == 1.0 and worst.recall == 0.0 and worst.mrr == pytest.approx(1 / 3)


def test_paired_bootstrap_of_identical_lists_is_zero():
    hits = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    d = paired_bootstrap(hits, hits.copy())
    assert d.diff == 0.0 and d.ci == (0.0, 0.0) and d.p_value == 1.0 and d.n_events == 5


def test_paired_bootstrap_sees_a_consistent_gain():
    rng = np.random.default_rng(0)
    b = (rng.random(2000) < 0.1).astype(float)
    a = np.maximum(b, (rng.random(2000) < 0.1).astype(float))  # a hits wherever b does, and more
    d = paired_bootstrap(a, b)
    assert d.diff > 0 and d.ci[0] > 0 and d.p_value < 0.01
    flipped = paired_bootstrap(b, a)
    assert flipped.diff == -d.diff and flipped.ci[1] < 0
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10])

"""Ranking metrics, the popularity baseline and the report table, against hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semrec.data import Example, RecDataset, leave_one_out
from semrec.data.split import Split
from semrec.evaluation.report import metrics_table
from semrec.metrics.popularity import evaluate_popularity, popularity_ranking
from semrec.metrics.ranking import TopKRankingMetrics, ranking_metrics, target_ranks

INF = math.inf


def test_target_ranks_finds_first_position_or_inf() -> None:
    ranked = torch.tensor([[3, 1, 2], [5, 6, 7], [-1, 4, 4]])
    targets = torch.tensor([1, 9, 4])
    # 1 sits at position 1; 9 is absent; 4 first appears at position 1 (duplicates ignored)
    assert target_ranks(ranked, targets).tolist() == [1.0, INF, 1.0]


def test_ranking_metrics_by_hand() -> None:
    ranks = torch.tensor([0.0, 2.0, INF, 4.0])
    out = ranking_metrics(ranks, [1, 3, 5])
    assert set(out) == {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 3, 5)}
    # HR@k: share of ranks < k -> 1/4, 2/4, 3/4
    assert out["hr@1"] == pytest.approx(0.25)
    assert out["hr@3"] == pytest.approx(0.5)
    assert out["hr@5"] == pytest.approx(0.75)
    # NDCG@k: mean of 1/log2(r + 2) over hits -> r=0 gives 1, r=2 gives 1/log2(4) = 0.5,
    # r=4 gives 1/log2(6) = 0.386853
    assert out["ndcg@1"] == pytest.approx(1 / 4)
    assert out["ndcg@3"] == pytest.approx((1 + 0.5) / 4)
    assert out["ndcg@5"] == pytest.approx((1 + 0.5 + 0.3868528072) / 4)
    # MRR@k: mean of 1/(r + 1) over ranks below k -> @5: (1 + 1/3 + 1/5) / 4, @3: (1 + 1/3) / 4
    assert out["mrr@5"] == pytest.approx((1 + 1 / 3 + 1 / 5) / 4)
    assert out["mrr@3"] == pytest.approx((1 + 1 / 3) / 4)
    assert out["mrr@1"] == out["hr@1"]


def test_ranking_metrics_mrr_cutoff_and_empty_input() -> None:
    ranks = torch.tensor([0.0, 2.0, INF, 4.0])
    # MRR@3 ignores the hit at rank 4: (1 + 1/3) / 4
    assert ranking_metrics(ranks, [1, 5], mrr_k=3)["mrr@3"] == pytest.approx((1 + 1 / 3) / 4)
    assert ranking_metrics(torch.empty(0), [1, 5]) == {}


# rows have 4 slots; with ks [1, 3] only the top 3 count
RANKED = torch.tensor(
    [
        [2, 0, 5, 1],  # target 0 at rank 1
        [-1, 3, -1, 4],  # target 4 only at position 3, outside the top 3: a miss
        [7, 2, 3, 0],  # target 3 at rank 2; 7 is not in the 6-item catalogue
        [1, 5, 2, 4],  # target 1 at rank 0
    ]
)
TARGETS = torch.tensor([0, 4, 3, 1])
EXPECTED = {
    # ranks [1, inf, 2, 0]
    "hr@1": 1 / 4,
    "hr@3": 3 / 4,
    "ndcg@1": 1 / 4,
    # 1/log2(3) = 0.6309298, 1/log2(4) = 0.5, 1/log2(2) = 1
    "ndcg@3": (0.6309297536 + 0.5 + 1) / 4,
    # 1/2 + 1/3 + 1; at 1 only rank 0 counts
    "mrr@3": (1 / 2 + 1 / 3 + 1) / 4,
    "mrr@1": 1 / 4,
    # top-3 slots: two -1 in row 1 and the 7 in row 2 -> 3 of 12
    "invalid_rate": 3 / 12,
    # valid items in some top 3: {2, 0, 5} | {3} | {2, 3} | {1, 5, 2} = {0, 1, 2, 3, 5};
    # item 4 appears only beyond the top 3 -> 5 of 6
    "coverage": 5 / 6,
    "users": 4.0,
}


def test_topk_metric_by_hand() -> None:
    metric = TopKRankingMetrics([3, 1], num_items=6)
    metric.update(RANKED, TARGETS)
    out = metric.compute()
    assert set(out) == set(EXPECTED)
    for key, value in EXPECTED.items():
        assert out[key] == pytest.approx(value), key


def test_topk_metric_accumulates_over_batches_like_one_batch() -> None:
    whole = TopKRankingMetrics([1, 3], num_items=6)
    whole.update(RANKED, TARGETS)
    parts = TopKRankingMetrics([1, 3], num_items=6)
    parts.update(RANKED[:1], TARGETS[:1])
    parts.update(RANKED[1:], TARGETS[1:])
    assert parts.compute() == whole.compute()


def test_topk_metric_reset_forgets_previous_batches() -> None:
    metric = TopKRankingMetrics([1, 3], num_items=6)
    metric.update(torch.tensor([[4, 4, 4]]), torch.tensor([0]))
    metric.compute()
    metric.reset()
    metric.update(RANKED, TARGETS)
    out = metric.compute()
    assert out["users"] == 4.0 and out["coverage"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------- popularity


def hand_split() -> Split:
    # training parts: item counts 0 -> 1, 1 -> 3, 2 -> 0, 3 -> 3, 4 -> 1
    train_sequences = [np.array([1, 3, 1]), np.array([3, 0, 3, 1]), np.array([4])]
    test = [
        Example(0, (1, 3, 1), 3),
        Example(1, (3, 0, 3, 1), 2),
        Example(2, (4,), 1),
        Example(0, (1,), 0),
    ]
    return Split(
        train=[], valid=[], test=test, num_items=5, num_users=3, train_sequences=train_sequences
    )


def test_popularity_ties_go_to_the_lower_index() -> None:
    # counts [1, 3, 0, 3, 1]: 1 and 3 tie at 3, then 0 and 4 tie at 1, then 2
    assert popularity_ranking(hand_split(), 5).tolist() == [1, 3, 0, 4, 2]
    assert popularity_ranking(hand_split(), 2).tolist() == [1, 3]


def test_evaluate_popularity_by_hand() -> None:
    split = hand_split()
    out = evaluate_popularity(split, split.test, [1, 3])
    # every user gets [1, 3, 0]; targets 3, 2, 1, 0 -> ranks 1, inf, 0, 2
    assert out["hr@1"] == pytest.approx(1 / 4)
    assert out["hr@3"] == pytest.approx(3 / 4)
    assert out["ndcg@3"] == pytest.approx((0.6309297536 + 1 + 0.5) / 4)
    assert out["mrr@3"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 4)
    assert out["invalid_rate"] == 0.0
    assert out["coverage"] == pytest.approx(3 / 5)
    assert out["users"] == 4.0


def test_popularity_counts_training_parts_only() -> None:
    # item 3 is every user's test target and item 2 their valid target; counted over all
    # interactions they would lead the list, counted over training parts they never appear
    ds = RecDataset(
        name="toy",
        user_ids=["u0", "u1"],
        item_ids=["i0", "i1", "i2", "i3"],
        users=[0, 0, 0, 0, 1, 1, 1],
        items=[0, 1, 2, 3, 1, 2, 3],
        timestamps=[1, 2, 3, 4, 1, 2, 3],
    )
    split = leave_one_out(ds)
    # training parts: u0 [0, 1], u1 [1] -> counts [1, 2, 0, 0]
    assert popularity_ranking(split, 4).tolist() == [1, 0, 2, 3]


# ---------------------------------------------------------------- report table


def test_metrics_table_rows_for_semrec_and_baselines() -> None:
    metrics = {
        "test/hr@1": 0.5,
        "test/hr@5": 0.75,
        "test/ndcg@5": 0.6,
        "test/mrr@5": 0.55,
        "test/invalid_rate": 0.0,
        "test/coverage": 0.25,
        "valid/hr@1": 0.9,  # validation numbers stay out of the test table
        "popularity/test/hr@1": 0.125,
        "popularity/test/hr@5": 0.25,
        "popularity/valid/hr@1": 0.3,
    }
    table = metrics_table(metrics, [1, 5], notes=["tiny run"])
    assert table.splitlines() == [
        "| method | HR@1 | HR@5 | NDCG@5 | MRR@5 | INVALID_RATE | COVERAGE |",
        "|---|---|---|---|---|---|---|",
        "| semrec (test) | 0.5000 | 0.7500 | 0.6000 | 0.5500 | 0.0000 | 0.2500 |",
        "| popularity (test) | 0.1250 | 0.2500 | - | - | - | - |",
        "",
        "Note: tiny run",
    ]


def test_rating_metrics_get_a_line_of_their_own_not_a_row() -> None:
    metrics = {
        "test/hr@1": 0.5,
        "test/rating_mae": 0.9,
        "test/rating_rmse": 1.1,
        "user_mean/test/rating_mae": 0.8,
        "user_mean/test/rating_rmse": 1.2,
    }
    lines = metrics_table(metrics, [1]).splitlines()
    assert not any(line.startswith("| user_mean") for line in lines)
    assert lines[-1] == (
        "Rating prediction (MAE / RMSE): semrec 0.9000 / 1.1000, user mean 0.8000 / 1.2000"
    )


def test_metrics_table_without_values_shows_dashes() -> None:
    lines = metrics_table({}, [10]).splitlines()
    assert lines[0] == "| method | HR@10 | NDCG@10 | MRR@10 | INVALID_RATE | COVERAGE |"
    assert lines[2:] == ["| semrec (test) | - | - | - | - | - |"]


def test_metrics_table_shows_the_beam_search_row_beside_exact_ranking() -> None:
    metrics = {"test/hr@10": 0.2, "test_beam/hr@10": 0.15, "sasrec/test/hr@10": 0.13}
    lines = metrics_table(metrics, [10]).splitlines()
    assert lines[2].startswith("| semrec (test) | 0.2000 |")
    assert lines[3].startswith("| semrec, beam search (test) | 0.1500 |")
    assert lines[4].startswith("| sasrec (test) | 0.1300 |")

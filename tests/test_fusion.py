"""Rank fusion (eval.fusion): the fused ranking by hand, and the labelled row in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from semrec.config import ConfigError, load_config
from semrec.evaluation.fusion import reciprocal_rank_fusion
from semrec.metrics.ranking import TopKRankingMetrics
from semrec.pipeline import Run

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"


def test_reciprocal_rank_fusion_matches_a_hand_computation() -> None:
    first = torch.tensor([[5, 1, 2], [7, -1, -1]])
    second = torch.tensor([[2, 9, 5], [8, 7, 6]])
    fused = reciprocal_rank_fusion(first, second, weight=0.75, rrf_k=1)
    # row 0: 5: .75/2 + .25/4 = .4375; 1: .75/3 = .25; 2: .75/4 + .25/2 = .3125; 9: .25/3
    assert fused[0].tolist() == [5, 2, 1]
    # row 1: 7: .75/2 + .25/3 = .4583; 8: .25/2; 6: .25/4
    assert fused[1].tolist() == [7, 8, 6]
    # weight 1 is the first ranking, weight 0 the second (without its empty slots)
    assert torch.equal(reciprocal_rank_fusion(first, second, weight=1.0)[0], first[0])
    assert torch.equal(reciprocal_rank_fusion(first, second, weight=0.0), second)


def test_ranked_items_come_back_in_evaluation_order() -> None:
    metric = TopKRankingMetrics([1, 3], num_items=10)
    metric.update(torch.tensor([[4, 5, 6], [1, 2, 3]]), torch.tensor([5, 0]), torch.tensor([1, 2]))
    metric.update(torch.tensor([[7, 8]]), torch.tensor([8]), torch.tensor([0]))
    assert metric.ordered_items().tolist() == [[7, 8, -1], [4, 5, 6], [1, 2, 3]]


def test_a_fused_row_is_labelled_and_semrecs_own_row_stays(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.fusion.baseline"):
        load_config(TINY, ["eval.fusion={baseline: sasrec}"])
    overrides = ["train.epochs=10", "train.check_val_every_n_epoch=10", "train.progress_bar=false"]
    plain = Run(load_config(TINY, overrides), tmp_path / "plain", echo=lambda _: None).fit()
    lines: list[str] = []
    fused_config = load_config(TINY, [*overrides, "eval.fusion={baseline: popularity}"])
    metrics = Run(fused_config, tmp_path / "fused", echo=lines.append).fit()
    assert metrics["test/hr@10"] == plain["test/hr@10"]  # semrec's own row is unchanged
    assert "semrec+popularity/test/hr@10" in metrics
    table = (tmp_path / "fused" / "metrics.md").read_text()
    assert "| semrec+popularity (test) |" in table and "a labelled extra row" in table
    ranks = json.loads((tmp_path / "fused" / "ranks.json").read_text())
    assert "semrec+popularity" in json.dumps(ranks)

"""Candidate ranking: the verbalizer reads letter logits; candidates never see their target."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from semrec.cf import SASRec
from semrec.config import load_config
from semrec.data import RecDataset, leave_one_out
from semrec.pipeline import Run
from semrec.ranking import VerbalizerRanker, candidate_letters, retrieve_candidates
from semrec.ranking.verbalizer import letter_token_ids


class RiggedLM(nn.Module):
    """Last-position logits = a fixed row per prompt (the first input id picks the row)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, input_ids, attention_mask, position_ids):
        logits = torch.zeros(*input_ids.shape, self.rows.shape[1])
        logits[:, -1] = self.rows[input_ids[:, 0]]
        return SimpleNamespace(logits=logits)


def test_verbalizer_scores_are_the_letter_logits_of_a_rigged_model():
    vocab = 10
    rows = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0))
    letters = [7, 3, 5]  # token ids of A, B, C
    ranker = VerbalizerRanker(letters)
    input_ids = torch.tensor([[0, 9, 9], [1, 9, 9]])
    mask = torch.ones_like(input_ids)
    scores = ranker.scores(RiggedLM(rows), input_ids, mask)
    assert torch.equal(scores, rows[:, letters])
    candidates = torch.tensor([[40, 41, 42], [50, 51, -1]])
    ranked = ranker.rank(RiggedLM(rows), input_ids, mask, candidates)
    for row in range(2):
        valid = candidates[row] >= 0
        order = rows[row, letters][valid].argsort(descending=True)
        assert ranked[row, : int(valid.sum())].tolist() == candidates[row][valid][order].tolist()
    assert ranked[1, -1] == -1  # padding stays last
    assert candidate_letters(3) == ["A", "B", "C"]
    with pytest.raises(ValueError, match="one token"):
        letter_token_ids(lambda letter: [1, 2, 0], ["A"])


def toy(seed: int = 0) -> RecDataset:
    rng = np.random.default_rng(seed)
    users, items, length = 30, 25, 8
    sequences = [rng.choice(items, size=length, replace=False) for _ in range(users)]
    return RecDataset(
        name="toy",
        user_ids=[str(u) for u in range(users)],
        item_ids=[str(i) for i in range(items)],
        users=np.repeat(np.arange(users), length),
        items=np.concatenate(sequences),
        timestamps=np.tile(np.arange(length), users),
    )


def candidates_of(ds: RecDataset):
    def build(**overrides):
        params = {"hidden_size": 8, "max_epochs": 3, "patience": 1, "seed": 0}
        return SASRec(**{**params, **overrides})

    return retrieve_candidates(leave_one_out(ds), build, k=10, fit=lambda r, s: r.fit(s))


def test_retrieved_candidates_never_come_from_a_model_that_saw_their_target():
    ds = toy()
    reference = candidates_of(ds)
    split = leave_one_out(ds)
    assert all(len(c) == 10 for part in (reference.valid, reference.test) for c in part)
    assert all(ex.target in c for ex, c in zip(split.train, reference.train))
    for ex, c in zip(split.test, reference.test):
        assert not set(c) & set(ex.history)  # history items excluded
    # change every test target: no candidate list moves
    items = ds.items.copy()
    last = [np.flatnonzero(ds.users == u)[-1] for u in range(ds.num_users)]
    for index in last:
        items[index] = (items[index] + 7) % ds.num_items
    changed = candidates_of(dataclasses.replace(ds, items=items))
    assert (changed.train, changed.valid, changed.test) == (
        reference.train,
        reference.valid,
        reference.test,
    )
    # and the check can fail: changing the valid targets moves the test candidates
    valid_items = ds.items.copy()
    for u in range(ds.num_users):
        index = np.flatnonzero(ds.users == u)[-2]
        valid_items[index] = (valid_items[index] + 7) % ds.num_items
    moved = candidates_of(dataclasses.replace(ds, items=valid_items))
    assert moved.test != reference.test


TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
RANKING = [
    "tasks=[{name: candidate_ranking, params: {items_as: sid, user_index: none, "
    "candidate_order: retriever}}]",
    "eval.task=candidate_ranking",
    "eval.ks=[1,5]",
    "eval.baselines=[]",
    "candidates.k=5",
    "candidates.params={hidden_size: 16, max_epochs: 30}",
    "train.epochs=20",
]


def test_a_tiny_ranking_run_learns_to_read_the_letters(tmp_path):
    """Synthetic data, tiny LLaMA trained on letters in the retriever's order: the ranker's
    MRR@5 rises from chance (about .46 for 5 shuffled candidates) to at least .85."""
    lines: list[str] = []
    metrics = Run(load_config(TINY, RANKING), tmp_path / "run", echo=lines.append).fit()
    chance = sum(1 / r for r in range(1, 6)) / 5
    assert metrics["retriever/test/mrr@5"] >= 0.85  # the synthetic rule is easy for SASRec
    assert metrics["test/mrr@5"] >= 0.85 > chance + 0.3
    assert metrics["test/hr@5"] == metrics["test_subset/hr@5"] == 1.0  # recall@5 is 1 here
    assert any("scored by their letter logits" in line for line in lines)

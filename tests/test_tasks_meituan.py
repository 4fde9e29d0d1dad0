"""Semantic Convergence's tasks: negative behaviour (sampler, ratio, per-epoch draws), query."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import numpy as np
import pytest

from semrec.data import RecDataset, leave_one_out
from semrec.tasks import TASKS, NegativeBehaviorTask, QueryAlignmentTask, TaskContext, TaskDataError
from semrec.tasks.negative import sample_negatives, train_items_by_user


def context(num_items: int = 40, users: int = 6, length: int = 9, seed: int = 0) -> TaskContext:
    rng = np.random.default_rng(seed)
    sequences = [rng.choice(num_items, size=length, replace=False) for _ in range(users)]
    ds = RecDataset(
        name="toy",
        user_ids=[f"u{u}" for u in range(users)],
        item_ids=[f"i{i}" for i in range(num_items)],
        users=np.repeat(np.arange(users), length),
        items=np.concatenate(sequences),
        timestamps=np.tile(np.arange(length), users),
        source="toy.inter",
    )
    return TaskContext(ds, leave_one_out(ds), [f"<a_{i}>" for i in range(num_items)])


def test_negatives_are_never_a_history_or_target_item_and_follow_the_ratio():
    ctx = context()
    known = train_items_by_user(ctx.split)
    for ratio in (1, 3, 5):
        task = NegativeBehaviorTask(ratio=ratio)
        samples = task.train_samples(ctx, random.Random(0))
        assert len(samples) == ratio * len(ctx.split.train)
        per_prompt = Counter(s.prompt for s in samples)
        # each sample's item is outside its user's whole training sequence
        by_prompt_user = {}
        for ex in ctx.split.train:
            for template in task.templates:
                history = ", ".join(ctx.sids[i] for i in ex.history)
                by_prompt_user[template.format(history=history)] = ex
        for sample in samples:
            ex = by_prompt_user[sample.prompt]
            assert sample.target_item not in ex.history and sample.target_item != ex.target
            assert sample.target_item not in known[ex.user]
            assert sample.response == ctx.sids[sample.target_item]
        assert sum(per_prompt.values()) == ratio * len(ctx.split.train)


def test_negatives_are_redrawn_every_epoch_and_the_paper_template_comes_first():
    ctx = context()
    task = NegativeBehaviorTask(ratio=3)
    first = [s.target_item for s in task.train_samples(ctx, random.Random(1))]
    second = [s.target_item for s in task.train_samples(ctx, random.Random(2))]
    assert first != second
    assert task.templates[0].endswith("what will user hate next?")
    assert NegativeBehaviorTask(ratio=0).train_samples(ctx, random.Random(0)) == []
    with pytest.raises(ValueError, match="ratio"):
        NegativeBehaviorTask(ratio=-1)
    assert TASKS.get("negative") is NegativeBehaviorTask


def test_the_sampler_draws_distinct_free_items_uniformly():
    rng = random.Random(0)
    known = frozenset(range(0, 100, 2))  # the even items
    counts = Counter()
    for _ in range(2000):
        picked = sample_negatives(known, 100, 3, rng)
        assert len(set(picked)) == 3 and not set(picked) & known
        counts.update(picked)
    assert set(counts) == set(range(1, 100, 2))
    assert max(counts.values()) < 2 * min(counts.values())  # ~120 each
    # fewer free items than asked: all of them
    assert sorted(sample_negatives(frozenset(range(9)), 10, 3, rng)) == [9]


def test_query_alignment_pairs_reviews_with_training_interactions_only():
    ctx = context(users=2, length=5)
    sequences = ctx.dataset.sequences()
    reviews = [[f"review {u}-{k}" for k in range(5)] for u in range(2)]
    ds = dataclasses.replace(ctx.dataset, user_text=reviews)
    ctx = dataclasses.replace(ctx, dataset=ds)
    task = QueryAlignmentTask()
    pairs = task.pairs(ctx)
    # the last two interactions (valid, test) are held out
    expected = [(f"review {u}-{k}", int(sequences[u][k]), u) for u in range(2) for k in range(3)]
    assert pairs == expected
    sample = QueryAlignmentTask(templates=["Q: {query}"]).train_samples(ctx, random.Random(0))[0]
    assert sample.prompt == "Q: review 0-0" and sample.response == ctx.sids[sequences[0][0]]


def test_query_alignment_refuses_data_without_aligned_reviews():
    ctx = context()
    with pytest.raises(TaskDataError, match="user_text"):
        QueryAlignmentTask().train_samples(ctx, random.Random(0))
    short = [["one review"]] + [[] for _ in range(ctx.dataset.num_users - 1)]
    ctx = dataclasses.replace(ctx, dataset=dataclasses.replace(ctx.dataset, user_text=short))
    with pytest.raises(TaskDataError, match="'u0' has 1 reviews but 9 interactions"):
        QueryAlignmentTask().pairs(ctx)

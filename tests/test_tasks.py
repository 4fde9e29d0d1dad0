"""Instruction tasks: exact prompts, weighted epoch mixtures, template sampling, data checks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from semrec.data import Example, RecDataset, leave_one_out
from semrec.tasks import (
    TASKS,
    Sample,
    SequentialTask,
    TaskContext,
    TaskDataError,
    build_mixture,
)


def toy_context(item_texts: list[str] | None = None) -> TaskContext:
    """Three users over eight items; item ``i`` has SID ``<a_{i // 3}><b_{i % 3}>``.

    Chronological sequences: u0 0 1 2 3 4 5, u1 5 4 3 2 1 0, u2 6 7 6 7 6. Their training
    parts (all but the last two items) give 3 + 3 + 2 = 8 training examples.
    """
    sequences = {"u0": [0, 1, 2, 3, 4, 5], "u1": [5, 4, 3, 2, 1, 0], "u2": [6, 7, 6, 7, 6]}
    users, items, stamps = [], [], []
    for u, seq in enumerate(sequences.values()):
        for t, item in enumerate(seq):
            users.append(u)
            items.append(item)
            stamps.append(100 + t)
    ds = RecDataset(
        name="toy",
        user_ids=list(sequences),
        item_ids=[f"i{i}" for i in range(8)],
        users=users,
        items=items,
        timestamps=stamps,
        source="toy.inter",
    )
    sids = [f"<a_{i // 3}><b_{i % 3}>" for i in range(8)]
    return TaskContext(dataset=ds, split=leave_one_out(ds), sids=sids, item_texts=item_texts)


def single_template_task(template: str = "History: {history} Next?") -> SequentialTask:
    return SequentialTask(templates=[template])


def template_indices(task: SequentialTask, ctx: TaskContext, samples: list[Sample]) -> list[int]:
    """Which template produced each sample (samples in ``ctx.split.train`` order)."""
    found = []
    for example, sample in zip(ctx.split.train, samples, strict=True):
        matches = [
            t for t in range(len(task.templates)) if task.prompt(ctx, example, t) == sample.prompt
        ]
        assert len(matches) == 1
        found.append(matches[0])
    return found


def test_fixture_split_is_what_the_docstring_says() -> None:
    ctx = toy_context()
    assert len(ctx.split.train) == 8
    assert ctx.split.test[2] == Example(2, (6, 7, 6, 7), 6)
    assert ctx.history_text((0, 4, 7)) == "<a_0><b_0>, <a_1><b_1>, <a_2><b_1>"


def test_seq_is_registered() -> None:
    assert TASKS.get("seq") is SequentialTask


def test_eval_prompt_and_response_exactly() -> None:
    ctx = toy_context()
    samples = SequentialTask().eval_samples(ctx, ctx.split.test)
    assert samples[2] == Sample(
        task="seq",
        prompt="Here are the user's historical interactions: <a_2><b_0>, <a_2><b_1>, "
        "<a_2><b_0>, <a_2><b_1>. Try to recommend another item to the user. Note that the "
        "historical interactions are arranged in chronological order.",
        response="<a_2><b_0>",
        target_item=6,
        user=2,
    )
    # valid for u1: history 5 4 3 2, target 1
    valid = SequentialTask().eval_samples(ctx, ctx.split.valid)[1]
    assert valid.prompt.startswith(
        "Here are the user's historical interactions: <a_1><b_2>, <a_1><b_1>, <a_1><b_0>, "
        "<a_0><b_2>. Try"
    )
    assert (valid.response, valid.target_item) == ("<a_0><b_1>", 1)


def test_train_samples_exactly_with_a_custom_template() -> None:
    ctx = toy_context()
    samples = single_template_task().train_samples(ctx, random.Random(0))
    assert samples[:3] == [
        Sample("seq", "History: <a_0><b_0> Next?", "<a_0><b_1>", 1, 0),
        Sample("seq", "History: <a_0><b_0>, <a_0><b_1> Next?", "<a_0><b_2>", 2, 0),
        Sample("seq", "History: <a_0><b_0>, <a_0><b_1>, <a_0><b_2> Next?", "<a_1><b_0>", 3, 0),
    ]
    last = Sample("seq", "History: <a_2><b_0>, <a_2><b_1> Next?", "<a_2><b_0>", 6, 2)
    assert samples[-1] == last
    assert len(samples) == 8


def test_eval_samples_always_use_template_zero() -> None:
    ctx = toy_context()
    task = SequentialTask(templates=["A {history}", "B {history}", "C {history}"])
    prompts = [s.prompt for s in task.eval_samples(ctx, ctx.split.test)]
    assert prompts == [
        "A <a_0><b_0>, <a_0><b_1>, <a_0><b_2>, <a_1><b_0>, <a_1><b_1>",
        "A <a_1><b_2>, <a_1><b_1>, <a_1><b_0>, <a_0><b_2>, <a_0><b_1>",
        "A <a_2><b_0>, <a_2><b_1>, <a_2><b_0>, <a_2><b_1>",
    ]
    # training draws other templates too
    train = task.train_samples(ctx, random.Random(0))
    assert {s.prompt[0] for s in train} != {"A"}


def test_empty_template_list_is_rejected() -> None:
    with pytest.raises(ValueError, match="templates must not be empty"):
        SequentialTask(templates=[])


def test_templates_vary_across_epochs_and_all_get_used() -> None:
    ctx = toy_context()
    task = SequentialTask()
    rng = random.Random(0)
    epochs = [template_indices(task, ctx, task.train_samples(ctx, rng)) for _ in range(6)]
    assert epochs[0] != epochs[1]
    assert {t for epoch in epochs for t in epoch} == set(range(len(task.templates)))
    # responses do not depend on the template
    assert [s.response for s in task.train_samples(ctx, rng)] == [
        ctx.sids[ex.target] for ex in ctx.split.train
    ]


# ---------------------------------------------------------------- mixtures


def pair_counts(samples: list[Sample]) -> Counter:
    return Counter((s.prompt, s.response) for s in samples)


def test_mixture_weight_one_keeps_every_pair_once() -> None:
    ctx = toy_context()
    task = single_template_task()
    everything = pair_counts(task.train_samples(ctx, random.Random(0)))
    assert pair_counts(build_mixture([(task, 1.0)], ctx, random.Random(1))) == everything


def test_mixture_weight_two_keeps_every_pair_twice() -> None:
    ctx = toy_context()
    task = single_template_task()
    everything = pair_counts(task.train_samples(ctx, random.Random(0)))
    doubled = pair_counts(build_mixture([(task, 2.0)], ctx, random.Random(1)))
    assert doubled == Counter({pair: 2 for pair in everything})


def test_mixture_weight_half_keeps_a_random_half_without_repeats() -> None:
    ctx = toy_context()
    task = single_template_task()
    everything = pair_counts(task.train_samples(ctx, random.Random(0)))
    half = pair_counts(build_mixture([(task, 0.5)], ctx, random.Random(1)))
    assert sum(half.values()) == 4 and max(half.values()) == 1
    assert set(half) <= set(everything)
    other = pair_counts(build_mixture([(task, 0.5)], ctx, random.Random(2)))
    assert set(other) != set(half)  # which half depends on the seed


def test_mixture_weight_one_and_a_half() -> None:
    ctx = toy_context()
    counts = pair_counts(build_mixture([(single_template_task(), 1.5)], ctx, random.Random(1)))
    # 8 pairs once, plus a random half (4) a second time
    assert sum(counts.values()) == 12
    assert sorted(Counter(counts.values()).items()) == [(1, 4), (2, 4)]


def test_mixture_of_two_tasks_is_shuffled_together() -> None:
    ctx = toy_context()
    first = single_template_task("First: {history}")
    second = single_template_task("Second: {history}")
    mixture = build_mixture([(first, 1.0), (second, 0.5)], ctx, random.Random(0))
    kinds = [s.prompt.split(":")[0] for s in mixture]
    assert Counter(kinds) == {"First": 8, "Second": 4}
    assert kinds != sorted(kinds)  # interleaved, not one task after the other


def test_mixture_is_deterministic_for_a_seed_and_varies_across_epochs() -> None:
    ctx = toy_context()
    tasks = [(SequentialTask(), 1.5)]
    assert build_mixture(tasks, ctx, random.Random(5)) == build_mixture(
        tasks, ctx, random.Random(5)
    )
    assert build_mixture(tasks, ctx, random.Random(5)) != build_mixture(
        tasks, ctx, random.Random(6)
    )
    rng = random.Random(5)
    epoch_one = build_mixture([(SequentialTask(), 1.0)], ctx, rng)
    epoch_two = build_mixture([(SequentialTask(), 1.0)], ctx, rng)
    # same pairs up to template choice, different template draws
    assert Counter(s.response for s in epoch_one) == Counter(s.response for s in epoch_two)
    assert {s.prompt for s in epoch_one} != {s.prompt for s in epoch_two}


# ---------------------------------------------------------------- data requirements


class NeedsItemTexts(SequentialTask):
    """A task that declares it reads item texts (not registered)."""

    name = "needs_texts"
    requires = ("item_texts",)


def test_check_names_the_missing_field_and_dataset() -> None:
    with pytest.raises(TaskDataError) as info:
        NeedsItemTexts().check(toy_context())
    message = str(info.value)
    assert "'needs_texts'" in message and "'item_texts'" in message
    assert "'toy'" in message and "toy.inter" in message


def test_check_passes_when_the_field_is_present() -> None:
    NeedsItemTexts().check(toy_context(item_texts=[f"item {i}" for i in range(8)]))


def test_mixture_refuses_a_task_whose_data_is_missing() -> None:
    ctx = toy_context()
    with pytest.raises(TaskDataError, match="item_texts"):
        build_mixture([(SequentialTask(), 1.0), (NeedsItemTexts(), 1.0)], ctx, random.Random(0))


class NeedsUserText(SequentialTask):
    """A task that reads the users' review texts, which live on the dataset (not registered)."""

    name = "needs_user_text"
    requires = ("user_text",)


def test_check_finds_fields_on_the_dataset() -> None:
    ctx = toy_context()
    with pytest.raises(TaskDataError, match="'user_text'"):
        NeedsUserText().check(ctx)
    ctx.dataset.user_text = [["great"], ["fine"], ["meh"]]
    NeedsUserText().check(ctx)

"""ULMRec's alignment tasks: user index <-> preferences, history -> index, rating prediction,
intent -> candidate letter; and the MAE/RMSE of rating prediction."""

from __future__ import annotations

import dataclasses
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semrec.data import RecDataset, leave_one_out
from semrec.evaluation.rating import (
    baseline_ratings,
    error_metrics,
    evaluate_rating_task,
    predicted_ratings,
    rating_report,
)
from semrec.ranking.candidates import CandidateSets
from semrec.tasks import TASKS, TaskContext, TaskDataError
from semrec.tasks.preferences import derived_preference, user_preferences

GENRES = ["Drama", "Comedy", "Horror"]


def rated_toy(users: int = 3, length: int = 7, ratings: bool = True) -> RecDataset:
    """User ``u`` sees items ``u, u+1, ...``; item ``i`` has genre ``GENRES[i % 3]`` and the
    rating ``5`` for Drama, ``3`` for Comedy and ``1`` for Horror."""
    items = np.concatenate([np.arange(u, u + length) for u in range(users)])
    n_items = users + length
    return RecDataset(
        name="toy",
        user_ids=[f"u{u}" for u in range(users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        users=np.repeat(np.arange(users), length),
        items=items,
        timestamps=np.tile(np.arange(length), users),
        ratings=np.array([[5.0, 3.0, 1.0][i % 3] for i in items]) if ratings else None,
        item_text=[{"title": f"Film {i}", "categories": GENRES[i % 3]} for i in range(n_items)],
        user_features=[
            {"age": str(20 + u), "gender": "MF"[u % 2], "zip_code": "1"} for u in range(users)
        ],
        source="toy.inter",
    )


def context(ds: RecDataset, **extra) -> TaskContext:
    split = leave_one_out(ds, max_history=20)
    return TaskContext(
        ds,
        split,
        [f"<a_{i}>" for i in range(ds.num_items)],
        user_sids=[f"<ua_{u}><ub_0>" for u in range(ds.num_users)],
        **extra,
    )


def test_the_derived_preference_reads_training_items_only():
    ds = rated_toy()
    ctx = context(ds)
    text = user_preferences(ctx, "user_preference", "history")[0]
    # user 0's training part is items 0..4: Drama (5) 0, 3; Comedy (3) 1, 4; Horror (1) 2
    assert text == (
        "Likes Drama. Dislikes Horror. Favourites: Film 3; Film 0. Profile: age 20, gender M."
    )
    # the valid and test items (5, 6) change nothing
    ratings = ds.ratings.copy()
    ratings[5:7] = 1.0
    changed = context(dataclasses.replace(ds, ratings=ratings))
    assert user_preferences(changed, "user_preference", "history")[0] == text
    # without ratings every training item counts as liked, and the latest come first
    unrated = rated_toy(ratings=False)
    assert derived_preference(unrated, 0, np.arange(5), {}).startswith(
        "Likes Drama, Comedy, Horror. Favourites: Film 4; Film 3."
    )


def test_annotated_preferences_name_the_command_when_missing():
    ctx = context(rated_toy())
    with pytest.raises(TaskDataError, match="--kind preference"):
        user_preferences(ctx, "user_preference", "annotations")
    ctx.annotations = {"preference": {"u1": "  likes  films "}}
    assert user_preferences(ctx, "user_preference", "annotations") == ["", "likes films", ""]


@pytest.mark.parametrize(
    ("user_index", "expected"),
    [("sid", "<ua_1><ub_0>"), ("original", "u1"), ("number", "2")],
)
def test_index_tasks_answer_with_the_user_index(user_index, expected):
    ctx = context(rated_toy())
    rng = random.Random(0)
    params = {"user_index": user_index, "preference_source": "history"}
    to_index = TASKS.get("preference_user")(**params).train_samples(ctx, rng)
    assert [s.user for s in to_index] == [0, 1, 2]  # one pair per user
    assert to_index[1].response == expected
    assert "Likes Drama" in to_index[1].prompt
    from_index = TASKS.get("user_preference")(**params).train_samples(ctx, rng)
    assert expected in from_index[1].prompt and from_index[1].response.startswith("Likes")
    history = TASKS.get("history_user")(user_index=user_index, templates=["{history}"])
    pairs = history.train_samples(ctx, rng)
    assert pairs[1].prompt == "(1) Film 1 (2) Film 2 (3) Film 3 (4) Film 4 (5) Film 5"
    assert pairs[1].response == expected
    with pytest.raises(ValueError, match="can't be none"):
        TASKS.get("history_user")(user_index="none")


def test_rating_prediction_hides_the_rating_it_asks_for():
    ds = rated_toy()
    ctx = context(ds)
    task = TASKS.get("rating_prediction")(
        user_index="original", preference_source="history", templates=["{user}|{history}"]
    )
    sample = task.train_samples(ctx, random.Random(0))[0]
    # user 0's training part is items 0..4; item 4 (Comedy) is rated, its 3.0 not shown
    assert sample.prompt == (
        "u0|(1) Film 0 (Rating: 5.0) (2) Film 1 (Rating: 3.0) (3) Film 2 (Rating: 1.0) "
        "(4) Film 3 (Rating: 5.0) (5) Film 4"
    )
    assert sample.response == "3.0"
    test = ctx.split.test
    seen = [ctx.split.seen_items(ex, "test") for ex in test]
    prompts, truth = task.eval_pairs(ctx, test, seen)
    assert prompts[0].endswith("(6) Film 5 (Rating: 1.0) (7) Film 6")  # the test item, unrated
    assert truth == [5.0, 3.0, 1.0]  # items 6, 7, 8: Drama, Comedy, Horror
    with pytest.raises(TaskDataError, match="'ratings'"):
        task.train_samples(context(rated_toy(ratings=False)), random.Random(0))


def test_intent_to_candidate_answers_with_the_letter_of_the_last_training_item():
    ds = rated_toy()
    split = leave_one_out(ds, max_history=20)
    rng = np.random.default_rng(0)

    def sets(examples):
        out = []
        for ex in examples:
            others = [i for i in range(ds.num_items) if i != ex.target][:3]
            out.append(tuple(rng.permutation([ex.target, *others]).tolist()))
        return out

    candidates = CandidateSets(4, sets(split.train), sets(split.valid), sets(split.test))
    candidates.index(split)
    ctx = context(ds, candidates=candidates)
    task = TASKS.get("intent_candidate")(
        preference_source="history", templates=["{user}{preference}|{candidates}"]
    )
    samples = task.train_samples(ctx, random.Random(1))
    assert [s.user for s in samples] == [0, 1, 2]
    for sample in samples:
        last = [ex for ex in split.train if ex.user == sample.user][-1]
        assert sample.target_item == last.target
        listed = sample.prompt.split("|")[1]
        assert f"({sample.response}) Film {last.target}" in listed
        assert "Likes" in sample.prompt and "(1)" not in sample.prompt  # no history
    with pytest.raises(TaskDataError, match="training task"):
        task.prompt(ctx, split.test[0])


class RatingLM(torch.nn.Module):
    """Last-position logits: ``log 1`` for token "1"... so p(r) is proportional to r."""

    def __init__(self, vocab: int, rating_ids: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.row = torch.full((vocab,), -1e4)
        self.row[rating_ids] = torch.log(torch.arange(1.0, 6.0))

    def forward(self, input_ids, attention_mask, position_ids):
        logits = torch.zeros(*input_ids.shape, len(self.row))
        logits[:, -1] = self.row
        return SimpleNamespace(logits=logits)


def test_predicted_ratings_are_the_expected_rating_over_the_scale():
    from semrec.models.backbone import tiny_tokenizer
    from semrec.models.prompting import PromptFormatter

    hf = tiny_tokenizer()
    encoder = PromptFormatter(hf, use_chat_template=False)
    ids = [hf.convert_tokens_to_ids(str(r)) for r in range(1, 6)]
    model = RatingLM(len(hf), ids)
    expected = sum(r * r for r in range(1, 6)) / 15  # p(r) = r / 15
    assert predicted_ratings(model, encoder, ["a", "the user"], batch_size=1) == pytest.approx(
        [expected, expected]
    )
    # evaluate_rating_task: the same prediction for every test item, and both baselines
    ctx = context(rated_toy())
    task = TASKS.get("rating_prediction")(user_index="original", preference_source="history")
    metrics = evaluate_rating_task(model, encoder, task, ctx, ctx.split.test)
    truth = [5.0, 3.0, 1.0]
    assert metrics["test/rated"] == 3
    assert metrics["test/rating_mae"] == pytest.approx(np.mean([abs(expected - t) for t in truth]))
    assert metrics["test/rating_rmse"] == pytest.approx(
        math.sqrt(np.mean([(expected - t) ** 2 for t in truth]))
    )
    assert "user_mean/test/rating_mae" in metrics and "global_mean/test/rating_rmse" in metrics
    line = rating_report(metrics)
    assert line.startswith("[eval] rating prediction on 3 test items, MAE / RMSE: ")
    assert f"{metrics['test/rating_mae']:.4f} / {metrics['test/rating_rmse']:.4f}" in line


def test_error_metrics_and_baselines():
    assert error_metrics([1.0, 4.0], [2.0, 2.0]) == {
        "rating_mae": 1.5,
        "rating_rmse": pytest.approx(math.sqrt(2.5)),
    }
    predictions = baseline_ratings([0, 1], [[5.0, 3.0], []])
    assert predictions == {"global_mean": [4.0, 4.0], "user_mean": [4.0, 4.0]}
    assert baseline_ratings([0], [[5.0], [1.0, 1.0, 1.0]])["user_mean"] == [5.0]


def test_a_category_is_never_both_liked_and_disliked():
    ds = rated_toy()
    # user 0 rates two Drama items 5 and two 1: Drama is liked, so not also disliked
    rating_of = {(0, 0): 5.0, (0, 3): 5.0, (0, 6): 1.0, (0, 9): 1.0, (0, 2): 1.0}
    text = derived_preference(ds, 0, np.array([0, 3, 6, 9, 2]), rating_of)
    assert text.startswith("Likes Drama. Dislikes Horror. Favourites: Film 3; Film 0.")

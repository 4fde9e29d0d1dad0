"""Rating prediction scored by MAE and RMSE (ULMRec section 4.2.5), beside two baselines.

The model's rating of an item is the expectation over the rating tokens ``"1"`` ... ``"5"``
at the answer position: softmax over their logits (the verbalizer of
:mod:`semrec.ranking.verbalizer`, with ratings in place of letters), then
``sum(p_r * r)``. No generation. The baselines predict the mean training rating of all
users (``global_mean``) and of the user (``user_mean``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from semrec.prompts.batching import PromptEncoder
from semrec.ranking.verbalizer import VerbalizerRanker, letter_token_ids

RATING_SCALE = (1, 2, 3, 4, 5)


def error_metrics(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """``rating_mae`` and ``rating_rmse`` of ``predicted`` against ``truth``."""
    errors = np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {
        "rating_mae": float(np.abs(errors).mean()),
        "rating_rmse": float(np.sqrt((errors**2).mean())),
    }


@torch.no_grad()
def predicted_ratings(
    model: torch.nn.Module,
    encoder: PromptEncoder,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    scale: Sequence[int] = RATING_SCALE,
) -> list[float]:
    """The model's expected rating for each prompt (see the module docstring)."""
    ranker = VerbalizerRanker(letter_token_ids(encoder.response_ids, [str(r) for r in scale]))
    values = torch.tensor([float(r) for r in scale])
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = encoder.collate_prompts(
            [encoder.prompt_ids(p) for p in prompts[start : start + batch_size]]
        )
        logits = ranker.scores(
            model, batch["input_ids"].to(device), batch["attention_mask"].to(device)
        ).cpu()
        out.extend((torch.softmax(logits, dim=1) * values).sum(dim=1).tolist())
    return out


def baseline_ratings(
    users: Sequence[int], train_ratings: Sequence[Sequence[float]]
) -> dict[str, list[float]]:
    """The predictions of ``global_mean`` and ``user_mean`` for ``users`` (a user without
    training ratings gets the global mean)."""
    pooled = [r for ratings in train_ratings for r in ratings]
    overall = float(np.mean(pooled)) if pooled else 0.0
    return {
        "global_mean": [overall] * len(users),
        "user_mean": [
            float(np.mean(train_ratings[u])) if len(train_ratings[u]) else overall for u in users
        ],
    }


def evaluate_rating_task(
    model: torch.nn.Module,
    encoder: PromptEncoder,
    task,
    ctx,
    examples: Sequence,
    *,
    batch_size: int = 16,
) -> dict[str, float]:
    """MAE/RMSE of ``task`` (:class:`~semrec.tasks.user_alignment.RatingPredictionTask`) on
    rating each example's target after everything its user saw before it, with the
    baselines': ``test/rating_mae``, ``user_mean/test/rating_mae``, ... and ``test/rated``."""
    split = ctx.split
    seen = [split.seen_items(example, "test") for example in examples]
    prompts, truth = task.eval_pairs(ctx, list(examples), seen)
    metrics = {"test/rated": float(len(truth))}
    predicted = predicted_ratings(model, encoder, prompts, batch_size=batch_size)
    metrics.update({f"test/{k}": v for k, v in error_metrics(predicted, truth).items()})
    rating_of = ctx.dataset.ratings_by_pair
    train_ratings = [
        [rating_of[(user, int(item))] for item in sequence]
        for user, sequence in enumerate(split.train_sequences)
    ]
    users = [example.user for example in examples]
    for name, values in baseline_ratings(users, train_ratings).items():
        metrics.update({f"{name}/test/{k}": v for k, v in error_metrics(values, truth).items()})
    return metrics


def rating_report(metrics: dict[str, float]) -> str:
    """The line a run prints for :func:`evaluate_rating_task`'s metrics."""

    def pair(prefix: str) -> str:
        return f"{metrics[prefix + 'rating_mae']:.4f} / {metrics[prefix + 'rating_rmse']:.4f}"

    return (
        f"[eval] rating prediction on {metrics['test/rated']:.0f} test items, MAE / RMSE: "
        f"{pair('test/')} (user mean {pair('user_mean/test/')}, global mean "
        f"{pair('global_mean/test/')})"
    )

"""Next-user prediction as a secondary metric (TTDS section 4.2.4): HR/NDCG over all users.

For each held-out test interaction, the prompt is its item and the item's training
audience (:func:`~semrec.tasks.high_order.next_user_eval_samples`); the model's beam search
under the user trie ranks every user, and the interaction's user is the target. Beside it,
``next_user_popularity`` ranks users by their number of training interactions.
"""

from __future__ import annotations

import numpy as np
import torch

from semrec.data.split import Example, Split
from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.metrics.ranking import TopKRankingMetrics
from semrec.prompts.batching import PromptEncoder
from semrec.tasks.base import TaskContext
from semrec.tasks.high_order import NextUserTask, next_user_eval_samples


def evaluate_next_user(
    model: torch.nn.Module,
    encoder: PromptEncoder,
    user_trie: SIDTrie,
    decoder: ConstrainedBeamSearch,
    task: NextUserTask,
    ctx: TaskContext,
    examples: list[Example],
    ks: list[int],
    *,
    batch_size: int = 16,
) -> dict[str, float]:
    """``next_user/test/*`` and ``next_user_popularity/test/*`` metrics (see the module)."""
    samples, targets = next_user_eval_samples(task, ctx, examples)
    if not samples:
        return {}
    device = next(model.parameters()).device
    model_metric = TopKRankingMetrics(ks, user_trie.num_items)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = encoder.collate_prompts([encoder.prompt_ids(samples[i].prompt) for i in rows])
        result = decoder.search(
            model,
            user_trie,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            max(ks),
        )
        model_metric.update(result.items.cpu(), torch.tensor([targets[i] for i in rows]))
    popular = TopKRankingMetrics(ks, user_trie.num_items)
    ranking = torch.from_numpy(np.argsort(-user_activity(ctx.split), kind="stable").copy())
    popular.update(ranking[: max(ks)].repeat(len(targets), 1), torch.tensor(targets))
    out = {f"next_user/test/{k}": v for k, v in model_metric.compute().items()}
    out.update({f"next_user_popularity/test/{k}": v for k, v in popular.compute().items()})
    return out


def user_activity(split: Split) -> np.ndarray:
    """Training interactions per user."""
    return np.array([len(s) for s in split.train_sequences], dtype=np.int64)

"""Post-training from ``train.post``: the prompts, the reward, the objective and its module."""

from __future__ import annotations

from collections.abc import Callable

import torch

from semrec.config import ExperimentConfig
from semrec.data.split import Split
from semrec.decoding import SIDTrie
from semrec.factories.decoding import beam_search
from semrec.factories.prompts import build_datamodule


def datamodule(config: ExperimentConfig, split: Split, sft_source):
    """Batches of training prefixes as prompts (``train.post.batch_size`` a step), and the
    evaluation prompts of the SFT source."""
    from semrec.posttrain.data import PostTrainingPrompts

    post = config.train.post
    source = PostTrainingPrompts(
        sft_source,
        split.train,
        per_epoch=post.prompts_per_epoch,
        seed=config.seed,
        mask_history=config.eval.mask_history,
    )
    return build_datamodule(config, split, source, batch_size=post.batch_size)


def reward(config: ExperimentConfig, split: Split, echo: Callable[[str], None] = print):
    """The GRPO reward of ``train.post.reward``; ``collaborative`` fits (or reuses from the
    cache) the SASRec of ``eval.baseline_params.sasrec`` with the run's seed, the same model
    as the SASRec baseline row."""
    from semrec.posttrain.rewards import REWARDS

    name = config.train.post.reward
    factory = REWARDS.get(name)
    if name != "collaborative":
        return factory()
    from semrec.evaluation.baselines import fitted_baseline

    recommender = fitted_baseline(config.eval, "sasrec", config.seed, split)
    echo(
        "[post] collaborative reward: SASRec "
        + ("reused from the cache" if recommender.from_cache else "fitted")
    )
    return factory(recommender)


def module(
    config: ExperimentConfig,
    model: torch.nn.Module,
    trie: SIDTrie,
    reference,
    split: Split,
    output_ids: torch.Tensor | None,
    echo: Callable[[str], None] = print,
):
    """The :class:`~semrec.posttrain.module.PostTrainingModule` of ``train.post``."""
    from semrec.posttrain.module import PostTrainingModule
    from semrec.posttrain.objectives import GRPO, Preference

    post = config.train.post
    if post.method == "grpo":
        objective = GRPO(
            beam_search(config.eval, max(post.group_size, config.eval.num_beams)),
            reward(config, split, echo),
            reference,
            group_size=post.group_size,
            beta=post.beta,
            clip_epsilon=post.clip_epsilon,
            output_ids=output_ids,
        )
    else:
        beams = post.negative_source == "beams"
        objective = Preference(
            reference,
            loss=post.method,
            beta=post.beta,
            negatives=post.negatives,
            source=post.negative_source,
            rollouts=beam_search(config.eval, max(post.negatives + 1, config.eval.num_beams))
            if beams
            else None,
            popularity=None if beams else torch.from_numpy(split.train_item_counts()),
            output_ids=output_ids,
            sft_weight=post.sft_weight,
        )
    return PostTrainingModule(
        model,
        beam_search(config.eval),
        trie,
        objective,
        ks=config.eval.ks,
        lr=post.lr,
        weight_decay=post.weight_decay,
        warmup_ratio=post.warmup_ratio,
    )

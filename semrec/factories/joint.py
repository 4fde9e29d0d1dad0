"""Dynamic tokenizers from ``train.joint``: their inputs, warm-up, and the joint-training collaborator.

A dynamic tokenizer (``ttds``) is initialised after the LLM is built, because its inputs
are the LLM's own representations of the item and user texts (TTDS Eq. 6), and warmed up
with the LLM frozen. ``train.joint.enabled: false`` stops there (TTSS: the SIDs stay as the
warm-up left them); otherwise :class:`~semrec.models.joint.JointTokenizerTraining` trains
them with the LLM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from semrec.config import ExperimentConfig, TokenizerConfig
from semrec.data import RecDataset, Split
from semrec.decoding import SIDTrie
from semrec.embedders.users import train_sequences
from semrec.models.joint import JointSchedule, JointTokenizerTraining
from semrec.models.sid_reader import LLMSIDReader
from semrec.tokenizers import TOKENIZERS
from semrec.tokenizers.dynamic import DynamicTokenizer


def is_dynamic(cfg: TokenizerConfig | None) -> bool:
    """Whether the tokenizer ``cfg`` names is trained with the LLM."""
    return cfg is not None and issubclass(TOKENIZERS.get(cfg.name), DynamicTokenizer)


def user_texts(dataset: RecDataset, split: Split, item_texts: Sequence[str], recent: int = 10):
    """Per user: the profile fields (if any) and the last ``recent`` training items' texts."""
    texts = []
    for user, sequence in enumerate(train_sequences(split)):
        parts = []
        if dataset.user_features is not None:
            features = dataset.user_features[user]
            parts.append("; ".join(f"{key}: {value}" for key, value in features.items()))
        if len(sequence):
            recent_items = "; ".join(item_texts[int(i)] for i in sequence[-recent:])
            parts.append(f"recently: {recent_items}")
        texts.append(". ".join(parts) or f"user {dataset.user_ids[user]}")
    return texts


def level_token_ids(tokenizer: DynamicTokenizer, hf_tokenizer) -> list[list[int]]:
    return [hf_tokenizer.convert_tokens_to_ids(level) for level in tokenizer.level_token_strings()]


def representer(config: ExperimentConfig, hf_tokenizer) -> Callable:
    """``represent(model, texts)``: the backbone's mean-pooled last hidden states (Eq. 6)."""
    from semrec.text.encoders import LLMMeanEncoder

    def represent(model, texts):
        encoder = LLMMeanEncoder(
            backbone=(model, hf_tokenizer),
            batch_size=config.eval.batch_size,
            max_length=config.train.joint.max_text_tokens,
        )
        return encoder.encode(list(texts)).clone()  # a normal tensor, not an inference one

    return represent


def initialize(
    tokenizer: DynamicTokenizer,
    inputs: torch.Tensor,
    model,
    hf_tokenizer,
    config: ExperimentConfig,
    echo: Callable[[str], None] = print,
    entity: str = "items",
) -> None:
    """Initialise ``tokenizer`` on ``inputs`` and warm it up with the LLM frozen."""
    from semrec.models.loss import base_causal_lm

    joint = config.train.joint
    hidden = base_causal_lm(model).config.get_text_config().hidden_size
    tokenizer.initialize(inputs, reader_dim=hidden if joint.dm_vae else None)
    reader = None
    if joint.dm_vae:
        reader = LLMSIDReader(
            model, level_token_ids(tokenizer, hf_tokenizer)[: len(tokenizer.level_sizes)]
        )
    was_training = model.training
    model.eval()  # the LLM is frozen during the warm-up: no dropout either
    try:
        losses = tokenizer.warm_up(
            reader,
            steps=joint.warmup_steps,
            lr=joint.warmup_lr,
            batch_size=joint.warmup_batch_size,
        )
    finally:
        model.train(was_training)
    stats = tokenizer.stats()
    shown = f", L_DM {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    last = tokenizer.refreshes[-1] if tokenizer.refreshes else {"accepted": True}
    refused = (
        ""
        if last["accepted"]
        else f"; its codes were REFUSED ({last['collision_rate_before_suffix']:.1%} of rows "
        f"collide, largest group {last['largest_group']} > suffix_size "
        f"{tokenizer.suffix_size}: the tower collapsed), so the initial codes stay"
    )
    static = last.get("static_collision_rate")
    beside = (
        "" if static is None else f" (static residual k-means on the same inputs: {static:.2%})"
    )
    echo(
        f"[tokenize] {entity}: {type(tokenizer).__name__} warmed up for {len(losses)} steps"
        f"{shown}{refused}; collisions {stats['collision_rate_before']:.2%} before the "
        f"suffix{beside}, {stats['collision_rate_after']:.2%} after"
    )


def joint_training(
    config: ExperimentConfig,
    tokenizers: dict[str, DynamicTokenizer],
    hf_tokenizer,
    texts: dict[str, list[str]] | None,
) -> JointTokenizerTraining | None:
    """The collaborator that trains ``tokenizers`` with the LLM (None when joint is off)."""
    joint = config.train.joint
    if not joint.enabled:
        for tokenizer in tokenizers.values():
            tokenizer.requires_grad_(False)
        return None
    schedule = JointSchedule(
        alpha=joint.alpha if joint.dm_vae else 0.0,
        lr=joint.lr,
        refresh_every_n_steps=joint.refresh_every_n_steps,
        recompute_inputs_every_n_steps=joint.recompute_inputs_every_n_steps,
        freeze_after_step=joint.freeze_after_step,
        rows_per_step=joint.rows_per_step,
    )
    if not joint.dm_vae:
        for tokenizer in tokenizers.values():
            tokenizer.requires_grad_(False)
    return JointTokenizerTraining(
        tokenizers,
        {name: level_token_ids(tok, hf_tokenizer) for name, tok in tokenizers.items()},
        schedule,
        texts=texts,
        represent=representer(config, hf_tokenizer) if texts else None,
    )


def trie_builder(tokenizer: DynamicTokenizer, hf_tokenizer) -> Callable[[torch.Tensor], SIDTrie]:
    """``codes -> SIDTrie``: the items' trie for a code table of ``tokenizer``."""
    from semrec.factories.decoding import sid_trie

    return lambda codes: sid_trie(tokenizer, codes, hf_tokenizer)

"""The prompts of a run from ``tasks:``/``model:``/``dataset:``: the tasks, their text pairs or
compact windows, and the DataModule that batches them (training and evaluation prompts).

Serving builds its prompts here too, so nothing in this module trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from semrec.config import ExperimentConfig
from semrec.data import Split
from semrec.errors import RunError
from semrec.prompts.batching import PromptEncoder
from semrec.prompts.compact import CompactSequences
from semrec.prompts.datamodule import GenRecDataModule, TrainingData
from semrec.prompts.task_pairs import TaskPairs
from semrec.tasks import TASKS, RecommendationTask, Task, TaskContext
from semrec.tokenizers import ItemTokenizer
from semrec.tokenizers.dynamic import DynamicTokenizer


def build_tasks(config: ExperimentConfig) -> list[tuple[Task, float]]:
    """The configured (task, weight) pairs of ``tasks:``."""
    return [(TASKS.get(t.name)(**t.params), t.weight) for t in config.tasks]


def compact_prefix(config: ExperimentConfig, hf_tokenizer) -> list[int]:
    """Tokens opening every compact window and prompt: for a pretrained backbone the
    tokenizer's special start tokens (BOS, if it adds one) and ``model.compact_instruction``."""
    model = config.model
    if model.backbone == "scratch":
        return []
    text = model.compact_instruction or ""
    return list(hf_tokenizer(text, add_special_tokens=True).input_ids)


def compact_titles(
    config: ExperimentConfig, hf_tokenizer, item_texts: list[str] | None
) -> list[list[int]] | None:
    """Per item, the first ``model.compact_title_tokens`` tokens of its text (None: off)."""
    count = config.model.compact_title_tokens
    if count == 0:
        return None
    if item_texts is None:
        raise RunError(
            "model.compact_title_tokens: the dataset has no item texts to write after the SIDs"
        )
    return [
        list(hf_tokenizer(" " + text, add_special_tokens=False).input_ids[:count])
        for text in item_texts
    ]


def compact_sequences(
    config: ExperimentConfig,
    split: Split,
    tokenizer: ItemTokenizer,
    hf_tokenizer,
    item_texts: list[str] | None = None,
) -> CompactSequences:
    """The compact format's training windows (``model.prompt_format: compact``); a dynamic
    tokenizer's are written out in its current codes when batched."""

    def table() -> list[list[int]]:
        return [hf_tokenizer.convert_tokens_to_ids(sid) for sid in tokenizer.index().values()]

    item_tokens = table()
    if isinstance(tokenizer, DynamicTokenizer):
        cache = {"codes": tokenizer.codes.clone(), "table": item_tokens}

        def current() -> list[list[int]]:
            if not torch.equal(cache["codes"], tokenizer.codes):
                cache.update(codes=tokenizer.codes.clone(), table=table())
            return cache["table"]

        item_tokens = current
    return CompactSequences(
        split,
        item_tokens,
        sep_id=hf_tokenizer.sep_token_id,
        pad_id=hf_tokenizer.pad_token_id,
        max_history=config.dataset.max_history,
        window_items=config.model.compact_window,
        prefix=compact_prefix(config, hf_tokenizer),
        suffixes=compact_titles(config, hf_tokenizer, item_texts),
        max_examples=config.train.max_train_samples,
        seed=config.seed,
    )


def task_pairs(
    config: ExperimentConfig,
    context: TaskContext,
    tasks: list[tuple[Task, float]],
    formatter: PromptEncoder,
    echo: Callable[[str], None] = print,
    placeholders=None,
) -> TaskPairs:
    """The text formats' instruction pairs; valid/test prompts come from ``eval.task``."""
    for task, _ in tasks:
        for note in task.notes():
            echo(f"[tasks] {note}")
    eval_name = config.eval.task
    eval_task = next((t for t, _ in tasks if t.name == eval_name), None)
    if eval_task is None:
        eval_task = TASKS.get(eval_name)()
    if not isinstance(eval_task, RecommendationTask):
        raise RunError(
            f"eval.task: {eval_name!r} does not recommend items (its response is not a "
            "SID); use a recommendation task such as 'seq'"
        )
    return TaskPairs(
        context,
        tasks,
        eval_task,
        formatter,
        max_train_samples=config.train.max_train_samples,
        seed=config.seed,
        placeholders=placeholders,
        pack_tokens=config.train.pack_tokens,
    )


def build_datamodule(
    config: ExperimentConfig,
    split: Split,
    training: TrainingData,
    *,
    batch_size: int | None = None,
) -> GenRecDataModule:
    """The data module of ``training`` (``batch_size`` overrides ``train.batch_size``)."""
    cfg = config
    return GenRecDataModule(
        training,
        split,
        batch_size=batch_size or cfg.train.batch_size,
        eval_batch_size=cfg.eval.batch_size,
        max_valid_users=cfg.eval.max_valid_users,
        max_test_users=cfg.eval.max_test_users,
        mask_history=cfg.eval.mask_history,
        bucket_by_length=cfg.train.bucket_by_length,
        seed=cfg.seed,
    )

"""Training from ``train:``/``model:``/``eval:``: the LightningModule, the Trainer and its callbacks.

The prompts it trains on come from :mod:`semrec.factories.prompts`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semrec.config import ExperimentConfig, PostTrainConfig, TrainConfig
from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.errors import RunError


def build_module(
    config: ExperimentConfig,
    model: torch.nn.Module,
    decoder: ConstrainedBeamSearch,
    trie: SIDTrie,
    exact_ranker=None,
    candidate_ranker=None,
    *,
    joint=None,
    trie_builder=None,
    batch_encoder=None,
    sid_token_ids: Sequence[int] = (),
    distillation=None,
):
    """The LightningModule; ``sid_token_ids`` are the tokens a ``train.softmax: sid_tokens``
    training scores over; ``distillation`` (see :func:`distillation`) adds ``train.distill``."""
    from semrec.models.module import GenRecModule

    output_ids = None
    if config.train.softmax == "sid_tokens":
        output_ids = torch.tensor(sorted(set(sid_token_ids)), dtype=torch.long)

    return GenRecModule(
        model,
        decoder,
        trie,
        ks=config.eval.ks,
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        warmup_ratio=config.train.warmup_ratio,
        exact_ranker=exact_ranker,
        candidate_ranker=candidate_ranker,
        joint=joint,
        trie_builder=trie_builder if joint is not None else None,
        batch_encoder=batch_encoder,
        output_ids=output_ids,
        distillation=distillation,
    )


def distillation(
    config: ExperimentConfig, split, training_source, echo: Callable[[str], None] = print
):
    """The :class:`~semrec.models.distillation.TeacherDistillation` of ``train.distill`` (None
    without it). The teacher is fitted, or reused from the cache, with the run's seed and
    ``eval.baseline_params``: the same model as that baseline's row in the test."""
    distill = config.train.distill
    if distill is None:
        return None
    from semrec.evaluation.baselines import fitted_baseline
    from semrec.models.distillation import TeacherDistillation

    teacher = fitted_baseline(config.eval, distill.teacher, config.seed, split)
    echo(
        f"[train] distilling from {distill.teacher} (weight {distill.weight}, temperature "
        f"{distill.temperature}): " + ("reused from the cache" if teacher.from_cache else "fitted")
    )
    return TeacherDistillation(
        teacher,
        [tokens[1:] for tokens in training_source.item_tokens],  # without the separator
        max_history=config.dataset.max_history,
        weight=distill.weight,
        temperature=distill.temperature,
        mask_history=config.eval.mask_history,
    )


def resolve_precision(train: TrainConfig) -> str:
    from semrec.models.backbone import resolve_precision as resolve

    return resolve(train.precision)


def monitored_metric(config: ExperimentConfig) -> str:
    """The validation metric that picks the best adapter and drives early stopping."""
    return f"val/ndcg@{max(config.eval.ks)}"


@dataclass(frozen=True)
class Schedule:
    """How long one training loop runs, when it validates and where it logs: supervised
    fine-tuning (:meth:`sft`, from ``train:``) or post-training (:meth:`post`)."""

    epochs: int
    max_steps: int
    val_check_interval: float | int
    check_val_every_n_epoch: int
    early_stopping_patience: int | None
    log_name: str

    @classmethod
    def sft(cls, train: TrainConfig) -> Schedule:
        return cls(
            train.epochs,
            train.max_steps,
            train.val_check_interval,
            train.check_val_every_n_epoch,
            train.early_stopping_patience,
            "logs",
        )

    @classmethod
    def post(cls, post: PostTrainConfig) -> Schedule:
        return cls(
            post.epochs,
            post.max_steps,
            post.val_check_interval,
            1,
            post.early_stopping_patience,
            "post_logs",
        )


def resume_checkpoints(directory: Path, train: TrainConfig) -> list[Any]:
    """Lightning ``ModelCheckpoint`` callbacks writing full checkpoints for ``fit --resume``:
    ``step.ckpt`` every ``train.checkpoint_every_n_steps`` optimizer steps and
    ``validation.ckpt`` after each validation (each file holds only the newest)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    common = {"dirpath": directory, "save_top_k": 1, "enable_version_counter": False}
    callbacks = [ModelCheckpoint(filename="validation", save_on_train_epoch_end=False, **common)]
    if train.checkpoint_every_n_steps:
        callbacks.append(
            ModelCheckpoint(
                filename="step", every_n_train_steps=train.checkpoint_every_n_steps, **common
            )
        )
    return callbacks


def fit_callbacks(
    config: ExperimentConfig,
    best_checkpoint: Any,
    checkpoints: Path,
    echo: Callable[[str], None] = print,
    extra: Sequence[Any] = (),
    schedule: Schedule | None = None,
) -> list[Any]:
    """Best-adapter checkpoint, resume checkpoints, speed log, early stopping (of
    ``schedule``, default SFT's), then ``extra``."""
    import lightning as L

    from semrec.models.speed import TrainingSpeed, ValidationReport

    schedule = schedule or Schedule.sft(config.train)
    callbacks: list[Any] = [
        best_checkpoint,
        *resume_checkpoints(checkpoints, config.train),
        TrainingSpeed(echo, config.train.report_every_n_steps),
        ValidationReport(echo),
    ]
    if schedule.early_stopping_patience:
        callbacks.append(
            L.pytorch.callbacks.EarlyStopping(
                monitor=monitored_metric(config),
                mode="max",
                patience=schedule.early_stopping_patience,
            )
        )
    return [*callbacks, *extra]


#: Lightning strategies that split the parameters across processes: no process holds the
#: whole model, which the best-adapter checkpoint and the beam search need
SHARDING_STRATEGIES = ("fsdp", "deepspeed_stage_3")


def multi_process(train: TrainConfig) -> bool:
    """Whether ``train:`` asks for more than one process (``devices: auto`` counts as one:
    what it means is only known once Lightning looks at the machine)."""
    devices = train.devices
    many = len(devices) > 1 if isinstance(devices, list) else devices not in (1, "auto")
    return many or train.num_nodes > 1


def hardware(train: TrainConfig) -> dict[str, Any]:
    """``train.accelerator/strategy/devices/num_nodes`` as Trainer arguments.

    Each process takes its own share of the data (:class:`GenRecDataModule`), so Lightning
    must not add a ``DistributedSampler``. Supported: ``auto``, ``single_device`` and the
    DDP strategies that run the same command in every process (tested on CPU with gloo).
    Refused by name: parameter-sharding strategies (FSDP, ZeRO-3: semrec saves and decodes
    with whole weights), DeepSpeed (its checkpoints are directories with their own state,
    which resume and the atomic checkpoint writer do not handle) and the spawning DDP
    variants.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    strategy = train.strategy
    if strategy != "auto" and strategy not in StrategyRegistry:
        known = ", ".join(sorted(StrategyRegistry.available_strategies()))
        raise RunError(
            f"train.strategy: unknown Lightning strategy {strategy!r} (known: auto, {known})"
        )
    if strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise RunError(
            f"train.strategy: {strategy!r} runs training in new processes whose results "
            "(metrics, ranks) never reach this one; use 'ddp' (Lightning starts one process "
            "per device running the same command) or launch with torchrun"
        )
    if strategy.startswith(SHARDING_STRATEGIES):
        raise NotImplementedError(
            f"train.strategy: {strategy!r} shards the parameters across processes, and "
            "semrec's best-adapter checkpoint and beam search read whole weights in each "
            "process; use 'ddp' (with QLoRA or bf16 for large backbones; see the README, "
            "More than one GPU)"
        )
    if strategy != "auto" and strategy != "single_device" and not strategy.startswith("ddp"):
        raise NotImplementedError(
            f"train.strategy: {strategy!r} is not supported by semrec yet (its checkpoints "
            "and resume are untested); use 'ddp'"
        )
    return {
        "accelerator": train.accelerator,
        "strategy": strategy,
        "devices": train.devices,
        "num_nodes": train.num_nodes,
        "use_distributed_sampler": False,
    }


def fit_trainer(
    config: ExperimentConfig,
    run_dir: Path,
    callbacks: list[Any],
    schedule: Schedule | None = None,
):
    """The training ``lightning.Trainer`` of ``schedule`` (default SFT's): CSV and
    TensorBoard logs in ``run_dir/<schedule.log_name>``."""
    import lightning as L

    from semrec.models.checkpoint import AtomicCheckpointIO

    train = config.train
    schedule = schedule or Schedule.sft(train)
    return _results_stay_here(
        L.Trainer(
            **hardware(train),
            max_epochs=schedule.epochs,
            max_steps=schedule.max_steps,
            precision=resolve_precision(train),
            accumulate_grad_batches=train.accumulate_grad_batches,
            gradient_clip_val=train.gradient_clip,
            val_check_interval=schedule.val_check_interval,
            check_val_every_n_epoch=schedule.check_val_every_n_epoch,
            log_every_n_steps=train.log_every_n_steps,
            reload_dataloaders_every_n_epochs=1,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            enable_progress_bar=train.progress_bar,
            logger=[
                L.pytorch.loggers.CSVLogger(run_dir, name=schedule.log_name),
                L.pytorch.loggers.TensorBoardLogger(
                    run_dir, name="tb" if schedule.log_name == "logs" else f"tb_{schedule.log_name}"
                ),
            ],
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=run_dir,
        )
    )


def test_trainer(config: ExperimentConfig):
    """The evaluation ``lightning.Trainer`` (no logger, no checkpoints)."""
    import lightning as L

    return _results_stay_here(
        L.Trainer(
            **hardware(config.train),
            # the decoder applies eval.precision itself; a bf16 Trainer would autocast it
            precision="bf16-true" if resolve_precision(config.train) == "bf16-true" else "32",
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=config.train.progress_bar,
        )
    )


def _results_stay_here(trainer):
    """The Trainer, unless Lightning chose to spawn or fork worker processes (``devices`` > 1
    in a notebook resolves ``strategy: auto`` so): their metrics and ranks would never come
    back to this process."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        raise RunError(
            "train.devices > 1 here makes Lightning spawn or fork its processes (as in a "
            "notebook), whose results never reach this one; run `semrec fit` from a shell "
            "(strategy 'ddp') or with torchrun"
        )
    return trainer

"""The training stage of a run: fine-tune (or reuse) the adapter, with resume and refusals."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semrec.artifacts import atomic_dir, write_json
from semrec.config import TRAINING_KEYS
from semrec.factories import decoding, joint, training
from semrec.known_warnings import hide_known_warnings
from semrec.pipeline.context import RunContext
from semrec.pipeline.model import ModelStage
from semrec.pipeline.tokenizers import TokenizerStage

JOINT_ON_PROCESSES = (
    "a tokenizer trained with the LLM ({}) on more than one process: each would refresh its "
    "own codes; train it on one device (train.devices: 1, train.num_nodes: 1)"
)


class TrainStage:
    """Trains the model of :class:`~semrec.pipeline.model.ModelStage` into ``run_dir/adapter``.

    ``callbacks`` are extra Lightning callbacks for the training Trainer.
    """

    def __init__(
        self,
        context: RunContext,
        tokenizers: TokenizerStage,
        model: ModelStage,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.context = context
        self.tokenizers = tokenizers
        self.model = model
        self.callbacks = list(callbacks)

    def check_replaces_no_model(self) -> None:
        """Refuse to retrain over a finished training of another config (before any stage)."""
        directory = self.context.directory
        if "train" not in directory.stages() or not directory.config_file.is_file():
            return
        directory.stored_config(
            self.context.config,
            TRAINING_KEYS,
            refusal=f"{self.context.run_dir} holds a model trained with another config, which "
            "this fit would retrain and replace; nothing was changed. The keys that differ",
            advice="pass --overwrite (Run.fit(overwrite=True)) to retrain and replace it, or "
            "use another --run-dir",
        )

    def check_resumable(self) -> Path:
        """The newest full checkpoint to resume from; refuses if the training config changed."""
        directory = self.context.directory
        checkpoint = directory.latest_checkpoint()
        directory.stored_config(
            self.context.config,
            TRAINING_KEYS,
            refusal=f"--resume: the config differs from the one {self.context.run_dir} was "
            "trained with, in keys that change training",
            advice=f"resume with the stored config (semrec fit --config "
            f"{directory.config_file} --resume) or start a new run",
        )
        return checkpoint

    def train(self, allow_training: bool = True, resume_from: Path | None = None):
        """Train (or reuse) the adapter; returns (module, datamodule, hf_tokenizer).

        With ``allow_training=False`` (``semrec test``) a missing or stale adapter is an error.
        ``resume_from`` (a full checkpoint) continues an interrupted training.
        """
        from semrec.models.checkpoint import (
            BestAdapterCheckpoint,
            load_trained_tokenizers,
            load_trained_weights,
        )

        context, cfg, stage = self.context, self.context.config, self.model
        dynamic = self.tokenizers.dynamic_tokenizers
        if dynamic and training.multi_process(cfg.train):
            raise NotImplementedError(JOINT_ON_PROCESSES.format(", ".join(dynamic)))
        model, hf_tokenizer, sid_ids = stage.build_model()
        joint_trainer = self.tokenizers.prepare_joint(model, hf_tokenizer)
        adapter_dir = context.run_dir / "adapter"
        fingerprint = stage.train_fingerprint()
        reused = stage.load_trained(model, hf_tokenizer, required=not allow_training)
        nothing_to_train = cfg.train.epochs == 0 or cfg.train.max_steps == 0
        datamodule = stage.datamodule(hf_tokenizer)
        exact = decoding.exact_ranker(cfg.eval, self.tokenizers.inputs.data.dataset.num_items)
        module = training.build_module(
            cfg,
            model,
            decoding.beam_search(cfg.eval),
            self.tokenizers.trie(hf_tokenizer),
            exact,
            stage.candidate_ranker(hf_tokenizer),
            joint=joint_trainer,
            trie_builder=joint.trie_builder(self.tokenizers.tokenizer, hf_tokenizer),
            batch_encoder=getattr(datamodule.training, "encode_pending", None),
            sid_token_ids=sid_ids,
            # the teacher is fitted only for a training that will run
            distillation=None
            if reused is not None or nothing_to_train
            else training.distillation(
                cfg, self.tokenizers.inputs.data.split, datamodule.training, context.echo
            ),
        )
        if reused is not None:
            context.echo(f"[train] reused {reused}")
            return module, datamodule, hf_tokenizer
        checkpoints = context.directory.checkpoints
        if context.rank_zero:
            if resume_from is None and checkpoints.exists():
                shutil.rmtree(checkpoints)  # a new training: old checkpoints are another's
            context.write_config()
            with atomic_dir(context.run_dir / "hf_tokenizer") as tmp:
                hf_tokenizer.save_pretrained(tmp)
        if nothing_to_train:
            if context.rank_zero:
                BestAdapterCheckpoint(adapter_dir, None, dynamic).save(model)
                context.directory.mark_stage("train", fingerprint)
            context.echo("[train] skipped (train.epochs: 0): evaluating the untrained model")
            return module, datamodule, hf_tokenizer

        capped = cfg.train.max_train_samples
        context.echo(
            f"[train] {datamodule.training.examples_per_epoch(0)} training examples per epoch"
            + (f" (capped by train.max_train_samples={capped})" if capped else "")
            + f", {cfg.train.epochs} epoch(s), batch {cfg.train.batch_size}, precision "
            f"{training.resolve_precision(cfg.train)}, validation on "
            f"{len(datamodule.valid_examples)} users"
        )
        if cfg.train.pack_tokens is not None:
            packs = datamodule.training.epoch_items(0)
            context.echo(
                f"[train] pairs packed into {len(packs)} sequences of at most "
                f"{cfg.train.pack_tokens} tokens (train.pack_tokens); a batch holds "
                f"{cfg.train.batch_size} sequences"
            )
        if resume_from is not None:
            context.echo(f"[train] resuming from {resume_from}")
        best = BestAdapterCheckpoint(adapter_dir, training.monitored_metric(cfg), dynamic)
        callbacks = training.fit_callbacks(cfg, best, checkpoints, context.echo, self.callbacks)
        trainer = training.fit_trainer(cfg, context.run_dir, callbacks)
        if joint_trainer is not None and trainer.world_size > 1:  # e.g. devices: auto
            raise NotImplementedError(JOINT_ON_PROCESSES.format(", ".join(dynamic)))
        with context.timed("train"), hide_known_warnings():
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(resume_from) if resume_from is not None else None,
            )
        if context.rank_zero:
            self.plot_training_curves()
            if not best.saved:
                best.save(model)  # no validation ran: keep the final weights
            if best.best_metrics is not None:
                write_json(context.run_dir / "valid_metrics.json", best.best_metrics)
            context.directory.mark_stage("train", fingerprint)
        # every process evaluates the weights rank zero saved
        trainer.strategy.barrier("semrec: adapter saved")
        load_trained_weights(model, adapter_dir)
        load_trained_tokenizers(dynamic, adapter_dir)
        return module, datamodule, hf_tokenizer

    def plot_training_curves(self) -> None:
        """``training_curves.png`` beside the logs: training loss and validation metrics."""
        plot_curves(self.context, "logs", "training_curves.png", self.context.config.name, "train")


def plot_curves(context: RunContext, log_name: str, file_name: str, title: str, tag: str) -> None:
    """Draw ``run_dir/<file_name>`` from the CSV log ``run_dir/<log_name>`` and say where
    (``[tag] training curves: ...``), or why not."""
    from semrec.evaluation.diagnostics import plot_training_curves

    run_dir = context.run_dir
    try:
        path = plot_training_curves(run_dir / log_name, run_dir / file_name, title)
    except FileNotFoundError as err:
        context.echo(f"[{tag}] no training curves: {err}")
        return
    if path is not None:
        context.echo(f"[{tag}] training curves: {path}")

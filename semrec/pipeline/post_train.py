"""The post-training stage of a run (``train.post``): GRPO or DPO / S-DPO after SFT, kept
only where validation beats the SFT model.

It starts from the SFT weights the train stage left in the model, which also become the
frozen reference. Its own fingerprint (the SFT fingerprint and ``train.post``) decides
whether a finished post-training is reused; it writes::

    run_dir/
      post_adapter/            the selected weights (the SFT weights when no validation beat them)
      post_checkpoints/        full Lightning checkpoints (``fit --resume``)
      post_logs/ tb_post_logs/ per-step loss, reward, KL and the validation metrics
      post_training_curves.png
      post_valid_metrics.json  the validation metrics of the selected weights
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semrec.artifacts import read_json, write_json
from semrec.config import POST_TRAINING_KEYS
from semrec.factories import post_training, training
from semrec.known_warnings import hide_known_warnings
from semrec.pipeline.context import RunContext
from semrec.pipeline.model import POST_ADAPTER, POST_VALID_METRICS, ModelStage
from semrec.pipeline.tokenizers import TokenizerStage
from semrec.pipeline.train import plot_curves

CHECKPOINTS = "post_checkpoints"


class PostTrainStage:
    """Post-trains the SFT model of a run (see the module docstring).

    ``callbacks`` are extra Lightning callbacks for its Trainer.
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

    @property
    def enabled(self) -> bool:
        return self.context.config.train.post is not None

    @property
    def adapter_dir(self) -> Path:
        return self.context.run_dir / POST_ADAPTER

    @property
    def checkpoints(self) -> Path:
        return self.context.run_dir / CHECKPOINTS

    def finished(self) -> bool:
        return self.model.post_trained()

    def latest_checkpoint(self) -> Path | None:
        """The newest full post-training checkpoint (to resume), or None."""
        found = sorted(self.checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def resumable_checkpoint(self) -> Path | None:
        """The checkpoint ``fit --resume`` continues post-training from: None when
        post-training has not started after a finished SFT of this config (the SFT is
        resumed instead) or has finished; refuses a changed ``train.post``."""
        checkpoint = self.latest_checkpoint()
        directory = self.context.directory
        if checkpoint is None or not self.enabled or self.finished():
            return None
        if not directory.stage_done("train", self.model.train_fingerprint()):
            return None  # the SFT itself is unfinished (or another's): resume it first
        directory.stored_config(
            self.context.config,
            POST_TRAINING_KEYS,
            refusal=f"--resume: the config differs from the one {self.context.run_dir} was "
            "post-trained with, in keys that change post-training",
            advice=f"resume with the stored config (semrec fit --config "
            f"{directory.config_file} --resume) or start a new run",
        )
        return checkpoint

    def post_train(self, trained, allow_training: bool = True, resume_from: Path | None = None):
        """Post-train ``trained`` = (module, datamodule, hf_tokenizer) of the train stage in
        place (its model ends with the selected weights); returns ``trained``.

        Without ``train.post`` it returns ``trained`` unchanged. With ``allow_training=False``
        (``semrec test``) a missing or stale post-training is an error.
        """
        if not self.enabled:
            return trained
        module, datamodule, hf_tokenizer = trained
        model = module.model
        if self.finished() or not allow_training:
            self.context.echo(f"[post] reused {self.model.load_post_trained(model)}")
            return trained
        self.train(module, datamodule, resume_from)
        return trained

    def train(self, module, datamodule, resume_from: Path | None) -> None:
        """Post-train ``module.model`` from its SFT weights into ``post_adapter/`` and load
        the selected weights (the SFT's when no validation beat them)."""
        from semrec.models.checkpoint import BestAdapterCheckpoint, load_trained_weights
        from semrec.posttrain.log_probs import FrozenReference

        context, config = self.context, self.context.config
        post, model = config.train.post, module.model
        split = self.tokenizers.inputs.data.split
        reference = FrozenReference(model)
        post_module = post_training.module(
            config,
            model,
            module.current_trie(),
            reference,
            split,
            module.output_ids,
            context.echo,
        )
        post_data = post_training.datamodule(config, split, datamodule.training)
        schedule = training.Schedule.post(post)
        monitor = training.monitored_metric(config)
        best = BestAdapterCheckpoint(self.adapter_dir, monitor)
        sft_valid = self.sft_valid_metrics()
        if monitor.removeprefix("val/") in sft_valid:
            # the SFT model's validation is the score to beat
            best.best = sft_valid[monitor.removeprefix("val/")]
        if context.rank_zero and resume_from is None and self.checkpoints.exists():
            shutil.rmtree(self.checkpoints)  # a new post-training: old checkpoints are another's
        callbacks = training.fit_callbacks(
            config, best, self.checkpoints, context.echo, self.callbacks, schedule
        )
        trainer = training.fit_trainer(config, context.run_dir, callbacks, schedule)
        context.echo(
            f"[post] {post.method}"
            + (
                f" ({post.reward} reward, {post.group_size} beams a prompt)"
                if post.method == "grpo"
                else f" ({post.negatives} {post.negative_source} negative(s))"
            )
            + f": {post_data.training.examples_per_epoch(0)} prompts per epoch, "
            f"{post.epochs} epoch(s), batch {post.batch_size}, lr {post.lr:g}, beta {post.beta:g}; "
            + (
                f"SFT validation {monitor} {best.best:.4f} to beat"
                if best.best is not None
                else "no SFT validation to beat"
            )
        )
        if resume_from is not None:
            context.echo(f"[post] resuming from {resume_from}")
        with context.timed("post_train"), hide_known_warnings():
            trainer.fit(
                post_module,
                datamodule=post_data,
                ckpt_path=str(resume_from) if resume_from is not None else None,
            )
        if context.rank_zero:
            plot_curves(
                context,
                "post_logs",
                "post_training_curves.png",
                f"{config.name}: post-training",
                "post",
            )
            if not best.saved:
                # no validation beat SFT's: the SFT weights are the post-trained result
                context.echo(
                    f"[post] no validation beat the SFT model's {monitor}: keeping the SFT weights"
                )
                with reference.weights(model):
                    best.save(model, {"kept": "sft"})
                best_metrics = sft_valid
            else:
                best_metrics = best.best_metrics or {}
            write_json(context.run_dir / POST_VALID_METRICS, best_metrics)
            context.directory.mark_stage("post", self.model.post_fingerprint())
        trainer.strategy.barrier("semrec: post-trained adapter saved")
        load_trained_weights(model, self.adapter_dir)

    def sft_valid_metrics(self) -> dict[str, float]:
        path = self.context.run_dir / "valid_metrics.json"
        return read_json(path) if path.is_file() else {}

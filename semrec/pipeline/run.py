"""One experiment run: data -> embeddings -> SIDs -> LoRA tuning -> constrained evaluation.

:class:`Run` puts the stages of :mod:`semrec.pipeline` together in order and writes the
report. Each stage is reused when its fingerprint is unchanged, and everything goes to a
run directory (:class:`~semrec.run_directory.RunDirectory`)::

    run_dir/
      config.yaml        the resolved config (every default filled in)
      stages.json        run-directory format + fingerprint of each finished stage
      tokenizer/         tokenizer state, SID table (index.json), stats.json
      user_tokenizer/    the same for users (when users.tokenizer is set)
      adapter/           LoRA adapter + trained SID rows (or full weights when LoRA is off)
      hf_tokenizer/      the LLM tokenizer with the SID tokens added
      checkpoints/       full Lightning checkpoints of the training (``fit --resume``)
      logs/ tb/          CSV and TensorBoard logs
      metrics.json       flat metrics: test/hr@10, valid/..., popularity/test/hr@10, ...
      ranks.json         every test user's target rank, per method (for paired tests)
      metrics.md         the table printed at the end

Every file is written atomically, so a failing stage leaves the previous state intact.
In a multi-process run (``train.devices`` > 1, or torchrun) only the process of global rank
zero writes; the others compute the same stages in memory, train and evaluate their share,
and leave the baselines and the report to rank zero. A read-only run (``semrec test``)
writes nothing but its outputs (metrics.json, metrics.md, ranks.json,
token_understanding.json) and refuses when the stored stages do not match its config.
Serving loads a finished run with :class:`~semrec.pipeline.trained.TrainedRun` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from semrec.artifacts import atomic_write, write_json
from semrec.config import ExperimentConfig
from semrec.evaluation.report import metrics_table, report_notes
from semrec.metrics.per_user import RANKS_FILE
from semrec.pipeline.post_train import PostTrainStage
from semrec.pipeline.staged import StagedRun
from semrec.pipeline.test import TestStage
from semrec.pipeline.train import TrainStage


class Run(StagedRun):
    """Executes the stages of one experiment; each stage is reused when its inputs are unchanged.

    The stages are attributes (``inputs``, ``tokenizers``, ``annotations``, ``model_stage``,
    ``training``, ``testing``); :class:`~semrec.pipeline.staged.StagedRun` gives shortcuts to
    their parts. ``callbacks`` are extra Lightning callbacks for the training Trainer.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        echo: Callable[[str], None] = print,
        *,
        read_only: bool = False,
        callbacks: Sequence[Any] = (),
    ) -> None:
        super().__init__(config, run_dir, echo, read_only=read_only)
        self.training = TrainStage(self.context, self.tokenizers, self.model_stage, callbacks)
        self.post_training = PostTrainStage(
            self.context, self.tokenizers, self.model_stage, callbacks
        )
        self.testing = TestStage(self.context, self.tokenizers, self.model_stage)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage so far (``time/<stage>_s`` in metrics.json)."""
        return self.context.timings

    @property
    def tasks(self):
        return self.annotations.tasks

    @property
    def token_semantics(self):
        return self.annotations.token_semantics

    def trie(self, hf_tokenizer, *, include_added: bool = False):
        """The trie of valid SIDs for ``hf_tokenizer`` (added items with ``include_added``)."""
        return self.tokenizers.trie(hf_tokenizer, include_added=include_added)

    def build_model(self):
        """Backbone + SID tokens + LoRA; returns (model, hf_tokenizer, sid_token_ids)."""
        return self.model_stage.build_model()

    def train(
        self,
        allow_training: bool = True,
        resume_from: Path | None = None,
        post_resume_from: Path | None = None,
    ):
        """Train (or reuse) the adapter, then post-train it when ``train.post`` asks;
        returns (module, datamodule, hf_tokenizer)."""
        trained = self.training.train(allow_training, resume_from)
        return self.post_training.post_train(trained, allow_training, post_resume_from)

    def annotate(self, kind: str) -> int:
        """Generate (or reuse from the cache) the ``kind`` annotations; returns how many exist."""
        return self.annotations.annotate(kind)

    def tokenize(self) -> None:
        """Fit (or reuse) the SIDs; a dynamic tokenizer needs the LLM for its warm-up."""
        if self.tokenizers.needs_warm_up:
            model, hf_tokenizer, _ = self.model_stage.build_model()
            self.tokenizers.prepare_joint(model, hf_tokenizer)

    def test(self, trained=None) -> dict[str, float]:
        """Evaluate the trained model (``trained`` from :meth:`train`, else reloaded) on test users."""
        return self.testing.test(trained or self.train(allow_training=False))

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """tokenize -> train -> test; writes metrics.json / metrics.md and returns the metrics.

        ``resume=True`` continues an interrupted training from its last full checkpoint. A
        directory holding a model trained with another config (a key that changes training
        differs) is refused unless ``overwrite=True``, which retrains and replaces it.
        """
        wall = time.perf_counter()
        resume_from = post_resume_from = None
        if resume:  # before any write
            post_resume_from = self.post_training.resumable_checkpoint()
            if post_resume_from is None:
                resume_from = self.training.check_resumable()
        if not resume and not overwrite:
            self.training.check_replaces_no_model()
        self.echo(f"[run] {self.config.name} -> {self.run_dir}")
        self.echo(self.tokenizers.tokenizer_report())
        metrics = self.test(self.train(True, resume_from, post_resume_from))
        if not self.context.rank_zero:
            return metrics  # rank zero writes the report
        self.timings["total"] = round(time.perf_counter() - wall, 2)
        self.context.write_config()
        return self.write_report(metrics)

    def write_report(self, metrics: dict[str, float]) -> dict[str, Any]:
        """metrics.json, ranks.json and metrics.md (rank zero only); returns the metrics."""
        if not self.context.rank_zero:
            return metrics
        split = self.data.split
        notes = report_notes(metrics, self.config, len(split.test), len(split.train))
        metrics.update({f"time/{name}_s": seconds for name, seconds in self.timings.items()})
        write_json(self.run_dir / "metrics.json", metrics)
        if self.testing.ranks is not None:
            self.testing.ranks.save(self.run_dir / RANKS_FILE)
        table = metrics_table(metrics, self.config.eval.ks, notes)
        with atomic_write(self.run_dir / "metrics.md") as fh:
            fh.write(table + "\n")
        self.echo(table)
        return metrics

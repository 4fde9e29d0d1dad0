"""One experiment run: data -> embeddings -> SIDs -> LoRA tuning -> constrained evaluation.

:class:`Run` is the orchestrator: it calls the factories of :mod:`semrec.factories` in
stage order (the SID stages are in :mod:`semrec.run_tokenizers`), reuses a stage whose
fingerprint is unchanged, and writes everything to a run directory
(:class:`~semrec.run_directory.RunDirectory`)::

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
and leave the baselines and the report to rank zero.
A read-only run (``semrec test``) writes nothing but its outputs (metrics.json, metrics.md,
ranks.json, token_understanding.json) and refuses when the stored stages do not match its
config.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from semrec.annotate.errors import MissingAnnotations
from semrec.annotate.run_annotations import RunAnnotations
from semrec.artifacts import atomic_dir, atomic_write, content_hash, read_json, write_json
from semrec.config import (
    MODEL_KEYS,
    TRAINING_KEYS,
    ExperimentConfig,
)
from semrec.config import config_section as section
from semrec.distributed import is_rank_zero
from semrec.evaluation.report import metrics_table, report_notes
from semrec.factories import decoding, joint, training
from semrec.factories.candidates import run_candidates, verbalizer
from semrec.factories.data import PreparedData, prepare_data
from semrec.factories.item_vectors import ItemVectors
from semrec.factories.model import build_model, prompt_formatter
from semrec.known_warnings import hide_known_warnings
from semrec.metrics.per_user import RANKS_FILE, PerUserRanks
from semrec.prompts.datamodule import GenRecDataModule
from semrec.prompts.sid_placeholders import SIDPlaceholders
from semrec.run_directory import CHECKPOINTS, RUN_FORMAT, RunDirectory, RunError, added_items
from semrec.run_tokenizers import RunTokenizers
from semrec.tasks import TaskContext

__all__ = ["CHECKPOINTS", "RUN_FORMAT", "PreparedData", "Run", "RunError"]

JOINT_ON_PROCESSES = (
    "a tokenizer trained with the LLM ({}) on more than one process: each would refresh its "
    "own codes; train it on one device (train.devices: 1, train.num_nodes: 1)"
)


class Run(RunTokenizers):
    """Executes the stages of one experiment; each stage is reused when its inputs are unchanged.

    ``callbacks`` are extra Lightning callbacks for the training Trainer.
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
        self.config = config
        self.directory = RunDirectory(run_dir if run_dir is not None else config.resolved_run_dir())
        self.run_dir = self.directory.path
        #: the process that writes the run directory (see semrec.distributed)
        self.rank_zero = is_rank_zero()
        self.echo = echo if self.rank_zero else _silent
        self.read_only = read_only
        self.callbacks = list(callbacks)
        # stages are fingerprinted with the config they were made with; a read-only run
        # may differ from it in evaluation keys only
        if read_only:
            self._stage_config = self.directory.stored_config(
                config,
                MODEL_KEYS,
                refusal=f"semrec test only evaluates; these overrides would change what "
                f"{self.run_dir} was trained with (tokenizer, model or training)",
                advice="nothing was written; run `semrec fit` with them into a new --run-dir",
            )
        else:
            self._stage_config = config
            self.directory.check_writable()
        self.timings: dict[str, float] = {}
        self.test_ranks: PerUserRanks | None = None  # set by test()
        torch.manual_seed(config.seed)
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 2)

    def write_config(self) -> None:
        if self.read_only:
            raise RunError(f"internal: a read-only run tried to write {self.run_dir}/config.yaml")
        if self.rank_zero:
            self.directory.write_config(self.config)

    # ------------------------------------------------------------------ data and items

    @cached_property
    def data(self) -> PreparedData:
        start = time.perf_counter()
        data = prepare_data(self.config.dataset)
        self._timed("data", start)
        self.echo(data.summary_line(self.config.dataset.max_history))
        return data

    @cached_property
    def vectors(self) -> ItemVectors:
        """The embedder's item vectors, cold-start fill-in and LLM alignment targets."""
        return ItemVectors(self.config, self.data, self.echo)

    def catalogue(self) -> tuple[list[str], torch.Tensor]:
        """External item ids and SID codes of every item: the dataset's, then the added ones."""
        added = added_items(self.run_dir)
        ids = list(self.data.dataset.item_ids) + [record["id"] for record in added]
        codes = self.tokenizer.codes
        if added:
            codes = torch.cat([codes, torch.tensor([record["codes"] for record in added])])
        return ids, codes

    # ------------------------------------------------------------------ annotations and tasks

    @cached_property
    def annotation_source(self) -> RunAnnotations:
        data = self.data
        return RunAnnotations(
            self.config, data.dataset, data.split, lambda: self.tokenizer, self.echo
        )

    def annotate(self, kind: str) -> int:
        """Generate (or reuse from the cache) the ``kind`` annotations; returns how many exist."""
        return self.annotation_source.generate(kind)

    @cached_property
    def tasks(self) -> list[tuple[Any, float]]:
        """The configured (task, weight) pairs."""
        return training.build_tasks(self.config)

    @cached_property
    def annotations(self) -> dict[str, dict[str, str]] | None:
        """Cached user annotations (intention, preference) if any task needs them (tasks say
        which command makes missing ones)."""
        if not any("annotations" in task.requires for task, _ in self.tasks):
            return None
        return self.annotation_source.cached_user_annotations()

    @cached_property
    def token_semantics(self) -> dict[str, Any] | None:
        """SID token -> parsed TS-Rec semantics, when SA-Init or a task uses them.

        Also written to ``run_dir/token_semantics.json`` for inspection.
        """
        init = self.config.model.semantic_init
        uses = (init.enabled and init.source == "token_semantics") or any(
            "token_semantics" in task.requires for task, _ in self.tasks
        )
        if not uses:
            return None
        try:
            parsed, _ = self.annotation_source.cached_token_semantics()
        except MissingAnnotations as err:
            raise RunError(str(err)) from None
        if not self.read_only and self.rank_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                self.run_dir / "token_semantics.json",
                {
                    t: {"description": s.description, "keywords": list(s.keywords)}
                    for t, s in parsed.items()
                },
            )
        return parsed

    @cached_property
    def candidates(self):
        """Retrieved candidates of every example, when a task ranks them (else None)."""
        if not self.config.needs_candidates():
            return None
        start = time.perf_counter()
        sets = run_candidates(self.config, self.data.split, self.echo)
        self._timed("candidates", start)
        return sets

    # ------------------------------------------------------------------ model and training

    def build_model(self):
        """Backbone + SID tokens + LoRA; returns (model, hf_tokenizer, sid_token_ids)."""
        start = time.perf_counter()
        built = build_model(
            self.config.model,
            self.tokenizer,
            seed=self.config.seed,
            user_tokenizer=self.user_tokenizer,
            token_semantics=self.token_semantics,
            item_texts=self.data.item_texts,
            echo=self.echo,
        )
        self._timed("load_model", start)
        return built

    @cached_property
    def task_context(self) -> TaskContext:
        """What the tasks read: data, SID tables of items and users, annotations, candidates."""
        data, tokenizer, users = self.data, self.tokenizer, self.user_tokenizer
        placeholders = self.placeholders
        if placeholders is not None:
            sids, user_sids = placeholders.item_sids(), placeholders.user_sids()
        else:
            sids = tokenizer.sid_strings()
            user_sids = None if users is None else users.sid_strings()
        return TaskContext(
            data.dataset,
            data.split,
            sids,
            data.item_texts,
            annotations=self.annotations,
            level_tokens=tokenizer.level_token_strings(),
            token_semantics=self.token_semantics,
            user_sids=user_sids,
            candidates=self.candidates,
        )

    @cached_property
    def placeholders(self) -> SIDPlaceholders | None:
        """With dynamic tokenizers, tasks name items and users by placeholder (resolved when
        batched); None otherwise."""
        if not self.dynamic_tokenizers:
            return None
        return SIDPlaceholders(self.tokenizer, self.user_tokenizer)

    def formatter(self, hf_tokenizer):
        """The prompt formatter, resolving SID placeholders in a dynamic run."""
        formatter = prompt_formatter(self.config.model, hf_tokenizer)
        if self.placeholders is None:
            return formatter
        from semrec.prompts.sid_placeholders import ResolvingEncoder

        return ResolvingEncoder(formatter, self.placeholders)

    def datamodule(self, hf_tokenizer) -> GenRecDataModule:
        split = self.data.split
        if self.config.model.prompt_format == "compact":
            source = training.compact_sequences(
                self.config, split, self.tokenizer, hf_tokenizer, self.data.item_texts
            )
        else:
            source = training.task_pairs(
                self.config,
                self.task_context,
                self.tasks,
                prompt_formatter(self.config.model, hf_tokenizer),
                self.echo,
                placeholders=self.placeholders,
            )
        return training.build_datamodule(self.config, split, source)

    def candidate_ranker(self, hf_tokenizer):
        """The verbalizer of a candidate-ranking run (None when the whole catalogue is ranked)."""
        if self.candidates is None:
            return None
        formatter = prompt_formatter(self.config.model, hf_tokenizer)
        return verbalizer(self.config, formatter, self.candidates.k)

    @property
    def eval_autocast(self) -> torch.dtype | None:
        return decoding.eval_autocast(self.config.eval)

    def train_fingerprint(self) -> str:
        """Hash of everything that determines the trained model (its config keys and texts)."""
        return content_hash(
            "train",
            section(self._stage_config, TRAINING_KEYS),
            # the texts tasks and SA-Init read: new annotations mean a new model
            self.annotations,
            {t: [s.description, list(s.keywords)] for t, s in (self.token_semantics or {}).items()},
        )

    def _check_replaces_no_model(self) -> None:
        """Refuse to retrain over a finished training of another config (before any stage)."""
        if "train" not in self.directory.stages() or not self.directory.config_file.is_file():
            return
        self.directory.stored_config(
            self.config,
            TRAINING_KEYS,
            refusal=f"{self.run_dir} holds a model trained with another config, which this fit "
            "would retrain and replace; nothing was changed. The keys that differ",
            advice="pass --overwrite (Run.fit(overwrite=True)) to retrain and replace it, or "
            "use another --run-dir",
        )

    def _check_resumable(self) -> Path:
        """The newest full checkpoint to resume from; refuses if the training config changed."""
        checkpoint = self.directory.latest_checkpoint()
        self.directory.stored_config(
            self.config,
            TRAINING_KEYS,
            refusal=f"--resume: the config differs from the one {self.run_dir} was trained "
            "with, in keys that change training",
            advice=f"resume with the stored config (semrec fit --config "
            f"{self.directory.config_file} --resume) or start a new run",
        )
        return checkpoint

    def train(self, allow_training: bool = True, resume_from: Path | None = None):
        """Train (or reuse) the adapter; returns (module, datamodule, hf_tokenizer).

        With ``allow_training=False`` (``semrec test``) a missing or stale adapter is an error.
        ``resume_from`` (a full checkpoint, see :meth:`fit`) continues an interrupted training.
        """
        from semrec.models.checkpoint import (
            BestAdapterCheckpoint,
            load_trained_tokenizers,
            load_trained_weights,
        )

        cfg = self.config
        if self.dynamic_tokenizers and training.multi_process(cfg.train):
            raise NotImplementedError(JOINT_ON_PROCESSES.format(", ".join(self.dynamic_tokenizers)))
        model, hf_tokenizer, sid_ids = self.build_model()
        joint_trainer = self.prepare_joint(model, hf_tokenizer)
        adapter_dir = self.run_dir / "adapter"
        fingerprint = self.train_fingerprint()
        reuse = self.directory.stage_done("train", fingerprint) and adapter_dir.exists()
        if reuse:
            load_trained_tokenizers(self.dynamic_tokenizers, adapter_dir)
        datamodule = self.datamodule(hf_tokenizer)
        exact = decoding.exact_ranker(cfg.eval, self.data.dataset.num_items)
        module = training.build_module(
            cfg,
            model,
            decoding.beam_search(cfg.eval),
            self.trie(hf_tokenizer),
            exact,
            self.candidate_ranker(hf_tokenizer),
            joint=joint_trainer,
            trie_builder=joint.trie_builder(self.tokenizer, hf_tokenizer),
            batch_encoder=getattr(datamodule.training, "encode_pending", None),
            sid_token_ids=sid_ids,
        )
        if reuse:
            self.directory.check_vocabulary(hf_tokenizer)
            load_trained_weights(model, adapter_dir)
            self.echo(f"[train] reused {adapter_dir}")
            return module, datamodule, hf_tokenizer
        if not allow_training:
            raise RunError(
                f"{self.run_dir}: the trained adapter does not match this config (a key that "
                "affects training was overridden, or training never finished); run `semrec fit`"
            )
        checkpoints = self.directory.checkpoints
        if self.rank_zero:
            if resume_from is None and checkpoints.exists():
                shutil.rmtree(checkpoints)  # a new training: old checkpoints are another's
            self.write_config()
            with atomic_dir(self.run_dir / "hf_tokenizer") as tmp:
                hf_tokenizer.save_pretrained(tmp)
        if cfg.train.epochs == 0 or cfg.train.max_steps == 0:
            if self.rank_zero:
                BestAdapterCheckpoint(adapter_dir, None, self.dynamic_tokenizers).save(model)
                self.directory.mark_stage("train", fingerprint)
            self.echo("[train] skipped (train.epochs: 0): evaluating the untrained model")
            return module, datamodule, hf_tokenizer

        capped = cfg.train.max_train_samples
        self.echo(
            f"[train] {datamodule.training.examples_per_epoch(0)} training examples per epoch"
            + (f" (capped by train.max_train_samples={capped})" if capped else "")
            + f", {cfg.train.epochs} epoch(s), batch {cfg.train.batch_size}, precision "
            f"{training.resolve_precision(cfg.train)}, validation on "
            f"{len(datamodule.valid_examples)} users"
        )
        if resume_from is not None:
            self.echo(f"[train] resuming from {resume_from}")
        best = BestAdapterCheckpoint(
            adapter_dir, training.monitored_metric(cfg), self.dynamic_tokenizers
        )
        callbacks = training.fit_callbacks(cfg, best, checkpoints, self.echo, self.callbacks)
        trainer = training.fit_trainer(cfg, self.run_dir, callbacks)
        if joint_trainer is not None and trainer.world_size > 1:  # e.g. devices: auto
            raise NotImplementedError(JOINT_ON_PROCESSES.format(", ".join(self.dynamic_tokenizers)))
        start = time.perf_counter()
        with hide_known_warnings():
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(resume_from) if resume_from is not None else None,
            )
        self._timed("train", start)
        if self.rank_zero:
            self.plot_training_curves()
            if not best.saved:
                best.save(model)  # no validation ran: keep the final weights
            if best.best_metrics is not None:
                write_json(self.run_dir / "valid_metrics.json", best.best_metrics)
            self.directory.mark_stage("train", fingerprint)
        # every process evaluates the weights rank zero saved
        trainer.strategy.barrier("semrec: adapter saved")
        load_trained_weights(model, adapter_dir)
        load_trained_tokenizers(self.dynamic_tokenizers, adapter_dir)
        return module, datamodule, hf_tokenizer

    def plot_training_curves(self) -> None:
        """``training_curves.png`` beside the logs: training loss and validation metrics."""
        from semrec.evaluation.diagnostics import plot_training_curves

        try:
            path = plot_training_curves(
                self.run_dir / "logs", self.run_dir / "training_curves.png", self.config.name
            )
        except FileNotFoundError as err:
            self.echo(f"[train] no training curves: {err}")
            return
        if path is not None:
            self.echo(f"[train] training curves: {path}")

    def plot_tokenizers(self) -> list[Path]:
        """``diagnostics.png`` in each fitted tokenizer's directory (``semrec tokenize --plot``)."""
        from semrec.evaluation.diagnostics import plot_tokenizer

        written = []
        for stage, tokenizer in (
            ("tokenizer", self.tokenizer),
            ("user_tokenizer", self.user_tokenizer),
        ):
            if tokenizer is None or not tokenizer.is_fitted:
                continue
            title = f"{self.config.name} ({'items' if stage == 'tokenizer' else 'users'})"
            written.append(
                plot_tokenizer(
                    tokenizer.codes,
                    tokenizer.stats(),
                    self.run_dir / stage / "diagnostics.png",
                    title,
                )
            )
        return written

    # ------------------------------------------------------------------ evaluation

    def test(self, trained=None) -> dict[str, float]:
        """Evaluate the trained model (``trained`` from :meth:`train`, else reloaded) on test users."""
        from semrec.evaluation.baselines import run_baselines

        module, datamodule, trained_tokenizer = trained or self.train(allow_training=False)
        start = time.perf_counter()
        with hide_known_warnings():
            # each process of a multi-process run evaluates its share of the test users;
            # the metrics and per-user ranks are gathered over all of them
            training.test_trainer(self.config).test(module, datamodule=datamodule, verbose=False)
        self._timed("test", start)
        if not self.rank_zero:
            return {}
        metrics: dict[str, float] = {}
        for part in ("test", "test_beam", "test_subset"):
            for name, value in module.last_metrics.get(part, {}).items():
                metrics[f"{part}/{name}"] = value
        if self.candidates is not None:
            examples = datamodule.test_examples
            ranked = self.candidates.metrics(examples, self.config.eval.ks, self.data.split)
            metrics.update({f"retriever/{key}": value for key, value in ranked.items()})
        valid_file = self.run_dir / "valid_metrics.json"
        if valid_file.exists():
            metrics.update({f"valid/{k}": v for k, v in read_json(valid_file).items()})
        if self.config.eval.token_understanding.enabled:
            metrics.update(self.token_understanding(module.model, trained_tokenizer))
        metrics.update(self.rating_prediction(module.model, trained_tokenizer, datamodule))
        metrics.update(self.next_user_prediction(module.model, trained_tokenizer, datamodule))
        examples = {"test": datamodule.test_examples, "valid": datamodule.valid_examples}
        exclude = {part: datamodule.excluded_items(part) for part in examples}
        baselines = run_baselines(
            self.config.eval, self.config.seed, self.data.split, examples, exclude, self.echo
        )
        self.timings.update({f"baseline_{name}": s for name, s in baselines.seconds.items()})
        self.test_ranks = PerUserRanks.of_examples(
            datamodule.test_examples,
            self.data.dataset.user_ids,
            k=max(self.config.eval.ks),
            methods={
                "semrec": module.last_ranks.get("test"),
                **{name: ranks.get("test") for name, ranks in baselines.ranks.items()},
            },
        )
        return {**metrics, **baselines.metrics}

    def rating_prediction(self, model, hf_tokenizer, datamodule) -> dict[str, float]:
        """MAE/RMSE of the ``rating_prediction`` task on the test items, when it is trained."""
        from semrec.evaluation.rating import evaluate_rating_task, rating_report
        from semrec.tasks import RatingPredictionTask

        task = next((t for t, _ in self.tasks if isinstance(t, RatingPredictionTask)), None)
        if task is None:
            return {}
        start = time.perf_counter()
        metrics = evaluate_rating_task(
            model,
            self.formatter(hf_tokenizer),
            task,
            self.task_context,
            datamodule.test_examples,
            batch_size=self.config.eval.batch_size,
        )
        self._timed("rating_prediction", start)
        self.echo(rating_report(metrics))
        return metrics

    def next_user_prediction(self, model, hf_tokenizer, datamodule) -> dict[str, float]:
        """HR/NDCG of the ``next_user`` task over all users, when it is trained (TTDS)."""
        from semrec.evaluation.next_user import evaluate_next_user
        from semrec.tasks import NextUserTask

        task = next((t for t, _ in self.tasks if isinstance(t, NextUserTask)), None)
        if task is None:
            return {}
        start = time.perf_counter()
        metrics = evaluate_next_user(
            model,
            self.formatter(hf_tokenizer),
            self.user_trie(hf_tokenizer),
            decoding.beam_search(self.config.eval),
            task,
            self.task_context,
            datamodule.test_examples,
            self.config.eval.ks,
            batch_size=self.config.eval.batch_size,
        )
        self._timed("next_user", start)
        return metrics

    def token_understanding(self, model, hf_tokenizer) -> dict[str, float]:
        """TS-Rec RQ4: Title2SID / SID2Title accuracy (``eval.token_understanding``); a few
        examples of each task go to ``run_dir/token_understanding.json``."""
        from semrec.evaluation.token_understanding import NoTitlesError, probe_dataset

        start = time.perf_counter()
        try:
            result = probe_dataset(
                model,
                prompt_formatter(self.config.model, hf_tokenizer),
                self.trie(hf_tokenizer),
                self.data.dataset,
                self.tokenizer.sid_strings(),
                self.config.eval.token_understanding,
                seed=self.config.seed,
                batch_size=self.config.eval.batch_size,
            )
        except NoTitlesError as err:
            raise RunError(str(err)) from None
        self._timed("token_understanding", start)
        write_json(self.run_dir / "token_understanding.json", {"examples": result.examples})
        self.echo(
            f"[eval] SID comprehension on {result.n_items} items: Title2SID accuracy "
            f"{result.title2sid_acc:.4f}, SID2Title accuracy {result.sid2title_acc:.4f}"
        )
        return result.metrics()

    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """tokenize -> train -> test; writes metrics.json / metrics.md and returns the metrics.

        ``resume=True`` continues an interrupted training from its last full checkpoint. A
        directory holding a model trained with another config (a key that changes training
        differs) is refused unless ``overwrite=True``, which retrains and replaces it.
        """
        wall = time.perf_counter()
        resume_from = self._check_resumable() if resume else None  # before anything is written
        if not resume and not overwrite:
            self._check_replaces_no_model()
        self.echo(f"[run] {self.config.name} -> {self.run_dir}")
        self.echo(self.tokenizer_report())
        metrics = self.test(self.train(resume_from=resume_from))
        if not self.rank_zero:
            return metrics  # rank zero writes the report
        self._timed("total", wall)
        self.write_config()
        return self.write_report(metrics)

    def write_report(self, metrics: dict[str, float]) -> dict[str, Any]:
        """metrics.json, ranks.json and metrics.md (rank zero only); returns the metrics."""
        if not self.rank_zero:
            return metrics
        split = self.data.split
        notes = report_notes(metrics, self.config, len(split.test), len(split.train))
        metrics.update({f"time/{name}_s": seconds for name, seconds in self.timings.items()})
        write_json(self.run_dir / "metrics.json", metrics)
        if self.test_ranks is not None:
            self.test_ranks.save(self.run_dir / RANKS_FILE)
        table = metrics_table(metrics, self.config.eval.ks, notes)
        with atomic_write(self.run_dir / "metrics.md") as fh:
            fh.write(table + "\n")
        self.echo(table)
        return metrics


def _silent(_: str) -> None:
    """The echo of processes other than rank zero (one process reports)."""

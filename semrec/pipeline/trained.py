"""A finished run, loaded for use: :class:`TrainedRun` gives serving the trained model, its
tokenizers, prompts and trie without the training stage."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import torch

from semrec.config import ExperimentConfig, load_config
from semrec.errors import RunError
from semrec.pipeline.staged import StagedRun


class TrainedRun(StagedRun):
    """The model, tokenizers, prompts and trie of a run directory whose training finished.

    Read-only: nothing of the run directory is written. :meth:`load` reads the stored config
    (with ``overrides`` of evaluation keys only); the model is built and its trained weights
    loaded on first use of :attr:`model`, :attr:`hf_tokenizer` or :attr:`prompts`. A run
    whose stages do not match its config (never finished, or overridden keys) is refused
    with a :class:`~semrec.errors.RunError`.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path,
        echo: Callable[[str], None] = print,
    ) -> None:
        super().__init__(config, run_dir, echo, read_only=True)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        overrides: Sequence[str] = (),
        echo: Callable[[str], None] = print,
    ) -> TrainedRun:
        """The finished run in ``run_dir``, with its stored ``config.yaml`` (plus ``overrides``)."""
        run_dir = Path(run_dir)
        stored = run_dir / "config.yaml"
        if not stored.is_file():
            raise RunError(f"{run_dir} has no config.yaml: not a semrec run directory")
        return cls(load_config(stored, list(overrides)), run_dir, echo)

    def trie(self, *, include_added: bool = True):
        """The trie of valid SIDs over the catalogue (added items included by default)."""
        return self.tokenizers.trie(self.hf_tokenizer, include_added=include_added)

    # ------------------------------------------------------------------ the trained model

    @cached_property
    def _loaded(self):
        model, hf_tokenizer, _ = self.model_stage.build_model()
        self.tokenizers.prepare_joint(model, hf_tokenizer)
        adapter = self.model_stage.load_trained(model, hf_tokenizer, required=True)
        adapter = self.model_stage.load_post_trained(model) or adapter
        datamodule = self.model_stage.datamodule(hf_tokenizer)
        model.eval()
        self.context.echo(f"[load] {adapter}")
        return model, hf_tokenizer, datamodule

    @property
    def model(self) -> torch.nn.Module:
        """The trained causal LM (backbone + adapter + SID rows), in eval mode."""
        return self._loaded[0]

    @property
    def hf_tokenizer(self):
        """The LLM tokenizer with the SID tokens."""
        return self._loaded[1]

    @property
    def datamodule(self):
        """The run's DataModule: its evaluation examples and prompts."""
        return self._loaded[2]

    @property
    def prompts(self):
        """The run's prompt source (``eval_prompts`` / ``collate_prompts``), as evaluation builds it."""
        return self.datamodule.training


def as_trained_run(run) -> TrainedRun:
    """``run`` when it is a :class:`TrainedRun`; for a :class:`~semrec.pipeline.Run` (what
    serving took before), the trained run of its directory, with a ``DeprecationWarning``."""
    if isinstance(run, TrainedRun):
        return run
    warnings.warn(
        "serving takes a TrainedRun (semrec.pipeline.TrainedRun.load(run_dir)); passing a Run "
        "works for one more release",
        DeprecationWarning,
        stacklevel=3,
    )
    return TrainedRun(run.config, run.run_dir, run.echo)

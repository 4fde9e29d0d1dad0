"""What :class:`~semrec.pipeline.run.Run` and :class:`~semrec.pipeline.trained.TrainedRun`
share: the stages up to the model, and shortcuts to the parts of them users read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from semrec.config import ExperimentConfig
from semrec.pipeline.annotations import AnnotationStage
from semrec.pipeline.context import RunContext
from semrec.pipeline.data import DataStage
from semrec.pipeline.model import ModelStage
from semrec.pipeline.tokenizers import TokenizerStage


class StagedRun:
    """The context, data, tokenizer, annotation and model stages of one run directory."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        echo: Callable[[str], None] = print,
        *,
        read_only: bool = False,
    ) -> None:
        self.context = RunContext(config, run_dir, echo, read_only=read_only)
        self.inputs = DataStage(self.context)
        self.tokenizers = TokenizerStage(self.context, self.inputs)
        self.annotations = AnnotationStage(self.context, self.inputs, self.tokenizers)
        self.model_stage = ModelStage(self.context, self.inputs, self.tokenizers, self.annotations)

    @property
    def config(self) -> ExperimentConfig:
        return self.context.config

    @property
    def run_dir(self) -> Path:
        return self.context.run_dir

    @property
    def directory(self):
        """The run directory's bookkeeping (:class:`~semrec.run_directory.RunDirectory`)."""
        return self.context.directory

    @property
    def echo(self) -> Callable[[str], None]:
        return self.context.echo

    @property
    def data(self):
        """The dataset, its split and the item texts."""
        return self.inputs.data

    @property
    def vectors(self):
        """The embedder's item vectors (new items are embedded with them too)."""
        return self.inputs.vectors

    @property
    def tokenizer(self):
        return self.tokenizers.tokenizer

    @property
    def user_tokenizer(self):
        return self.tokenizers.user_tokenizer

    @property
    def dynamic_tokenizers(self):
        return self.tokenizers.dynamic_tokenizers

    def tokenizer_report(self) -> str:
        """The item (and user) SID statistics as printed by ``semrec tokenize``."""
        return self.tokenizers.tokenizer_report()

    def plot_tokenizers(self) -> list[Path]:
        """``diagnostics.png`` in each fitted tokenizer's directory; returns their paths."""
        return self.tokenizers.plot_tokenizers()

    def catalogue(self) -> tuple[list[str], torch.Tensor]:
        """External item ids and SID codes: the dataset's items, then the added ones."""
        return self.tokenizers.catalogue()

    def train_fingerprint(self) -> str:
        """The fingerprint of the trained model (changes whenever a training key does)."""
        return self.model_stage.train_fingerprint()

"""The model stage of a run: the LLM with its SID tokens, the prompts it reads, and the
fingerprint of what trains it. Training and serving both build their model here."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from semrec.artifacts import content_hash
from semrec.config import POST_TRAINING_KEYS, TRAINING_KEYS
from semrec.config import config_section as section
from semrec.errors import RunError
from semrec.factories import prompts
from semrec.factories.candidates import verbalizer
from semrec.factories.model import build_model, prompt_formatter
from semrec.pipeline.annotations import AnnotationStage
from semrec.pipeline.context import RunContext
from semrec.pipeline.data import DataStage
from semrec.pipeline.tokenizers import TokenizerStage
from semrec.prompts.datamodule import GenRecDataModule
from semrec.prompts.sid_placeholders import ResolvingEncoder, SIDPlaceholders
from semrec.tasks import TaskContext

#: where the post-training stage keeps the weights it selected (see semrec.pipeline.post_train)
POST_ADAPTER = "post_adapter"
#: the validation metrics of those weights
POST_VALID_METRICS = "post_valid_metrics.json"


class ModelStage:
    """Builds the backbone + SID tokens + LoRA and the prompts of every task (see the module docstring)."""

    def __init__(
        self,
        context: RunContext,
        data: DataStage,
        tokenizers: TokenizerStage,
        annotations: AnnotationStage,
    ) -> None:
        self.context = context
        self.inputs = data
        self.tokenizers = tokenizers
        self.annotations = annotations

    def build_model(self):
        """Backbone + SID tokens + LoRA; returns (model, hf_tokenizer, sid_token_ids)."""
        config, tokenizers = self.context.config, self.tokenizers
        with self.context.timed("load_model"):
            return build_model(
                config.model,
                tokenizers.tokenizer,
                seed=config.seed,
                user_tokenizer=tokenizers.user_tokenizer,
                token_semantics=self.annotations.token_semantics,
                item_texts=self.inputs.data.item_texts,
                echo=self.context.echo,
            )

    @cached_property
    def task_context(self) -> TaskContext:
        """What the tasks read: data, SID tables of items and users, annotations, candidates."""
        data, tokenizer, users = self.inputs.data, self.tokenizers.tokenizer, None
        placeholders = self.placeholders
        if placeholders is not None:
            sids, user_sids = placeholders.item_sids(), placeholders.user_sids()
        else:
            sids = tokenizer.sid_strings()
            users = self.tokenizers.user_tokenizer
            user_sids = None if users is None else users.sid_strings()
        return TaskContext(
            data.dataset,
            data.split,
            sids,
            data.item_texts,
            annotations=self.annotations.annotations,
            level_tokens=tokenizer.level_token_strings(),
            token_semantics=self.annotations.token_semantics,
            user_sids=user_sids,
            candidates=self.inputs.candidates,
        )

    @cached_property
    def placeholders(self) -> SIDPlaceholders | None:
        """With dynamic tokenizers, tasks name items and users by placeholder (resolved when
        batched); None otherwise."""
        if not self.tokenizers.dynamic_tokenizers:
            return None
        return SIDPlaceholders(self.tokenizers.tokenizer, self.tokenizers.user_tokenizer)

    def formatter(self, hf_tokenizer):
        """The prompt formatter, resolving SID placeholders in a dynamic run."""
        formatter = prompt_formatter(self.context.config.model, hf_tokenizer)
        if self.placeholders is None:
            return formatter
        return ResolvingEncoder(formatter, self.placeholders)

    def datamodule(self, hf_tokenizer) -> GenRecDataModule:
        """The training windows or task pairs, and the evaluation prompts, batched."""
        config, split = self.context.config, self.inputs.data.split
        if config.model.prompt_format == "compact":
            source = prompts.compact_sequences(
                config, split, self.tokenizers.tokenizer, hf_tokenizer, self.inputs.data.item_texts
            )
        else:
            source = prompts.task_pairs(
                config,
                self.task_context,
                self.annotations.tasks,
                prompt_formatter(config.model, hf_tokenizer),
                self.context.echo,
                placeholders=self.placeholders,
            )
        return prompts.build_datamodule(config, split, source)

    def candidate_ranker(self, hf_tokenizer):
        """The verbalizer of a candidate-ranking run (None when the whole catalogue is ranked)."""
        candidates = self.inputs.candidates
        if candidates is None:
            return None
        formatter = prompt_formatter(self.context.config.model, hf_tokenizer)
        return verbalizer(self.context.config, formatter, candidates.k)

    def train_fingerprint(self) -> str:
        """Hash of everything that determines the trained model (its config keys and texts)."""
        semantics = self.annotations.token_semantics or {}
        return content_hash(
            "train",
            section(self.context.stage_config, TRAINING_KEYS),
            # the texts tasks and SA-Init read: new annotations mean a new model
            self.annotations.annotations,
            {t: [s.description, list(s.keywords)] for t, s in semantics.items()},
        )

    def load_trained(self, model, hf_tokenizer, *, required: bool) -> Path | None:
        """Load the finished training of this fingerprint into ``model`` (and the dynamic
        tokenizers' trained state); returns ``run_dir/adapter``, or None when no such
        training finished there (a :class:`~semrec.errors.RunError` when ``required``)."""
        from semrec.models.checkpoint import load_trained_tokenizers, load_trained_weights

        context = self.context
        adapter = context.run_dir / "adapter"
        if not (
            context.directory.stage_done("train", self.train_fingerprint()) and adapter.exists()
        ):
            if required:
                raise RunError(
                    f"{context.run_dir}: the trained adapter does not match this config (a key "
                    "that affects training was overridden, or training never finished); run "
                    "`semrec fit`"
                )
            return None
        load_trained_tokenizers(self.tokenizers.dynamic_tokenizers, adapter)
        context.directory.check_vocabulary(hf_tokenizer)
        load_trained_weights(model, adapter)
        return adapter

    def post_fingerprint(self) -> str:
        """Hash of what the post-trained model depends on: the SFT model and ``train.post``."""
        return content_hash(
            "post",
            self.train_fingerprint(),
            section(self.context.stage_config, POST_TRAINING_KEYS),
        )

    def post_trained(self) -> bool:
        """Whether this run directory holds a finished post-training of this config."""
        context = self.context
        return (
            context.directory.stage_done("post", self.post_fingerprint())
            and (context.run_dir / POST_ADAPTER).is_dir()
        )

    def load_post_trained(self, model) -> Path | None:
        """After :meth:`load_trained`, the post-trained weights of a ``train.post`` run;
        returns ``run_dir/post_adapter`` (None without ``train.post``; a
        :class:`~semrec.errors.RunError` when its post-training did not finish)."""
        from semrec.models.checkpoint import load_trained_weights

        if self.context.config.train.post is None:
            return None
        if not self.post_trained():
            raise RunError(
                f"{self.context.run_dir}: the post-trained weights do not match this config "
                "(a train.post key was overridden, or post-training never finished); run "
                "`semrec fit`"
            )
        adapter = self.context.run_dir / POST_ADAPTER
        load_trained_weights(model, adapter)
        return adapter

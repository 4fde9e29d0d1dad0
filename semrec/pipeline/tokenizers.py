"""The tokenizer stages of a run: item and user SIDs, fitted once or trained with the LLM.

:class:`TokenizerStage` makes the SID tables: a static tokenizer is fitted on the item
(user) vectors and saved in ``run_dir/tokenizer`` (``user_tokenizer``), reused while its
fingerprint holds; a dynamic one (``ttds``, ``lsh_dynamic``) is initialised and warmed up
once the LLM exists (:meth:`TokenizerStage.prepare_joint`), saved there as the state it
starts from, and its trained state travels with the adapter. It also answers what the
catalogue is (the dataset's items, then those of ``semrec add-items``) and builds its trie.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch

from semrec.artifacts import content_hash, write_json
from semrec.config import (
    ITEM_TOKENIZER_KEYS,
    TOKENIZER_KEYS,
    USER_TOKENIZER_KEYS,
    TokenizerConfig,
)
from semrec.config import config_section as section
from semrec.data.split import fingerprint_examples
from semrec.decoding import SIDTrie
from semrec.errors import RunError
from semrec.evaluation.report import format_tokenizer_stats
from semrec.factories import decoding, joint
from semrec.factories.tokenizer import new_tokenizer, new_user_tokenizer
from semrec.factories.user_vectors import user_embeddings
from semrec.pipeline.context import RunContext
from semrec.pipeline.data import DataStage
from semrec.run_directory import added_items
from semrec.tokenizers import ItemTokenizer, load_tokenizer
from semrec.tokenizers.dynamic import DynamicTokenizer


class TokenizerStage:
    """The SID stages of a run (see the module docstring), over its context and data stage."""

    def __init__(self, context: RunContext, data: DataStage) -> None:
        self.context = context
        self.inputs = data
        self.config = context.config
        self.run_dir = context.run_dir
        self.directory = context.directory
        self.echo = context.echo

    # ------------------------------------------------------------------ tokenizer

    def tokenizer_fingerprint(self) -> str:
        """Hash of what determines the item SIDs: item keys, and a CF embedder's train data."""
        uses_data = self.config.items.tokenizer.name != "precomputed"
        data = self.inputs.vectors.data_fingerprint() if uses_data else None
        return content_hash(
            "tokenizer", section(self.context.stage_config, ITEM_TOKENIZER_KEYS), data
        )

    def user_tokenizer_fingerprint(self) -> str:
        """Hash of what determines the user SIDs: user keys and the train examples."""
        train = fingerprint_examples(self.inputs.data.split.train)
        keys = section(self.context.stage_config, USER_TOKENIZER_KEYS)
        return content_hash("user_tokenizer", keys, train)

    def _fitted(self, stage: str, fingerprint: str, fit: Callable[[], ItemTokenizer]):
        """The tokenizer of ``stage`` (a directory of the run): reused, or ``fit()`` and saved."""
        directory = self.run_dir / stage
        if self.directory.stage_done(stage, fingerprint) and directory.exists():
            self.echo(f"[tokenize] reused {directory}")
            return load_tokenizer(directory)
        if self.context.read_only:
            raise RunError(
                f"{directory} does not match this config (or was never fitted); "
                "run `semrec fit` first"
            )
        tokenizer = fit()
        self._save_stage(stage, tokenizer, fingerprint)
        return tokenizer

    def _save_stage(self, stage: str, tokenizer: ItemTokenizer, fingerprint: str) -> None:
        """Write a fitted tokenizer to ``run_dir/stage`` and mark the stage done (in the
        process of global rank zero only: the others of a multi-process run fit the same
        tokenizer from the same seed and keep it in memory)."""
        if not self.context.rank_zero:
            return
        directory = self.run_dir / stage
        tokenizer.save(directory)
        write_json(directory / "stats.json", tokenizer.stats())
        self.context.write_config()
        self.directory.mark_stage(stage, fingerprint)

    def _seed_for(self, cfg: TokenizerConfig) -> int | None:
        """The tokenizer's own ``seed`` param wins; otherwise the run seed."""
        return None if "seed" in cfg.params else self.config.seed

    @cached_property
    def tokenizer(self) -> ItemTokenizer:
        """The items' tokenizer (``items.tokenizer``), fitted on the item vectors.

        A dynamic one is returned as saved after its warm-up, or not yet initialised (it
        is, in :meth:`train`, once the LLM exists).
        """
        cfg = self.config.items.tokenizer
        if joint.is_dynamic(cfg):
            return self._dynamic_stage("tokenizer", new_tokenizer(cfg, self.inputs.data.dataset))

        def fit() -> ItemTokenizer:
            tokenizer = new_tokenizer(cfg, self.inputs.data.dataset)
            embeddings, extra = None, {}
            if cfg.name != "precomputed":
                with self.context.timed("embed"):
                    embeddings = self.inputs.vectors.item_embeddings()
            if getattr(tokenizer, "needs_llm_targets", False):
                extra["llm_targets"] = self.inputs.vectors.llm_alignment_targets()
            with self.context.timed("tokenize"):
                tokenizer.fit(embeddings, seed=self._seed_for(cfg), **extra)
            return tokenizer

        tokenizer = self._fitted("tokenizer", self.tokenizer_fingerprint(), fit)
        if tokenizer.n_items != self.inputs.data.dataset.num_items:
            raise RunError(
                f"tokenizer in {self.run_dir / 'tokenizer'} has {tokenizer.n_items} items but "
                f"the dataset has {self.inputs.data.dataset.num_items}; delete it or fix the config"
            )
        return tokenizer

    @cached_property
    def user_tokenizer(self) -> ItemTokenizer | None:
        """The users' tokenizer (``users.tokenizer``; None when users get no SIDs)."""
        cfg = self.config.users.tokenizer
        if cfg is None:
            return None
        if joint.is_dynamic(cfg):
            if not joint.is_dynamic(self.config.items.tokenizer):
                raise RunError(
                    f"users.tokenizer {cfg.name!r} trains with the LLM, which needs a dynamic "
                    "items.tokenizer too (e.g. both 'ttds')"
                )
            tokenizer = self._dynamic_stage("user_tokenizer", new_user_tokenizer(cfg))
            self._check_user_tokens(tokenizer)
            return tokenizer

        def fit() -> ItemTokenizer:
            tokenizer = new_user_tokenizer(cfg)
            with self.context.timed("tokenize_users"):
                vectors = user_embeddings(
                    self.config, self.inputs.data, self.inputs.vectors.text_embeddings, self.echo
                )
                tokenizer.fit(vectors, seed=self._seed_for(cfg))
            return tokenizer

        tokenizer = self._fitted("user_tokenizer", self.user_tokenizer_fingerprint(), fit)
        if tokenizer.n_items != self.inputs.data.dataset.num_users:
            raise RunError(
                f"user tokenizer in {self.run_dir / 'user_tokenizer'} has {tokenizer.n_items} "
                f"users but the dataset has {self.inputs.data.dataset.num_users}"
            )
        self._check_user_tokens(tokenizer)
        return tokenizer

    def _check_user_tokens(self, tokenizer: ItemTokenizer) -> None:
        shared = sorted(set(tokenizer.token_strings()) & set(self.tokenizer.token_strings()))
        if shared:
            raise RunError(
                f"user and item SIDs share the tokens {shared[:5]}; give the users other "
                "level prefixes (users.tokenizer.params.level_prefixes)"
            )

    # ------------------------------------------------------------------ dynamic tokenizers

    def dynamic_fingerprint(self, stage: str) -> str:
        """Hash of what determines a dynamic tokenizer's warm-up: tokenizers, LLM, schedule."""
        keys = section(self.context.stage_config, (*TOKENIZER_KEYS, "model", "train.joint"))
        return content_hash(stage, keys, fingerprint_examples(self.inputs.data.split.train))

    def _dynamic_stage(self, stage: str, tokenizer: DynamicTokenizer) -> DynamicTokenizer:
        directory = self.run_dir / stage
        if self.directory.stage_done(stage, self.dynamic_fingerprint(stage)) and directory.exists():
            tokenizer.load_state_from(directory)
            self.echo(f"[tokenize] reused {directory} (the SIDs after the warm-up)")
        return tokenizer

    @cached_property
    def dynamic_tokenizers(self) -> dict[str, DynamicTokenizer]:
        """The tokenizers trained with the LLM, by role (``items``, ``users``)."""
        roles = {"items": self.tokenizer, "users": self.user_tokenizer}
        return {name: tok for name, tok in roles.items() if isinstance(tok, DynamicTokenizer)}

    def joint_texts(self) -> dict[str, list[str]]:
        """The texts whose backbone representations are the dynamic tokenizers' inputs."""
        data = self.inputs.data
        texts = {"items": list(data.item_texts)}
        if "users" in self.dynamic_tokenizers:
            texts["users"] = joint.user_texts(data.dataset, data.split, data.item_texts)
        return texts

    def _dynamic_inputs(self, name: str, model, hf_tokenizer) -> torch.Tensor:
        """A dynamic tokenizer's inputs: the backbone's text representations, or the embedder's."""
        if self.config.train.joint.inputs == "backbone":
            return joint.representer(self.config, hf_tokenizer)(model, self.joint_texts()[name])
        if name == "items":
            return self.inputs.vectors.item_embeddings()
        return user_embeddings(
            self.config, self.inputs.data, self.inputs.vectors.text_embeddings, self.echo
        )

    def prepare_joint(self, model, hf_tokenizer):
        """Initialise and warm up the dynamic tokenizers (or reuse them); the joint trainer."""
        tokenizers = self.dynamic_tokenizers
        if not tokenizers:
            return None
        for name, tokenizer in tokenizers.items():
            if tokenizer.is_initialized:
                continue
            stage = "tokenizer" if name == "items" else "user_tokenizer"
            if self.context.read_only:
                raise RunError(f"{self.run_dir / stage} was never fitted; run `semrec fit` first")
            with self.context.timed(f"warm_up_{name}"):
                inputs = self._dynamic_inputs(name, model, hf_tokenizer)
                joint.initialize(
                    tokenizer, inputs, model, hf_tokenizer, self.config, self.echo, name
                )
            self._save_stage(stage, tokenizer, self.dynamic_fingerprint(stage))
        recompute = self.config.train.joint.recompute_inputs_every_n_steps
        texts = (
            self.joint_texts()
            if recompute and self.config.train.joint.inputs == "backbone"
            else None
        )
        return joint.joint_training(self.config, tokenizers, hf_tokenizer, texts)

    @property
    def needs_warm_up(self) -> bool:
        """Whether a dynamic tokenizer still waits for the LLM (its warm-up, :meth:`prepare_joint`)."""
        return any(not tok.is_initialized for tok in self.dynamic_tokenizers.values())

    def catalogue(self) -> tuple[list[str], torch.Tensor]:
        """External item ids and SID codes of every item: the dataset's, then the added ones."""
        added = added_items(self.run_dir)
        ids = list(self.inputs.data.dataset.item_ids) + [record["id"] for record in added]
        codes = self.tokenizer.codes
        if added:
            codes = torch.cat([codes, torch.tensor([record["codes"] for record in added])])
        return ids, codes

    def tokenizer_report(self) -> str:
        if not self.tokenizer.is_fitted:
            return (
                f"[tokenize] {self.config.items.tokenizer.name}: trained with the LLM; "
                "initialised once the LLM is built"
            )
        report = format_tokenizer_stats(self.tokenizer.stats())
        if self.user_tokenizer is not None and self.user_tokenizer.is_fitted:
            report += "\n" + format_tokenizer_stats(self.user_tokenizer.stats(), entity="users")
        return report

    def trie(self, hf_tokenizer, *, include_added: bool = False) -> SIDTrie:
        """The trie of valid SIDs: the dataset's items (row = item index), then, with
        ``include_added``, the items of ``semrec add-items`` (:meth:`catalogue`)."""
        codes = self.catalogue()[1] if include_added else self.tokenizer.codes
        return decoding.sid_trie(self.tokenizer, codes, hf_tokenizer)

    def user_trie(self, hf_tokenizer) -> SIDTrie:
        """The trie of valid user SIDs (row = user index)."""
        if self.user_tokenizer is None:
            raise RunError("this run gives users no SIDs (users.tokenizer is null)")
        tokens = self.user_tokenizer
        return decoding.sid_trie(tokens, tokens.codes, hf_tokenizer)

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

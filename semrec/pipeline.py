"""One experiment run: data -> embeddings -> SIDs -> LoRA tuning -> constrained evaluation.

:class:`Run` executes the stages of an :class:`~semrec.config.ExperimentConfig` and writes
everything to a run directory::

    run_dir/
      config.yaml        the resolved config (every default filled in)
      stages.json        run-directory format + fingerprint of each finished stage;
                         unchanged stages are reused
      tokenizer/         tokenizer state, SID table (index.json), stats.json
      adapter/           LoRA adapter + trained SID rows (or full weights when LoRA is off)
      hf_tokenizer/      the LLM tokenizer with the SID tokens added
      checkpoints/       full Lightning checkpoints of the training (``fit --resume``)
      logs/ tb/          CSV and TensorBoard logs
      metrics.json       flat metrics: test/hr@10, valid/..., popularity/test/hr@10, ...
      metrics.md         the table printed at the end

Every file is written atomically, so a failing stage leaves the previous state intact.
A read-only run (``semrec test``) writes nothing but its outputs (metrics.json, metrics.md,
token_understanding.json) and refuses when the stored stages do not match its config.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from semrec.artifacts import atomic_dir, atomic_write, content_hash, read_json, write_json
from semrec.config import (
    MODEL_KEYS,
    TOKENIZER_KEYS,
    TRAINING_KEYS,
    ExperimentConfig,
    config_diff,
    config_section,
    dump_config,
    load_config,
)
from semrec.data import RecDataset, Split, kcore_filter, leave_one_out, load_dataset
from semrec.data.compact import CompactSequences
from semrec.data.datamodule import GenRecDataModule
from semrec.data.task_pairs import TaskPairs
from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.evaluation.report import metrics_table
from semrec.known_warnings import hide_known_warnings
from semrec.models.prompting import PromptFormatter
from semrec.tasks import TASKS, RecommendationTask, TaskContext
from semrec.text.item_text import ItemTextBuilder
from semrec.tokenizers import TOKENIZERS, ItemTokenizer, load_tokenizer
from semrec.tokenizers.collisions import PAD

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run directory is inconsistent with the config or incomplete."""


# Version of the run-directory layout; stages.json records it. Bump it when stored
# artifacts change meaning so an older run directory is refused, not misread.
RUN_FORMAT = 2
CHECKPOINTS = "checkpoints"


@dataclass
class PreparedData:
    dataset: RecDataset
    split: Split
    item_texts: list[str]


class Run:
    """Executes the stages of one experiment; each stage is reused when its inputs are unchanged."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        echo: Callable[[str], None] = print,
        *,
        read_only: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else config.resolved_run_dir()
        self.echo = echo
        self.read_only = read_only
        self._check_format()
        # stages are fingerprinted with the config they were made with; a read-only run
        # may differ from it in evaluation keys only
        self._stage_config = self._stored_config() if read_only else config
        if not read_only:
            self._check_writable()
        self.timings: dict[str, float] = {}
        torch.manual_seed(config.seed)
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)

    # ------------------------------------------------------------------ bookkeeping

    @property
    def stages_file(self) -> Path:
        return self.run_dir / "stages.json"

    def _stored_config(
        self, keys: tuple[str, ...] = MODEL_KEYS, refusal: str | None = None, advice: str = ""
    ) -> ExperimentConfig:
        """The config the run directory was made with; refuses if ``self.config`` differs
        from it in ``keys`` (default: a read-only run's tokenizer/model/training keys)."""
        stored_file = self.run_dir / "config.yaml"
        if not stored_file.is_file():
            raise RunError(f"{self.run_dir} has no config.yaml: not a semrec run directory")
        stored = load_config(stored_file)
        diff = config_diff(stored, self.config, keys)
        if diff:
            refusal = refusal or (
                f"semrec test only evaluates; these overrides would change what {self.run_dir} "
                "was trained with (tokenizer, model or training)"
            )
            advice = (
                advice or "nothing was written; run `semrec fit` with them into a new --run-dir"
            )
            raise RunError(f"{refusal}:\n  " + "\n  ".join(diff) + f"\n{advice}")
        return stored

    def _check_writable(self) -> None:
        """Fail before any work if the run directory cannot be created or written."""
        existing = self.run_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            problem = f"{existing} is a file, not a directory"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is read-only"
        else:
            return
        raise RunError(f"run directory {self.run_dir} is not writable: {problem}")

    def _check_format(self) -> None:
        """Refuse a run directory written by another semrec run-directory format."""
        if not self.stages_file.exists():
            return
        try:
            found = read_json(self.stages_file).get("format")
        except (OSError, ValueError, AttributeError) as err:
            raise RunError(f"{self.stages_file} is not a readable stages file: {err}") from None
        if found != RUN_FORMAT:
            raise RunError(
                f"{self.stages_file}: run directory format {found or 1} (an older semrec), this "
                f"semrec writes format {RUN_FORMAT}; rerun `semrec fit` with a new --run-dir "
                "(nothing in this directory was changed)"
            )

    def _stages(self) -> dict[str, Any]:
        return read_json(self.stages_file) if self.stages_file.exists() else {}

    def _stage_done(self, name: str, fingerprint: str) -> bool:
        return self._stages().get(name) == fingerprint

    def _mark_stage(self, name: str, fingerprint: str) -> None:
        stages = self._stages()
        stages["format"] = RUN_FORMAT
        stages[name] = fingerprint
        # later stages depend on this one: forget them
        order = ["tokenizer", "train"]
        for later in order[order.index(name) + 1 :]:
            stages.pop(later, None)
        write_json(self.stages_file, stages)

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 2)

    def write_config(self) -> None:
        if self.read_only:
            raise RunError(f"internal: a read-only run tried to write {self.run_dir}/config.yaml")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / "config.yaml") as fh:
            fh.write(dump_config(self.config))

    # ------------------------------------------------------------------ data

    @cached_property
    def data(self) -> PreparedData:
        start = time.perf_counter()
        cfg = self.config.dataset
        dataset = load_dataset(cfg.source, cfg.path, cfg.name)
        dataset = kcore_filter(dataset, cfg.kcore)
        split = leave_one_out(
            dataset,
            max_history=cfg.max_history,
            max_train_examples_per_user=cfg.max_train_examples_per_user,
            short_users=cfg.short_users,
        )
        texts = ItemTextBuilder(
            fields=cfg.text.fields, template=cfg.text.template, missing=cfg.text.missing
        ).build(dataset)
        self._timed("data", start)
        s = dataset.summary()
        self.echo(
            f"[data] {dataset.name}: {s['num_users']} users, {s['num_items']} items, "
            f"{s['num_interactions']} interactions; {len(split.train)} train examples "
            f"(history <= {cfg.max_history})"
        )
        return PreparedData(dataset, split, texts)

    # ------------------------------------------------------------------ tokenizer

    def _tokenizer_fingerprint(self) -> str:
        # what changes the items, their text or the embedder; a CF embedder also reads the
        # training examples (history length etc.), which its data fingerprint covers
        data = None
        if self.config.tokenizer.name != "precomputed" and self.embedder.uses_interactions:
            d = self.data
            data = self.embedder.data_fingerprint(d.dataset, d.split, d.item_texts)
        return content_hash("tokenizer", config_section(self._stage_config, TOKENIZER_KEYS), data)

    def _new_tokenizer(self) -> ItemTokenizer:
        cfg = self.config.tokenizer
        params = dict(cfg.params)
        if cfg.name == "precomputed" and params.get("index") is None:
            sids = self.data.dataset.precomputed_sids
            if sids is None:
                raise RunError(
                    f"tokenizer 'precomputed' needs SIDs: dataset {self.data.dataset.source} has "
                    "no index file; set tokenizer.params.index to an LC-Rec index.json"
                )
            params["index"] = sids
        return TOKENIZERS.get(cfg.name)(**params)

    @cached_property
    def embedder(self):
        """The configured item embedder (``embedder:``); ``text`` uses the ``encoder:`` section."""
        from semrec.embedders import ITEM_EMBEDDERS, TextEmbedder
        from semrec.text.encoders import build_text_encoder

        cfg = self.config.embedder
        if cfg.name == "text":
            encoder = self.config.encoder
            return TextEmbedder(build_text_encoder(encoder.name, **encoder.params))
        factory = ITEM_EMBEDDERS.get(cfg.name)
        params = dict(cfg.params)
        if factory.seeded_by_run:  # a learned CF model: seeded by the run
            params.setdefault("seed", self.config.seed)
        return factory(**params)

    @cached_property
    def embedder_output(self) -> torch.Tensor:
        """The embedder's own item vectors [n_items, d], from its cache when it has run before."""
        from semrec.embedders import embed_cached

        data = self.data
        return embed_cached(self.embedder, data.dataset, data.split, data.item_texts)

    def item_embeddings(self) -> torch.Tensor:
        """The embedder's item vectors; with ``embedder.cold_start: text`` the items without a
        training interaction get text-regressed ones (:mod:`semrec.embedders.cold_start`)."""
        from semrec.data.split import items_in_train

        start = time.perf_counter()
        data = self.data
        embeddings = self.embedder_output.clone()
        name = self.config.embedder.name
        source = f"{name} ({self.config.encoder.name})" if name == "text" else name
        note = ""
        if self.embedder.uses_interactions:
            cold = torch.from_numpy(~items_in_train(data.split))
            note = f"; {int(cold.sum())} items without train interactions"
            if self.config.embedder.cold_start == "text" and bool(cold.any()):
                regressor = self.cold_start_regressor
                embeddings[cold] = regressor.predict(self.text_embeddings()[cold])
                r2 = regressor.validation_r2
                note += (
                    f" got vectors from a text-to-CF ridge regressor ({self.config.encoder.name}"
                    + (
                        f"; cross-validated R^2 on the warm items {r2:.2f}"
                        if r2 is not None
                        else ""
                    )
                    + ")"
                )
        self._timed("embed", start)
        self.echo(f"[embed] {source}: {tuple(embeddings.shape)} item embeddings{note}")
        return embeddings

    def text_embeddings(self, texts: list[str] | None = None) -> torch.Tensor:
        """The ``encoder:`` section's embeddings of ``texts`` (default: the item texts), cached."""
        from semrec.text.encoders import build_text_encoder, encode_cached

        encoder = self.config.encoder
        return encode_cached(
            build_text_encoder(encoder.name, **encoder.params),
            self.data.item_texts if texts is None else texts,
        )

    @cached_property
    def cold_start_regressor(self):
        """``embedder.cold_start: text``: the text-to-CF regressor fitted on the warm items."""
        from semrec.data.split import items_in_train
        from semrec.embedders import TextToCF

        warm = torch.from_numpy(items_in_train(self.data.split))
        cf = self.embedder_output[warm]
        return TextToCF(seed=self.config.seed).fit(self.text_embeddings()[warm], cf)

    def llm_alignment_targets(self) -> torch.Tensor:
        """Each item's mean LLM input embedding over its text (a tokenizer's LLM alignment).

        The LLM is the run's backbone (its tokenizer and input embeddings); the scratch
        backbone reads no text, so its runs align to the embedded SmolLM2's instead. Cached
        like any text embedding.
        """
        from semrec.text.encoders import LLMMeanEncoder, encode_cached

        backbone = self.config.model.backbone
        source = "embedded" if backbone == "scratch" else backbone
        targets = encode_cached(LLMMeanEncoder(source, layer="input"), self.data.item_texts)
        note = " (the scratch backbone reads no text)" if backbone == "scratch" else ""
        self.echo(
            f"[tokenize] LLM alignment targets: mean input embeddings of {source}{note} over "
            f"the item texts, {tuple(targets.shape)}"
        )
        return targets

    @cached_property
    def tokenizer(self) -> ItemTokenizer:
        directory = self.run_dir / "tokenizer"
        fingerprint = self._tokenizer_fingerprint()
        if self._stage_done("tokenizer", fingerprint) and directory.exists():
            tokenizer = load_tokenizer(directory)
            self.echo(f"[tokenize] reused {directory}")
        elif self.read_only:
            raise RunError(
                f"{directory} does not match this config (or was never fitted); "
                "run `semrec fit` first"
            )
        else:
            tokenizer = self._new_tokenizer()
            needs_text = self.config.tokenizer.name != "precomputed"
            embeddings = self.item_embeddings() if needs_text else None
            start = time.perf_counter()
            # the tokenizer's own `seed` param wins; otherwise the run seed
            own_seed = "seed" in self.config.tokenizer.params
            seed = None if own_seed else self.config.seed
            if getattr(tokenizer, "needs_llm_targets", False):
                tokenizer.fit(embeddings, seed=seed, llm_targets=self.llm_alignment_targets())
            else:
                tokenizer.fit(embeddings, seed=seed)
            self._timed("tokenize", start)
            tokenizer.save(directory)
            write_json(directory / "stats.json", tokenizer.stats())
            self.write_config()
            self._mark_stage("tokenizer", fingerprint)
        if tokenizer.n_items != self.data.dataset.num_items:
            raise RunError(
                f"tokenizer in {directory} has {tokenizer.n_items} items but the dataset has "
                f"{self.data.dataset.num_items}; delete {directory} or fix the config"
            )
        return tokenizer

    def tokenizer_report(self) -> str:
        return format_tokenizer_stats(self.tokenizer.stats())

    # ------------------------------------------------------------------ model

    def build_model(self):
        """Backbone + SID tokens + LoRA; returns (model, hf_tokenizer, sid_token_ids)."""
        from semrec.models.adapters import apply_lora, count_parameters
        from semrec.models.backbone import load_backbone, scratch_backbone
        from semrec.models.vocabulary import add_sid_tokens

        cfg = self.config.model
        start = time.perf_counter()
        if cfg.backbone == "scratch":
            model, hf_tokenizer = scratch_backbone(
                self.tokenizer.token_strings(), **cfg.scratch.model_dump(), seed=self.config.seed
            )
        else:
            model, hf_tokenizer = load_backbone(
                cfg.backbone,
                quantization=cfg.quantization,
                tiny_hidden_size=cfg.tiny_hidden_size,
                seed=self.config.seed,
            )
        sid_ids = add_sid_tokens(
            model,
            hf_tokenizer,
            self.tokenizer.token_strings(),
            init=cfg.embedding_init,
            seed=self.config.seed,
        )
        if cfg.semantic_init.enabled:
            from semrec.models.semantic_init import semantic_init

            keywords = {token: sem.keywords for token, sem in (self.token_semantics or {}).items()}
            report = semantic_init(
                model,
                hf_tokenizer,
                self.tokenizer.level_token_strings(),
                keywords,
                depth=cfg.semantic_init.depth,
            )
            self.echo(f"[model] {report.summary()}")
        if cfg.lora.enabled:
            lora = cfg.lora
            model = apply_lora(
                model,
                sid_ids,
                r=lora.r,
                alpha=lora.alpha,
                dropout=lora.dropout,
                target_modules=lora.target_modules,
                new_tokens=lora.new_tokens,
                quantized=cfg.quantization is not None,
            )
        elif cfg.quantization is not None:
            raise RunError("model.quantization needs model.lora.enabled: true (QLoRA)")
        trainable, total = count_parameters(model)
        self._timed("load_model", start)
        self.echo(
            f"[model] {cfg.backbone}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M "
            f"trainable ({100 * trainable / total:.2f}%), {len(sid_ids)} SID tokens added"
        )
        return model, hf_tokenizer, sid_ids

    def trie(self, hf_tokenizer, *, include_added: bool = False) -> SIDTrie:
        """The trie of valid SIDs: the dataset's items (row = item index), then, with
        ``include_added``, the items of ``semrec add-items`` (:meth:`catalogue`)."""
        tokens = self.tokenizer
        codes = self.catalogue()[1] if include_added else tokens.codes
        sequences = [
            hf_tokenizer.convert_tokens_to_ids(
                [tokens.token(level, code) for level, code in enumerate(row) if code != PAD]
            )
            for row in codes.tolist()
        ]
        return SIDTrie.from_sequences(sequences, vocab_size=len(hf_tokenizer))

    # ------------------------------------------------------------------ catalogue

    def added_items(self) -> list[dict[str, Any]]:
        """The records ``semrec add-items`` appended to this run (``added_items.json``)."""
        from semrec.serving.new_items import ADDED_ITEMS_FILE

        path = self.run_dir / ADDED_ITEMS_FILE
        return read_json(path)["items"] if path.is_file() else []

    def catalogue(self) -> tuple[list[str], torch.Tensor]:
        """External item ids and SID codes of every item: the dataset's, then the added ones."""
        added = self.added_items()
        ids = list(self.data.dataset.item_ids) + [record["id"] for record in added]
        codes = self.tokenizer.codes
        if added:
            codes = torch.cat([codes, torch.tensor([record["codes"] for record in added])])
        return ids, codes

    def new_item_texts(self, records: list[dict[str, Any]]) -> list[str]:
        """Texts of new items' records, built like the dataset's item texts (``dataset.text``)."""
        cfg = self.config.dataset.text
        builder = ItemTextBuilder(fields=cfg.fields, template=cfg.template, missing=cfg.missing)
        fields = [
            {k: str(v) for k, v in record.items() if k not in ("id", "embedding")}
            for record in records
        ]
        return builder.render(self.data.dataset, [r["id"] for r in records], fields)

    def new_item_vectors(self, records: list[dict[str, Any]], source: str) -> torch.Tensor:
        """Vectors in the tokenizer's input space for new items (see semrec.serving.new_items)."""
        given = [record.get("embedding") for record in records]
        missing = [i for i, vector in enumerate(given) if vector is None]
        if missing:
            texts = self.new_item_texts([records[i] for i in missing])
            if not self.embedder.uses_interactions:
                from_text = self.text_embeddings(texts)
            elif self.config.embedder.cold_start == "text":
                from_text = self.cold_start_regressor.predict(self.text_embeddings(texts))
            else:
                raise RunError(
                    f"{source}: item {records[missing[0]]['id']!r} has no 'embedding', and a "
                    f"{self.config.embedder.name} embedder cannot embed an item without "
                    "interactions; give each new item an 'embedding', or fit the run with "
                    "embedder.cold_start: text"
                )
        widths = {len(vector) for vector in given if vector is not None}
        if missing:
            widths.add(from_text.shape[1])
        if len(widths) > 1:
            raise RunError(f"{source}: new items' embeddings have different widths {widths}")
        vectors = torch.zeros(len(records), widths.pop())
        for i, vector in enumerate(given):
            if vector is not None:
                vectors[i] = torch.tensor(vector, dtype=torch.float32)
        if missing:
            vectors[missing] = from_text
        return vectors

    def formatter(self, hf_tokenizer) -> PromptFormatter:
        cfg = self.config.model
        return PromptFormatter(
            hf_tokenizer,
            use_chat_template=cfg.use_chat_template,
            system_prompt=cfg.system_prompt,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )

    # ------------------------------------------------------------------ annotations

    def _token_clusters(self) -> dict[str, list[int]]:
        """TS-Rec Eq. 6 clusters, sampled to ``annotate.token_semantics.items_per_token``."""
        from semrec.tokenizers.clusters import sample_clusters, token_clusters

        tokenizer = self.tokenizer
        clusters = token_clusters([tokenizer.item_tokens(i) for i in range(tokenizer.n_items)])
        size = self.config.annotate.token_semantics.items_per_token
        return sample_clusters(clusters, size, self.config.seed)

    def _annotation_table(
        self, kind: str, generate: bool, progress: Callable[[int, int], None] | None = None
    ) -> tuple[dict[str, str] | None, str]:
        """(key -> text, where it came from) for one annotation kind.

        ``generate=False`` only reads the cache and returns ``None`` when something is
        missing; ``generate=True`` asks the annotator for what is missing.
        """
        from functools import partial

        from semrec.annotate import (
            ANNOTATORS,
            TOKEN_SEMANTICS,
            AnnotationError,
            AnnotationStore,
            annotate,
            annotation_keys,
            annotation_requests,
            load_annotations,
            parse_token_semantics,
            token_semantics_requests,
        )
        from semrec.annotate.token_semantics import retry_prompt

        cfg = self.config.annotate
        annotator = ANNOTATORS.get(cfg.annotator.name)(**cfg.annotator.params)
        is_file = hasattr(annotator, "lookup")
        if hasattr(annotator, "summarize"):  # computes its table from the data, no prompts
            if kind not in annotator.kinds:
                raise AnnotationError(
                    f"annotator {cfg.annotator.name!r} makes only {list(annotator.kinds)} "
                    f"annotations, not {kind!r}"
                )
            table = annotator.summarize(self.data.dataset, self._token_clusters())
            return table, f"annotator {cfg.annotator.name!r} (computed, not cached)"
        check = None
        if kind == TOKEN_SEMANTICS:
            settings = cfg.token_semantics
            known = set(self.tokenizer.token_strings()) if is_file else None
            requests = {}
            if not is_file:
                requests = token_semantics_requests(
                    self.data.dataset,
                    self._token_clusters(),
                    cfg.templates.get(kind),
                    category=settings.category,
                    max_description_chars=settings.max_description_chars,
                )
            check = partial(parse_token_semantics, min_keywords=settings.min_keywords)
        else:
            known = annotation_keys(kind, self.data.dataset) if is_file else None
            requests = {}
            if not is_file:
                requests = annotation_requests(
                    kind,
                    self.data.dataset,
                    self.data.split,
                    cfg.templates.get(kind),
                    cfg.max_requests,
                    self.config.seed,
                )
        store = AnnotationStore(kind, cfg.store_dir)
        where = f"annotator {cfg.annotator.name!r}" if is_file else str(store.path)
        if not generate:
            return load_annotations(kind, requests, annotator, store, known_keys=known), where
        table = annotate(
            kind,
            requests,
            annotator,
            store,
            batch_size=cfg.batch_size,
            progress=progress,
            known_keys=known,
            check=check,
            retry_prompt=retry_prompt,
            max_retries=cfg.max_retries,
            keep_invalid=cfg.keep_invalid,
        )
        return table, where

    def annotate(self, kind: str) -> int:
        """Generate (or reuse from the cache) the ``kind`` annotations; returns how many exist."""
        start = time.perf_counter()
        shown = [-1]

        def progress(done: int, total: int) -> None:  # about 20 lines for a whole run
            if done == total or done - shown[0] >= max(1, total // 20):
                shown[0] = done
                self.echo(
                    f"[annotate] {kind}: {done}/{total} ({time.perf_counter() - start:.0f} s)"
                )

        table, where = self._annotation_table(kind, generate=True, progress=progress)
        assert table is not None
        self.echo(f"[annotate] {len(table)} {kind} annotations from {where}")
        return len(table)

    @cached_property
    def tasks(self) -> list[tuple[Any, float]]:
        """The configured (task, weight) pairs."""
        return [(TASKS.get(t.name)(**t.params), t.weight) for t in self.config.tasks]

    def _uses_token_semantics(self) -> bool:
        return self.config.model.semantic_init.enabled or any(
            "token_semantics" in task.requires for task, _ in self.tasks
        )

    @cached_property
    def annotations(self) -> dict[str, dict[str, str]] | None:
        """Cached user annotations (intention, preference) if any task needs them (tasks say
        which command makes missing ones)."""
        from semrec.annotate import DATASET_KINDS, AnnotationError

        if not any("annotations" in task.requires for task, _ in self.tasks):
            return None
        tables = {}
        for kind in DATASET_KINDS:
            try:
                table, _ = self._annotation_table(kind, generate=False)
            except AnnotationError as err:  # e.g. intentions on a dataset without reviews;
                log.info("no %s annotations: %s", kind, err)  # a task needing them says so
                continue
            if table is not None:
                tables[kind] = table
        return tables or None

    @cached_property
    def token_semantics(self) -> dict[str, Any] | None:
        """SID token -> parsed TS-Rec semantics, when SA-Init or a task uses them.

        Also written to ``run_dir/token_semantics.json`` for inspection.
        """
        from semrec.annotate import TOKEN_SEMANTICS, semantics_table

        if not self._uses_token_semantics():
            return None
        table, where = self._annotation_table(TOKEN_SEMANTICS, generate=False)
        if table is None:
            raise RunError(
                "SA-Init (model.semantic_init) and the ts_align_* tasks need token semantics, "
                f"which are not cached yet in {where}; make them with `semrec annotate --config "
                "<your config>.yaml --kind token_semantics`"
            )
        settings = self.config.annotate.token_semantics
        parsed, failed = semantics_table(table, settings.min_keywords)
        if not parsed:
            raise RunError(
                f"none of the {len(table)} token semantics from {where} is usable"
                + (f" (e.g. {next(iter(failed.items()))})" if failed else "")
                + "; SA-Init and the ts_align_* tasks need descriptions with keywords"
            )
        used = {t for i in range(self.tokenizer.n_items) for t in self.tokenizer.item_tokens(i)}
        message = (
            f"[annotate] token semantics for {len(parsed)} of the {len(used)} SID tokens in use "
            f"(from {where})"
        )
        if failed:
            token, reason = next(iter(failed.items()))
            message += f"; {len(failed)} answers unusable and skipped (e.g. {token}: {reason})"
        self.echo(message)
        if self.read_only:
            return parsed
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            self.run_dir / "token_semantics.json",
            {
                t: {"description": s.description, "keywords": list(s.keywords)}
                for t, s in parsed.items()
            },
        )
        return parsed

    # ------------------------------------------------------------------ training data

    def datamodule(self, hf_tokenizer) -> GenRecDataModule:
        cfg = self.config
        split = self.data.split
        training = (
            self._compact_sequences(hf_tokenizer)
            if cfg.model.prompt_format == "compact"
            else self._task_pairs(hf_tokenizer)
        )
        return GenRecDataModule(
            training,
            split,
            batch_size=cfg.train.batch_size,
            eval_batch_size=cfg.eval.batch_size,
            max_valid_users=cfg.eval.max_valid_users,
            max_test_users=cfg.eval.max_test_users,
            mask_history=cfg.eval.mask_history,
            bucket_by_length=cfg.train.bucket_by_length,
            seed=cfg.seed,
        )

    def _compact_sequences(self, hf_tokenizer) -> CompactSequences:
        tokens = self.tokenizer
        return CompactSequences(
            self.data.split,
            [
                hf_tokenizer.convert_tokens_to_ids(tokens.item_tokens(i))
                for i in range(tokens.n_items)
            ],
            sep_id=hf_tokenizer.sep_token_id,
            pad_id=hf_tokenizer.pad_token_id,
            max_history=self.config.dataset.max_history,
            window_items=self.config.model.compact_window,
        )

    def _task_pairs(self, hf_tokenizer) -> TaskPairs:
        data = self.data
        tasks = self.tasks
        ctx = TaskContext(
            data.dataset,
            data.split,
            self.tokenizer.sid_strings(),
            data.item_texts,
            annotations=self.annotations,
            level_tokens=self.tokenizer.level_token_strings(),
            token_semantics=self.token_semantics,
        )
        for task, _ in tasks:
            for note in task.notes():
                self.echo(f"[tasks] {note}")
        eval_name = self.config.eval.task
        eval_task = next((t for t, _ in tasks if t.name == eval_name), None)
        if eval_task is None:
            eval_task = TASKS.get(eval_name)()
        if not isinstance(eval_task, RecommendationTask):
            raise RunError(
                f"eval.task: {eval_name!r} does not recommend items (its response is not a "
                "SID); use a recommendation task such as 'seq'"
            )
        return TaskPairs(
            ctx,
            tasks,
            eval_task,
            self.formatter(hf_tokenizer),
            max_train_samples=self.config.train.max_train_samples,
            seed=self.config.seed,
        )

    @cached_property
    def precision(self) -> str:
        from semrec.models.backbone import resolve_precision

        return resolve_precision(self.config.train.precision)

    @property
    def eval_autocast(self) -> torch.dtype | None:
        """``eval.precision``: decoding runs in fp32 unless it says ``bf16`` (autocast)."""
        return torch.bfloat16 if self.config.eval.precision == "bf16" else None

    def decoder(self) -> ConstrainedBeamSearch:
        cfg = self.config
        return ConstrainedBeamSearch(
            num_beams=cfg.eval.num_beams,
            score_mode=cfg.eval.score_mode,
            autocast_dtype=self.eval_autocast,
        )

    def exact_ranker(self):
        """The exact full-ranking scorer (``eval.exact_ranking``), or None."""
        cfg = self.config.eval
        if not cfg.exact_ranking:
            return None
        n_items = self.data.dataset.num_items
        if n_items > cfg.exact_max_items:
            raise RunError(
                f"eval.exact_ranking: the catalogue has {n_items} items, more than "
                f"eval.exact_max_items={cfg.exact_max_items}; raise that limit (exact ranking "
                "scores every item for every test user) or turn exact ranking off"
            )
        from semrec.decoding import ExactRanker

        return ExactRanker(
            score_mode=cfg.score_mode,
            autocast_dtype=self.eval_autocast,
            # renormalised scores need only the SID rows of the output layer (~15x faster)
            sid_rows_only=cfg.score_mode == "renormalized",
        )

    # ------------------------------------------------------------------ train / test

    def train_fingerprint(self) -> str:
        """Hash of everything that determines the trained model (its config keys and texts)."""
        return content_hash(
            "train",
            config_section(self._stage_config, TRAINING_KEYS),
            # the texts tasks and SA-Init read: new annotations mean a new model
            self.annotations,
            {t: [s.description, list(s.keywords)] for t, s in (self.token_semantics or {}).items()},
        )

    def _check_resumable(self) -> Path:
        """The newest full checkpoint to resume from; refuses if the training config changed."""
        stored_file = self.run_dir / "config.yaml"
        candidates = sorted(
            (self.run_dir / CHECKPOINTS).glob("*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not stored_file.is_file() or not candidates:
            raise RunError(
                f"--resume: {self.run_dir} has no training checkpoint to resume from "
                f"(looked for {self.run_dir / CHECKPOINTS}/*.ckpt); run `semrec fit` without "
                "--resume"
            )
        self._stored_config(
            TRAINING_KEYS,
            refusal=f"--resume: the config differs from the one {self.run_dir} was trained "
            "with, in keys that change training",
            advice=f"resume with the stored config (semrec fit --config {stored_file} --resume) "
            "or start a new run",
        )
        return candidates[-1]

    def _check_same_vocabulary(self, hf_tokenizer) -> None:
        """Refuse trained weights whose token ids no longer mean what they meant in training.

        The weights were trained with ``run_dir/hf_tokenizer``; the tokenizer built now
        must map every token to the same id (a changed backbone file or semrec version
        could renumber them, e.g. the scratch backbone's specials).
        """
        from transformers import AutoTokenizer

        saved_dir = self.run_dir / "hf_tokenizer"
        if not saved_dir.is_dir():
            return
        saved = AutoTokenizer.from_pretrained(str(saved_dir)).get_vocab()
        built = hf_tokenizer.get_vocab()
        if saved != built:
            changed = sorted(t for t in set(saved) | set(built) if saved.get(t) != built.get(t))
            raise RunError(
                f"{saved_dir}: the model was trained with another vocabulary than the one "
                f"built now ({len(changed)} tokens differ, e.g. "
                + ", ".join(f"{t!r}: {saved.get(t)} -> {built.get(t)}" for t in changed[:3])
                + "); the backbone or semrec changed since training. Retrain with `semrec fit` "
                "into a new --run-dir"
            )

    def train(self, allow_training: bool = True, resume_from: Path | None = None):
        """Train (or reuse) the adapter; returns (module, datamodule, hf_tokenizer).

        With ``allow_training=False`` (``semrec test``) a missing or stale adapter is an error.
        ``resume_from`` (a full checkpoint, see :meth:`fit`) continues an interrupted training.
        """
        import lightning as L

        from semrec.models.checkpoint import (
            AtomicCheckpointIO,
            BestAdapterCheckpoint,
            load_trained_weights,
        )
        from semrec.models.module import GenRecModule
        from semrec.models.speed import TrainingSpeed

        cfg = self.config
        model, hf_tokenizer, _ = self.build_model()
        datamodule = self.datamodule(hf_tokenizer)
        module = GenRecModule(
            model,
            self.decoder(),
            self.trie(hf_tokenizer),
            ks=cfg.eval.ks,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            warmup_ratio=cfg.train.warmup_ratio,
            exact_ranker=self.exact_ranker(),
        )
        adapter_dir = self.run_dir / "adapter"
        fingerprint = self.train_fingerprint()
        if self._stage_done("train", fingerprint) and adapter_dir.exists():
            self._check_same_vocabulary(hf_tokenizer)
            load_trained_weights(model, adapter_dir)
            self.echo(f"[train] reused {adapter_dir}")
            return module, datamodule, hf_tokenizer
        if not allow_training:
            raise RunError(
                f"{self.run_dir}: the trained adapter does not match this config (a key that "
                "affects training was overridden, or training never finished); run `semrec fit`"
            )

        checkpoints = self.run_dir / CHECKPOINTS
        if resume_from is None and checkpoints.exists():
            shutil.rmtree(checkpoints)  # a new training: old checkpoints belong to another one
        self.write_config()
        with atomic_dir(self.run_dir / "hf_tokenizer") as tmp:
            hf_tokenizer.save_pretrained(tmp)
        if cfg.train.epochs == 0 or cfg.train.max_steps == 0:
            checkpoint = BestAdapterCheckpoint(adapter_dir, monitor=None)
            checkpoint.save(model)
            self._mark_stage("train", fingerprint)
            self.echo("[train] skipped (train.epochs: 0): evaluating the untrained model")
            return module, datamodule, hf_tokenizer

        samples = datamodule.training.examples_per_epoch(0)
        self.echo(
            f"[train] {samples} training examples per epoch"
            + (
                f" (capped by train.max_train_samples={cfg.train.max_train_samples})"
                if cfg.train.max_train_samples
                else ""
            )
            + f", {cfg.train.epochs} epoch(s), batch {cfg.train.batch_size}, "
            f"precision {self.precision}, validation on {len(datamodule.valid_examples)} users"
        )
        if resume_from is not None:
            self.echo(f"[train] resuming from {resume_from}")
        monitor = f"val/ndcg@{max(cfg.eval.ks)}"
        checkpoint = BestAdapterCheckpoint(adapter_dir, monitor=monitor)
        callbacks: list[Any] = [
            checkpoint,
            *_resume_checkpoints(checkpoints, cfg.train),
            TrainingSpeed(self.echo),
        ]
        if cfg.train.early_stopping_patience:
            callbacks.append(
                L.pytorch.callbacks.EarlyStopping(
                    monitor=monitor, mode="max", patience=cfg.train.early_stopping_patience
                )
            )
        loggers = [
            L.pytorch.loggers.CSVLogger(self.run_dir, name="logs"),
            L.pytorch.loggers.TensorBoardLogger(self.run_dir, name="tb"),
        ]
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            precision=self.precision,
            accumulate_grad_batches=cfg.train.accumulate_grad_batches,
            gradient_clip_val=cfg.train.gradient_clip,
            val_check_interval=cfg.train.val_check_interval,
            check_val_every_n_epoch=cfg.train.check_val_every_n_epoch,
            log_every_n_steps=cfg.train.log_every_n_steps,
            reload_dataloaders_every_n_epochs=1,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            logger=loggers,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=self.run_dir,
        )
        start = time.perf_counter()
        with hide_known_warnings():
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(resume_from) if resume_from is not None else None,
            )
        self._timed("train", start)
        if not checkpoint.saved:
            checkpoint.save(model)  # no validation ran: keep the final weights
        load_trained_weights(model, adapter_dir)
        if checkpoint.best_metrics is not None:
            write_json(self.run_dir / "valid_metrics.json", checkpoint.best_metrics)
        self._mark_stage("train", fingerprint)
        return module, datamodule, hf_tokenizer

    def test(self, trained=None) -> dict[str, float]:
        """Evaluate the trained model (``trained`` from :meth:`train`, else reloaded) on test users."""
        import lightning as L

        module, datamodule, trained_tokenizer = trained or self.train(allow_training=False)
        cfg = self.config
        trainer = L.Trainer(
            accelerator="auto",
            devices=1,
            # the decoder applies eval.precision itself; a bf16 Trainer would autocast it
            precision="bf16-true" if self.precision == "bf16-true" else "32",
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=True,
        )
        start = time.perf_counter()
        with hide_known_warnings():
            trainer.test(module, dataloaders=datamodule.test_dataloader(), verbose=False)
        self._timed("test", start)
        metrics: dict[str, float] = {}
        for part in ("test", "test_beam"):
            for name, value in module.last_metrics.get(part, {}).items():
                metrics[f"{part}/{name}"] = value
        valid_file = self.run_dir / "valid_metrics.json"
        if valid_file.exists():
            for name, value in read_json(valid_file).items():
                metrics[f"valid/{name}"] = value
        if cfg.eval.token_understanding.enabled:
            metrics.update(self.token_understanding(module.model, trained_tokenizer))
        metrics.update(self.baseline_metrics(datamodule))
        return metrics

    def baseline_metrics(self, datamodule: GenRecDataModule) -> dict[str, float]:
        """``eval.baselines`` on the same valid/test users: ``{name}/{part}/{metric}``.

        Learned baselines (SASRec, GRU4Rec) are fitted on the split, or reused from the
        cache of fitted models (``cache_dir()/cf``); their seed defaults to the run's.
        """
        from semrec.cf import SequentialRecommender, fit_cached
        from semrec.evaluation.baselines import BASELINES

        cfg = self.config.eval
        split = self.data.split
        examples = {"test": datamodule.test_examples, "valid": datamodule.valid_examples}
        exclude = {part: datamodule.excluded_items(part) for part in examples}
        metrics: dict[str, float] = {}
        for name in cfg.baselines:
            factory = BASELINES.get(name)
            params = dict(cfg.baseline_params.get(name, {}))
            learned = isinstance(factory, type) and issubclass(factory, SequentialRecommender)
            if learned:
                params.setdefault("seed", self.config.seed)
            baseline = factory(**params)
            start = time.perf_counter()
            if learned:
                fit_cached(baseline, split)
                stopped = (
                    f"stopped early (best epoch {baseline.best_epoch})"
                    if baseline.epochs_run < baseline.max_epochs
                    else f"reached its max_epochs cap (best epoch {baseline.best_epoch})"
                )
                self.echo(
                    f"[baselines] {name}: {baseline.epochs_run} epochs, {stopped}; "
                    + ("reused from the cache, " if baseline.from_cache else "")
                    + f"fitted in {baseline.fit_seconds:.0f} s"
                )
            scores = baseline.evaluate(split, examples, cfg.ks, exclude)
            self._timed(f"baseline_{name}", start)
            metrics.update({f"{name}/{key}": value for key, value in scores.items()})
        return metrics

    def token_understanding(self, model, hf_tokenizer) -> dict[str, float]:
        """TS-Rec RQ4: Title2SID / SID2Title accuracy on a sample of items (``eval.token_understanding``).

        A few examples of each task go to ``run_dir/token_understanding.json``.
        """
        from semrec.evaluation.token_understanding import (
            evaluate_token_understanding,
            sample_items,
        )
        from semrec.tasks.item_fields import field_text

        cfg = self.config.eval.token_understanding
        dataset = self.data.dataset
        titles = [field_text(dataset, item, "title") for item in range(dataset.num_items)]
        items = sample_items(titles, cfg.max_items, self.config.seed)
        if not items:
            raise RunError(
                f"eval.token_understanding needs item titles; no item of dataset "
                f"{dataset.name!r} has one"
            )
        start = time.perf_counter()
        result = evaluate_token_understanding(
            model,
            self.formatter(hf_tokenizer),
            self.trie(hf_tokenizer),
            items,
            titles,
            self.tokenizer.sid_strings(),
            num_beams=cfg.num_beams,
            batch_size=self.config.eval.batch_size,
            title2sid_template=cfg.title2sid_template,
            sid2title_template=cfg.sid2title_template,
        )
        self._timed("token_understanding", start)
        write_json(self.run_dir / "token_understanding.json", {"examples": result.examples})
        self.echo(
            f"[eval] SID comprehension on {result.n_items} items: Title2SID accuracy "
            f"{result.title2sid_acc:.4f}, SID2Title accuracy {result.sid2title_acc:.4f}"
        )
        return result.metrics()

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """tokenize -> train -> test; writes metrics.json / metrics.md and returns the metrics.

        ``resume=True`` continues an interrupted training from its last full checkpoint.
        """
        wall = time.perf_counter()
        resume_from = self._check_resumable() if resume else None  # before anything is written
        self.echo(f"[run] {self.config.name} -> {self.run_dir}")
        self.echo(self.tokenizer_report())
        trained = self.train(resume_from=resume_from)
        metrics = self.test(trained)
        self._timed("total", wall)
        self.write_config()
        return self.write_report(metrics)

    def write_report(self, metrics: dict[str, float]) -> dict[str, Any]:
        data = self.data
        n_test = int(metrics.get("test/users", 0))
        notes = []
        if n_test < len(data.split.test):
            notes.append(
                f"test metrics on {n_test} of {len(data.split.test)} users "
                f"(eval.max_test_users={self.config.eval.max_test_users}); standard error of "
                f"HR@10 ~ {_hr_stderr(metrics.get('test/hr@10', 0.0), n_test):.3f}"
            )
        ev = self.config.eval
        notes.append(
            "ranking: "
            + (
                "exact (every item scored)"
                if ev.exact_ranking
                else f"beam search ({ev.num_beams} beams)"
            )
            + f", history items {'masked' if ev.mask_history else 'not masked'} (eval.mask_history)"
            + f", decoding in {'bf16' if self.eval_autocast is not None else 'fp32'}"
        )
        k = max(ev.ks)
        if f"test_beam/hr@{k}" in metrics:
            exact, beam = metrics[f"test/hr@{k}"], metrics[f"test_beam/hr@{k}"]
            notes.append(
                f"beam search ({ev.num_beams} beams) vs exact ranking: HR@{k} {beam:.4f} vs "
                f"{exact:.4f} ({beam - exact:+.4f}), NDCG@{k} {metrics[f'test_beam/ndcg@{k}']:.4f}"
                f" vs {metrics[f'test/ndcg@{k}']:.4f}"
            )
        for name in ev.baselines:
            cap = ev.baseline_params.get(name, {}).get("max_epochs")
            if cap is not None and metrics.get(f"{name}/fit/epochs") == cap:
                notes.append(
                    f"{name} stopped at its epoch cap (eval.baseline_params.{name}.max_epochs="
                    f"{cap}) before early stopping would have: it is under-trained here"
                )
        if self.config.train.max_train_samples:
            notes.append(
                f"trained on {self.config.train.max_train_samples} sampled pairs per epoch "
                f"(train.max_train_samples), not the full {len(data.split.train)}"
            )
        for name, seconds in self.timings.items():
            metrics[f"time/{name}_s"] = seconds
        write_json(self.run_dir / "metrics.json", metrics)
        table = metrics_table(metrics, self.config.eval.ks, notes)
        with atomic_write(self.run_dir / "metrics.md") as fh:
            fh.write(table + "\n")
        self.echo(table)
        return metrics


def _resume_checkpoints(directory: Path, train) -> list[Any]:
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


def _hr_stderr(p: float, n: int) -> float:
    return (p * (1 - p) / max(n, 1)) ** 0.5


def format_tokenizer_stats(stats: dict[str, Any]) -> str:
    """Short human summary of :meth:`ItemTokenizer.stats`."""
    resolution = stats.get("collision_resolution", {})
    details = ", ".join(
        f"{key}={value}"
        for key, value in resolution.items()
        if key != "strategy" and isinstance(value, (int, float, str, bool))
    )
    lines = [
        f"[tokenize] {stats.get('n_items')} items, {stats.get('levels')} levels; "
        f"collision rate {stats.get('collision_rate_before', 0):.4f} before resolution, "
        f"{stats.get('collision_rate_after', 0):.4f} after "
        f"({resolution.get('strategy', 'none')}{': ' + details if details else ''})"
    ]
    for level in stats.get("per_level", []):
        lines.append(
            f"  level {level.get('level')}: {level.get('used_codes')}/{level.get('codebook_size')} "
            f"codes used, normalised entropy {level.get('normalized_entropy') or 0:.3f}"
        )
    return "\n".join(lines)

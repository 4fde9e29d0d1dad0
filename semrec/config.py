"""Typed experiment configuration: YAML in, validated pydantic models out, clear errors.

Defaults live here, so an experiment YAML states only what it changes. Unknown keys are
rejected with the closest valid names; component parameters (``tokenizer.params``,
``tasks[i].params``, ``encoder.params``) are checked against the registered component's
constructor.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from semrec.memory_budget import FP32_BYTES, TRAINED_FP32_BYTES, AllocationTooLarge, require_fits

# Seeds reach numpy and Lightning's seed_everything, which take 0 <= seed < 2**32.
SEED_LIMIT = 2**32


class ConfigError(ValueError):
    """An invalid experiment config; the message names the key and the reason."""


class _Section(BaseModel):
    # every number must be finite: an infinite lr or weight turns every weight into NaN
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TextConfig(_Section):
    """How an item's text is built from its fields (``semrec.text.item_text``)."""

    fields: list[str] | None = None
    template: str | None = None
    missing: Literal["error", "skip"] = "skip"


class DatasetConfig(_Section):
    """The dataset: a ``DATASET_LOADERS`` source, its files and how it is filtered and split.

    ``options`` are the source's loader options (its keyword-only parameters, checked
    against them), e.g. for the Amazon sources ``{kcore: 10, dedup: all, on_bad_line:
    skip}``; ``kcore`` is a further k-core filter applied to whatever the loader returns.
    """

    source: str = "ml-100k"
    path: str | None = None
    name: str | None = None
    options: dict[str, Any] = {}
    kcore: int = Field(0, ge=0)
    max_history: int = Field(20, ge=1)
    max_train_examples_per_user: int | None = Field(None, ge=1)
    short_users: Literal["error", "drop"] = "error"
    text: TextConfig = TextConfig()


class ComponentConfig(_Section):
    """A registry entry plus its constructor parameters."""

    name: str
    params: dict[str, Any] = {}


class EncoderConfig(ComponentConfig):
    name: str = "sentence_transformer"


class EmbedderConfig(ComponentConfig):
    """The item embedder (``ITEM_EMBEDDERS``) whose vectors the tokenizer quantises.

    ``text`` (default) encodes the item texts with the ``encoder:`` section's encoder;
    ``cooccurrence``, ``lightgcn``, ``sasrec`` and ``gru4rec`` learn from the training
    interactions only; ``hybrid`` concatenates a text and a CF embedder's standardised
    vectors, weighted by ``text_weight`` (:mod:`semrec.embedders.hybrid`). ``cold_start: text`` gives the items without a training interaction
    (and items added to a trained run) vectors from a ridge regression text -> CF vector
    fitted on the other items, the texts embedded by the ``encoder:`` section; ``none``
    keeps the embedder's own vectors for them.
    """

    name: str = "text"
    cold_start: Literal["none", "text"] = "none"


class TokenizerConfig(ComponentConfig):
    name: str = "rqkmeans"


class ItemsConfig(_Section):
    """How items get SIDs: the embedder whose vectors the tokenizer quantises.

    The top-level ``embedder:`` and ``tokenizer:`` keys (and overrides such as
    ``tokenizer.name=...``) are aliases of ``items.embedder`` and ``items.tokenizer``.
    """

    embedder: EmbedderConfig = EmbedderConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()


class UserEmbedderConfig(ComponentConfig):
    """The user embedder (``USER_EMBEDDERS``) whose vectors the user tokenizer quantises."""

    name: str = "history_text"


class UsersConfig(_Section):
    """How users get SIDs; ``tokenizer: null`` (the default) gives users none.

    User SID tokens must use other level prefixes than item SID tokens (checked); the
    default user prefixes are :data:`~semrec.tokenizers.base.DEFAULT_USER_PREFIXES`.
    """

    embedder: UserEmbedderConfig = UserEmbedderConfig()
    tokenizer: TokenizerConfig | None = None


class TaskConfig(ComponentConfig):
    name: str = "seq"
    weight: float = Field(1.0, gt=0)


class LoraConfig(_Section):
    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    new_tokens: Literal["token_indices", "full_embeddings", "frozen"] = "token_indices"


class SemanticInitConfig(_Section):
    """TS-Rec SA-Init: SID token rows start as the mean embedding of their keywords' sub-tokens.

    ``source: token_semantics`` (TS-Rec) reads the keywords from ``token_semantics``
    annotations (``semrec annotate --kind token_semantics``); ``source: item_texts`` uses
    the texts of the items carrying each token instead (no extraction LLM needed).
    ``depth`` initialises the first ``depth`` SID levels this way (TS-Rec Figure 4; ``null``:
    every level); tokens of deeper levels, and tokens without usable keywords, keep
    ``model.embedding_init``.
    """

    enabled: bool = False
    depth: int | None = Field(None, ge=1)
    source: Literal["token_semantics", "item_texts"] = "token_semantics"


class ScratchConfig(_Section):
    """Sizes of ``model.backbone: scratch``: a LLaMA-architecture LM trained from random init."""

    layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)


class ModelConfig(_Section):
    # embedded | tiny | scratch | a hub id | a local directory or .gguf file
    backbone: str = "embedded"
    # text: tasks' instructions through the chat (or plain) template; compact: windows of a
    # user's items as <sep> + SID tokens, every target scored in one pass (semrec.prompts.compact)
    prompt_format: Literal["text", "compact"] = "text"
    scratch: ScratchConfig = ScratchConfig()
    # compact format: training targets per window of one user's sequence (speed only)
    compact_window: int = Field(64, ge=1)
    # compact format, pretrained backbones: text opening every window and prompt (null: none;
    # the tokenizer's BOS token, if it adds one, comes first either way)
    compact_instruction: str | None = None
    # compact format, pretrained backbones: the first this many tokens of each item's text
    # written after its SID (0: SID only)
    compact_title_tokens: int = Field(0, ge=0, le=64)
    # pretrained backbones: keep only the first N decoder layers (null: all of them)
    keep_layers: int | None = Field(None, ge=1)
    quantization: Literal["nf4", "fp4"] | None = None
    embedding_init: Literal["mean_resizing", "mean", "random"] = "mean_resizing"
    semantic_init: SemanticInitConfig = SemanticInitConfig()
    lora: LoraConfig = LoraConfig()
    use_chat_template: bool = True
    system_prompt: str | None = "You are a recommender system."
    max_prompt_tokens: int = Field(512, ge=16)
    tiny_hidden_size: int = Field(64, ge=8)


class JointConfig(_Section):
    """How a dynamic tokenizer (``ttds``) trains with the LLM (TTDS section 4.2, Eq. 15).

    The tokenizer is initialised on its inputs after the LLM is built and warmed up for
    ``warmup_steps`` with the LLM frozen (paper lr 1e-3). Then, with ``enabled``, the loss is
    ``L_LLM + alpha * L_DM`` (tokenizer lr ``lr``, paper 5e-4) over the rows each batch
    mentions, the codes are re-derived every ``refresh_every_n_steps``, the inputs
    recomputed by the current backbone every ``recompute_inputs_every_n_steps``, and after
    ``freeze_after_step`` the tokenizer is frozen. ``enabled: false`` keeps the warm-up's
    SIDs (TTSS); ``dm_vae: false`` drops the DM-VAE loss (TTDS-DM: the warm-up trains
    only the codebook term, and codes change only through recomputed inputs).
    ``inputs: backbone`` reads the texts with the run's LLM (Eq. 6); ``embedder`` uses the
    item embedder's vectors (for a scratch backbone, which reads no text).
    """

    enabled: bool = True
    dm_vae: bool = True
    alpha: float = Field(0.1, ge=0)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    warmup_lr: float = Field(1e-3, gt=0)
    warmup_batch_size: int = Field(64, ge=1)
    refresh_every_n_steps: int | None = Field(50, ge=1)
    recompute_inputs_every_n_steps: int | None = Field(None, ge=1)
    freeze_after_step: int | None = Field(None, ge=0)
    rows_per_step: int = Field(32, ge=1)
    inputs: Literal["backbone", "embedder"] = "backbone"
    max_text_tokens: int = Field(128, ge=4)


class TrainConfig(_Section):
    epochs: int = Field(1, ge=0)
    max_steps: int = Field(-1, ge=-1)
    max_train_samples: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    gradient_clip: float | None = 1.0
    # the training softmax: over the whole vocabulary, or over the SID tokens only (the
    # output layer computes their rows alone; needs eval.score_mode: renormalized, the
    # decoding that scores the same way)
    softmax: Literal["full_vocab", "sid_tokens"] = "full_vocab"
    # auto: bf16-mixed on a CUDA GPU with bf16 or a CPU with AMX-BF16, else 32 (without AMX,
    # CPU bf16 matmuls are ~5x slower than fp32: measured 22.9 vs 4.6 ms for 400x576x1536)
    precision: Literal["auto", "32", "bf16-mixed", "bf16-true"] = "auto"
    val_check_interval: float | int = 1.0
    check_val_every_n_epoch: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    log_every_n_steps: int = Field(10, ge=1)
    # a "[train] step N: loss ..., examples/s" line in the run's output this often (null: off)
    report_every_n_steps: int | None = Field(100, ge=1)
    # Lightning's progress bars while training and testing (off: e.g. in notebooks and logs)
    progress_bar: bool = True
    # batches of similar-length items (less padding); every item still once per epoch
    bucket_by_length: bool = True
    num_threads: int | None = None
    # full Lightning checkpoints (optimizer, scheduler, step, RNG, data position) for
    # `semrec fit --resume`, under run_dir/checkpoints/: every this many optimizer steps and
    # at each validation (null: only at validations)
    checkpoint_every_n_steps: int | None = Field(200, ge=1)
    # Lightning's hardware and strategy, passed through unchanged (see README, "More than
    # one GPU"): accelerator auto|cpu|gpu|..., strategy auto|ddp|ddp_find_unused_...|...,
    # devices per node (an int, a list of device ids, or auto) and nodes. batch_size stays
    # per process: a step of N processes trains on N * batch_size examples.
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: int | list[int] | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    joint: JointConfig = JointConfig()

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class TokenUnderstandingConfig(_Section):
    """TS-Rec RQ4: Title2SID and SID2Title accuracy with beam search on a sample of items."""

    enabled: bool = False
    max_items: int | None = Field(200, ge=1)  # null: every item with a title
    num_beams: int = Field(5, ge=1)
    title2sid_template: str = "Which item has the title: {title}?"
    sid2title_template: str = 'What is the title of item "{sid}"?'


class EvalConfig(_Section):
    task: str = "seq"  # the recommendation task whose prompts valid/test users get
    num_beams: int = Field(20, ge=1)
    ks: list[int] = [1, 5, 10]
    batch_size: int = Field(16, ge=1)
    score_mode: Literal["full_vocab", "renormalized"] = "full_vocab"
    max_valid_users: int | None = Field(None, ge=1)
    max_test_users: int | None = Field(None, ge=1)
    # BASELINES registry entries (popularity, sasrec, gru4rec) trained and ranked on the same
    # split and protocol; baseline_params[name] goes to its constructor (the run seed is the
    # default seed). Fitted models are cached (cache_dir()/cf).
    baselines: list[str] = ["popularity"]
    baseline_params: dict[str, dict[str, Any]] = {}
    # exclude each user's history items from the ranking (the LLM's beams and popularity);
    # off by default, as for RecBole's sequential models
    mask_history: bool = False
    # rank test users by the exact log p(SID | prompt) of every item (true full ranking);
    # the report then also shows the beam-search metrics and what beam search loses
    exact_ranking: bool = False
    exact_max_items: int = Field(5000, ge=1)  # refuse exact ranking above this catalogue size
    # precision of validation/test decoding: auto = fp32, or 32 / bf16 (autocast). bf16 decodes
    # ~1.5x faster on an AMX CPU, but its coarse logits tie at the beam cut and change the
    # top-10 (4 of 8 SmolLM2 prompts matched fp32); metrics would also depend on the machine
    # and then on whether it has AMX
    precision: Literal["auto", "32", "bf16"] = "auto"
    token_understanding: TokenUnderstandingConfig = TokenUnderstandingConfig()

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(ks))


class CandidatesConfig(_Section):
    """The retriever of candidate-ranking tasks (:mod:`semrec.ranking.candidates`).

    ``retriever`` is a learned ``BASELINES`` entry (``sasrec``, ``gru4rec``) built with
    ``params`` (the run seed unless given); each example gets its top ``k`` items, without
    the items of its history when ``exclude_history`` is on. Used only when a task needs
    candidates.
    """

    retriever: str = "sasrec"
    params: dict[str, Any] = {}
    k: int = Field(20, ge=1, le=26)
    exclude_history: bool = True


class AnnotatorConfig(ComponentConfig):
    name: str = "hf_local"


class TokenSemanticsConfig(_Section):
    """TS-Rec semantic extraction (section 4.1): one prompt per SID token."""

    items_per_token: int = Field(10, ge=1)  # sample of the token's item cluster shown
    category: str = "general"  # the item domain named in the prompt ("movie", "office")
    min_keywords: int = Field(5, ge=1)  # fewer makes an answer unusable
    max_description_chars: int = Field(300, ge=1)


class AnnotateConfig(_Section):
    """The ``semrec annotate`` stage: LLM-written texts (intentions, preferences, token
    semantics) for tasks and SA-Init."""

    annotator: AnnotatorConfig = AnnotatorConfig()
    templates: dict[str, str] = {}  # kind -> prompt template; empty: the built-in one
    max_requests: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    store_dir: str | None = None  # default: <cache>/annotations
    # answers a kind's parser rejects (token_semantics) are asked again this many times,
    # then either fail the stage (default) or are kept and skipped by their users
    max_retries: int = Field(2, ge=0)
    keep_invalid: bool = False
    token_semantics: TokenSemanticsConfig = TokenSemanticsConfig()


class ExperimentConfig(_Section):
    """Everything one ``semrec fit`` run needs."""

    name: str = "experiment"
    run_dir: str | None = None
    seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    dataset: DatasetConfig = DatasetConfig()
    encoder: EncoderConfig = EncoderConfig()
    items: ItemsConfig = ItemsConfig()
    users: UsersConfig = UsersConfig()
    model: ModelConfig = ModelConfig()
    tasks: list[TaskConfig] = [TaskConfig()]
    candidates: CandidatesConfig = CandidatesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    annotate: AnnotateConfig = AnnotateConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """``name`` names ``runs/<name>``: a path in it would put the run somewhere else."""
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(
                "must be a plain name (it becomes runs/<name>); to place a run "
                "elsewhere set run_dir or pass --run-dir"
            )
        return name

    @model_validator(mode="before")
    @classmethod
    def _item_aliases(cls, data: Any) -> Any:
        return move_item_aliases(data) if isinstance(data, dict) else data

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def check_components(self) -> None:
        """Check registry names and their ``params`` against the registered constructors."""
        from semrec.embedders import ITEM_EMBEDDERS
        from semrec.evaluation.baselines import BASELINES
        from semrec.tasks import TASKS
        from semrec.text.encoders import TEXT_ENCODERS
        from semrec.tokenizers import TOKENIZERS

        _check_dataset_options(self.dataset)
        _check_component("encoder", self.encoder, TEXT_ENCODERS)
        embedder = self.items.embedder
        if embedder.name == "text" and embedder.params:
            raise ConfigError(
                "items.embedder.params: the text embedder takes its encoder from the encoder: "
                "section (encoder.name, encoder.params); leave items.embedder.params empty"
            )
        _check_component("items.embedder", embedder, ITEM_EMBEDDERS)
        if embedder.name == "hybrid":
            _check_hybrid_parts(embedder.params, ITEM_EMBEDDERS)
        for name in self.eval.baselines:
            params = self.eval.baseline_params.get(name, {})
            _check_component(
                f"eval.baselines[{name}]", ComponentConfig(name=name, params=params), BASELINES
            )
        unused = sorted(set(self.eval.baseline_params) - set(self.eval.baselines))
        if unused:
            raise ConfigError(
                f"eval.baseline_params: {unused} are not in eval.baselines {self.eval.baselines}"
            )
        self._check_prompt_format()
        _check_component("items.tokenizer", self.items.tokenizer, TOKENIZERS)
        self._check_users()
        for i, task in enumerate(self.tasks):
            _check_component(f"tasks[{i}]", task, TASKS)
        try:
            eval_task = TASKS.get(self.eval.task)
        except KeyError as err:
            raise ConfigError(f"eval.task: {err}") from None
        leak = getattr(eval_task, "target_leak", None)
        if leak:
            raise ConfigError(
                f"eval.task: {self.eval.task!r} cannot be evaluated: {leak}, so its test "
                "prompts contain the answer; evaluate with a task whose prompt holds only the "
                "history, such as 'seq' (train with it all the same)"
            )
        self._check_beams()
        self._check_candidates()
        try:
            self._check_allocations()
        except AllocationTooLarge as err:
            raise ConfigError(str(err)) from None
        if self.train.softmax == "sid_tokens" and self.eval.score_mode != "renormalized":
            raise ConfigError(
                "train.softmax: sid_tokens trains a softmax over the SID tokens only; decode "
                "the same way with eval.score_mode: renormalized"
            )

    def needs_candidates(self) -> bool:
        """Whether a task (or the eval task) ranks retrieved candidates."""
        from semrec.tasks import TASKS

        names = {task.name for task in self.tasks} | {self.eval.task}
        return any("candidates" in TASKS.get(name).requires for name in names)

    def _check_candidates(self) -> None:
        from semrec.cf import SequentialRecommender
        from semrec.evaluation.baselines import BASELINES

        if not self.needs_candidates():
            return
        cfg = self.candidates
        try:
            factory = BASELINES.get(cfg.retriever)
        except KeyError as err:
            raise ConfigError(f"candidates.retriever: {err}") from None
        if not (isinstance(factory, type) and issubclass(factory, SequentialRecommender)):
            raise ConfigError(
                f"candidates.retriever: {cfg.retriever!r} is not a learned sequential "
                "recommender; use 'sasrec' or 'gru4rec'"
            )
        _check_component(
            "candidates", ComponentConfig(name=cfg.retriever, params=cfg.params), BASELINES
        )
        if max(self.eval.ks) > cfg.k:
            raise ConfigError(
                f"eval.ks: largest k ({max(self.eval.ks)}) exceeds candidates.k ({cfg.k}); "
                "a ranking of k candidates has only k places"
            )

    def _check_users(self) -> None:
        """User tokenizer and embedder names, and user SID prefixes apart from the items'."""
        from semrec.embedders.users import USER_EMBEDDERS
        from semrec.tokenizers import TOKENIZERS
        from semrec.tokenizers.base import level_prefixes_of

        users = self.users
        if users.tokenizer is None:
            return
        if self.model.prompt_format == "compact":
            raise ConfigError(
                "users.tokenizer: the compact format's prompts hold item SIDs only; user SIDs "
                "need model.prompt_format: text"
            )
        _check_component("users.embedder", users.embedder, USER_EMBEDDERS)
        _check_component("users.tokenizer", users.tokenizer, TOKENIZERS)
        sets = users.embedder.name == "review_attention"
        if sets and 3 not in TOKENIZERS.get(users.tokenizer.name).input_ndims:
            raise ConfigError(
                f"users.tokenizer.name: {users.tokenizer.name!r} takes one vector per user; the "
                "'review_attention' embedder gives a set of review vectors per user, which "
                "the 'ulmrec_user' tokenizer pools with its learned attention"
            )
        items = self.items.tokenizer
        if items.name == "precomputed":  # reads its prefixes from the SIDs: checked at fit
            item_prefixes = set(items.params.get("level_prefixes") or ())
        else:
            item_prefixes = set(level_prefixes_of(items.name, items.params))
        user_prefixes = set(
            level_prefixes_of(users.tokenizer.name, users.tokenizer.params, user=True)
        )
        shared = sorted(item_prefixes & user_prefixes)
        if shared:
            raise ConfigError(
                f"users.tokenizer.params.level_prefixes: user SID tokens would share the level "
                f"prefixes {shared} with item SID tokens (items.tokenizer), so a user token "
                "could read as an item token; give users other prefixes (default "
                "ua, ub, uc, ...)"
            )

    def _check_prompt_format(self) -> None:
        """A scratch model reads no natural text: it needs ``compact``, and neither text in
        its windows nor layers to drop; text options of ``compact`` need ``compact``."""
        model = self.model
        scratch, compact = model.backbone == "scratch", model.prompt_format == "compact"
        if scratch and not compact:
            raise ConfigError(
                "model.prompt_format: the scratch backbone has no text vocabulary; set "
                "model.prompt_format: compact"
            )
        window_text = {
            "model.compact_instruction": model.compact_instruction is not None,
            "model.compact_title_tokens": model.compact_title_tokens > 0,
        }
        for key, used in window_text.items():
            if used and not compact:
                raise ConfigError(
                    f"{key}: only the compact format writes it; set "
                    "model.prompt_format: compact or leave it unset"
                )
            if used and scratch:
                raise ConfigError(f"{key}: the scratch backbone reads no text; leave it unset")
        if model.keep_layers is not None and scratch:
            raise ConfigError(
                "model.keep_layers: drops layers of a pretrained backbone; the scratch "
                "backbone's depth is model.scratch.layers"
            )
        if compact:
            self._check_compact_tasks()
        if not scratch:
            return
        problems = {
            "model.lora.enabled": "the scratch backbone trains every weight; set it to false"
            if model.lora.enabled
            else None,
            "model.quantization": "the scratch backbone is not quantised; set it to null"
            if model.quantization
            else None,
            "model.semantic_init.enabled": "SA-Init needs a text vocabulary"
            if model.semantic_init.enabled
            else None,
            "eval.token_understanding.enabled": "Title2SID/SID2Title need text prompts"
            if self.eval.token_understanding.enabled
            else None,
        }
        for key, problem in problems.items():
            if problem:
                raise ConfigError(f"{key}: {problem}")

    def _check_compact_tasks(self) -> None:
        other = sorted({t.name for t in self.tasks} - {"seq"} | ({self.eval.task} - {"seq"}))
        if other:
            raise ConfigError(
                f"tasks: the compact format trains next-item prediction only ('seq'); "
                f"{other} need text prompts (model.prompt_format: text)"
            )

    def _check_allocations(self) -> None:
        """Values that size an allocation, against this machine's memory (lower bounds; see
        :mod:`semrec.memory_budget`)."""
        from semrec.tokenizers import TOKENIZERS

        model = self.model
        if model.backbone == "scratch":
            hidden = model.scratch.hidden_size
            weights = model.scratch.layers * (
                4 * hidden**2 + 3 * hidden * model.scratch.intermediate_size
            )
            require_fits(
                "model.scratch",
                model.scratch.model_dump(),
                weights * TRAINED_FP32_BYTES,
                "the scratch backbone's trained weights",
            )
        elif model.backbone == "tiny":
            hidden = model.tiny_hidden_size
            require_fits(
                "model.tiny_hidden_size",
                hidden,
                20 * hidden**2 * TRAINED_FP32_BYTES,
                "the tiny backbone's trained weights",
            )
        else:
            hidden = 64  # a pretrained backbone's width is read later; every LLM is wider
        sid_rows = 0
        item_levels = 1
        tokenizers = [("items.tokenizer", self.items.tokenizer)]
        if self.users.tokenizer is not None:
            tokenizers.append(("users.tokenizer", self.users.tokenizer))
        for where, component in tokenizers:
            sizes = _codebook_sizes(component, TOKENIZERS)
            if not sizes:
                continue
            if where == "items.tokenizer":
                item_levels = len(sizes)
            sid_rows += sum(sizes)
            require_fits(
                f"{where}.params.codebook_size",
                component.params.get("codebook_size"),
                sum(sizes) * hidden * TRAINED_FP32_BYTES,
                f"the {sum(sizes)} SID token rows of the model's embedding",
            )
        require_fits(
            "eval.num_beams",
            self.eval.num_beams,
            self.eval.batch_size * self.eval.num_beams * max(sid_rows, 1) * FP32_BYTES,
            f"one decoding step's scores (eval.batch_size {self.eval.batch_size} x "
            "num_beams x SID tokens)",
        )
        if model.prompt_format == "compact":
            tokens = model.compact_window * (item_levels + 1 + model.compact_title_tokens)
            require_fits(
                "model.compact_window",
                model.compact_window,
                self.train.batch_size * tokens**2 * FP32_BYTES,
                f"the attention mask of a batch of windows (train.batch_size "
                f"{self.train.batch_size} x ({tokens} tokens)^2)",
            )

    def _check_beams(self) -> None:
        if max(self.eval.ks) > self.eval.num_beams:
            raise ConfigError(
                f"eval.ks: largest k ({max(self.eval.ks)}) exceeds eval.num_beams "
                f"({self.eval.num_beams}); a beam search returns at most num_beams items"
            )


# What `semrec fit --resume` and `semrec test` compare with the stored config: every key
# that changes the SIDs or the trained weights. Keys under these prefixes but in
# NOT_TRAINING only change speed or logging.
_DATA_KEYS = (
    "seed",
    "dataset.source",
    "dataset.path",
    "dataset.name",
    "dataset.options",
    "dataset.kcore",
)
ITEM_TOKENIZER_KEYS = (*_DATA_KEYS, "dataset.text", "encoder", "items")
# user embedders read the item texts (history_text) and the split (its history cap too)
USER_TOKENIZER_KEYS = (*_DATA_KEYS, "dataset", "encoder", "users")
TOKENIZER_KEYS = (*ITEM_TOKENIZER_KEYS, "users")
TRAINING_KEYS = (
    *TOKENIZER_KEYS,
    "dataset",
    "model",
    "tasks",
    "candidates",
    "train",
    "annotate",
    # eval settings that steer checkpoint selection; test-only ones are left out
    "eval.task",
    "eval.num_beams",
    "eval.ks",
    "eval.score_mode",
    "eval.max_valid_users",
    "eval.mask_history",
    "eval.precision",
)
# What `semrec test` may not change: the tokenizer, the model and its training. Evaluation
# keys (eval.*) are free there, even those that steer checkpoint selection during fit.
MODEL_KEYS = tuple(key for key in TRAINING_KEYS if not key.startswith("eval."))
NOT_TRAINING = (
    "train.num_threads",
    # where a run trains, not what it learns: a run may be evaluated on other hardware
    "train.accelerator",
    "train.strategy",
    "train.devices",
    "train.num_nodes",
    "train.log_every_n_steps",
    "train.report_every_n_steps",
    "train.progress_bar",
    "train.checkpoint_every_n_steps",
    "annotate.batch_size",
    "annotate.store_dir",
)


ITEM_ALIASES = ("embedder", "tokenizer")  # top-level keys that mean items.<key>


def move_item_aliases(data: dict) -> dict:
    """A raw config mapping with top-level ``embedder:``/``tokenizer:`` moved into ``items:``
    (merged over what ``items:`` already says, as a derived config merges over its base)."""
    if not set(ITEM_ALIASES) & set(data):
        return data
    data = dict(data)
    items = dict(data.get("items") or {})
    for key in ITEM_ALIASES:
        if key in data:
            alias = data.pop(key)
            current = items.get(key)
            if isinstance(alias, dict) and isinstance(current, dict):
                alias = merge_configs(current, alias)
            items[key] = alias
    data["items"] = items
    return data


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``; lists stay whole values."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _selected(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


#: Keys added after run directories already existed. While at their default they are left
#: out of stage fingerprints, so the runs written before them are still reused and resumed.
LATE_KEYS = (
    "model.compact_instruction",
    "model.compact_title_tokens",
    "model.keep_layers",
    "train.softmax",
    "model.semantic_init.source",
)


def config_section(config: ExperimentConfig, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The flattened keys of ``config`` under ``prefixes`` (minus speed/logging-only keys,
    and :data:`LATE_KEYS` at their default)."""
    flat = flatten_config(config.model_dump(mode="json"))
    defaults = _late_defaults()
    return {
        k: v
        for k, v in flat.items()
        if _selected(k, prefixes)
        and not _selected(k, NOT_TRAINING)
        and not (k in defaults and v == defaults[k])
    }


@functools.cache
def _late_defaults() -> dict[str, Any]:
    flat = flatten_config(ExperimentConfig().model_dump(mode="json"))
    return {key: flat[key] for key in LATE_KEYS}


def config_diff(
    old: ExperimentConfig, new: ExperimentConfig, prefixes: tuple[str, ...] = TRAINING_KEYS
) -> list[str]:
    """``key: old -> new`` lines for every key under ``prefixes`` that differs."""
    a, b = config_section(old, prefixes), config_section(new, prefixes)
    return [
        f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def _check_component(where: str, cfg: ComponentConfig, registry) -> None:
    try:
        factory = registry.get(cfg.name)
    except KeyError as err:
        raise ConfigError(f"{where}.name: {err}") from None
    names = getattr(factory, "parameter_names", None)  # constructors passing **kwargs on
    if callable(names):
        accepted = list(names())
    else:
        signature = inspect.signature(factory)
        if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return
        accepted = [
            n
            for n, p in signature.parameters.items()
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and n != "self")
        ]
    seed = cfg.params.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"{where}.params.seed: must be an int in [0, 2**32), got {seed!r}")
    for key in cfg.params:
        if key not in accepted:
            raise ConfigError(
                f"{where}.params.{key}: {cfg.name!r} has no parameter {key!r}"
                f"{_did_you_mean(key, accepted)} (accepted: {', '.join(accepted)})"
            )


def _codebook_sizes(component: ComponentConfig, registry) -> list[int]:
    """A tokenizer's codebook sizes, one per level, from its params or its defaults (empty
    for a tokenizer without ``codebook_size``, or values its own check will refuse)."""
    from semrec.tokenizers.quantizer import codebook_sizes_per_level

    try:
        defaults = {
            name: p.default
            for name, p in inspect.signature(registry.get(component.name)).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
    except (KeyError, TypeError, ValueError):
        return []
    values = {**defaults, **component.params}
    if values.get("codebook_size") is None:
        return []
    try:
        return codebook_sizes_per_level(values.get("levels"), values["codebook_size"])
    except ValueError:
        return []


def _check_hybrid_parts(params: dict[str, Any], registry) -> None:
    """The ``hybrid`` embedder's parts and weight, checked when the config loads."""
    from semrec.embedders.hybrid import checked_text_weight

    where = "items.embedder.params"
    try:
        checked_text_weight(params.get("text_weight", 0.5))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for key in ("text", "cf"):
        spec = params.get(key)
        if spec is None:
            continue
        try:
            part = ComponentConfig.model_validate(spec)
        except ValidationError:
            raise ConfigError(
                f"{where}.{key}: expected {{name: <item embedder>, params: {{...}}}}, got {spec!r}"
            ) from None
        if part.name == "hybrid":
            raise ConfigError(f"{where}.{key}.name: a part of a hybrid cannot be a hybrid itself")
        _check_component(f"{where}.{key}", part, registry)


def _check_dataset_options(cfg: DatasetConfig) -> None:
    """``dataset.options`` against the keyword-only parameters of the source's loader."""
    if not cfg.options:
        return
    from semrec.data import DATASET_LOADERS, dataset_options

    try:
        DATASET_LOADERS.get(cfg.source)
    except KeyError as err:
        raise ConfigError(f"dataset.source: {err}") from None
    accepted = dataset_options(cfg.source)
    for key in cfg.options:
        if key not in accepted:
            raise ConfigError(
                f"dataset.options.{key}: source {cfg.source!r} has no option {key!r}"
                f"{_did_you_mean(key, accepted)} (options: {', '.join(accepted) or 'none'})"
            )


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the section that ``loc`` (minus its last part) points into."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if inspect.isclass(current) else None
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if inspect.isclass(c) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(current.model_fields) if inspect.isclass(current) else []


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(
            ".[", "["
        )
        if e["type"] == "extra_forbidden":
            valid = _fields_at(ExperimentConfig, loc)
            lines.append(
                f"{key}: unknown key{_did_you_mean(str(loc[-1]), valid)}"
                f" (valid keys here: {', '.join(valid)})"
            )
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=2`` -> (["train", "epochs"], 2); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a raw config dict (before validation); list items by index.

    A section the YAML leaves out starts from its default, so ``tasks.0.weight=2`` works
    on a config that never mentions ``tasks``. ``tokenizer.*`` and ``embedder.*`` set
    ``items.tokenizer.*`` and ``items.embedder.*``.
    """
    defaults = ExperimentConfig().model_dump(mode="json")
    for text in overrides:
        path, value = parse_override(text)
        if path[0] in ITEM_ALIASES:
            path = ["items", *path]
        node: Any = data
        default: Any = defaults
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                node = node[int(part)]
                default = (
                    default[int(part)]
                    if isinstance(default, list) and int(part) < len(default)
                    else None
                )
                continue
            default = default.get(part) if isinstance(default, dict) else None
            if part not in node or node[part] is None:
                node[part] = (
                    copy.deepcopy(default) if default is not None else ([] if nxt.isdigit() else {})
                )
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read a YAML experiment config, apply ``key=value`` overrides, validate everything."""
    data: dict = {}
    source = "<overrides>"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = move_item_aliases(_read_config_file(path, ()))
        data.setdefault("name", path.stem)
    try:
        data = apply_overrides(data, list(overrides or []))
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise ConfigError(f"could not apply overrides {overrides}: {err}") from None
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    config.check_components()
    return config


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict:
    """A config file's mapping with its ``base:`` chain merged in (see :func:`merge_configs`).

    ``base`` is a path relative to the file naming it. A base's ``name`` is not inherited,
    so a derived config gets its own run directory.
    """
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path}{where} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start}); a config is a YAML file"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another config file, got {base!r}")
    base_path = (path.parent / base).resolve()
    chain = (*chain, path.resolve())
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise ConfigError(f"{path}: config bases form a cycle: {cycle}")
    parent = _read_config_file(base_path, chain)
    parent.pop("name", None)
    return merge_configs(parent, data)


def merge_configs(base: dict, derived: dict) -> dict:
    """``derived`` on top of ``base``: mappings merge key by key; lists and values replace."""
    merged = copy.deepcopy(base)
    for key, value in derived.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dump_config(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

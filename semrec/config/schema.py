"""The experiment config's schema: typed sections with their defaults, and the stage each
field changes.

Defaults live here, so an experiment YAML states only what it changes. Each section's
``field_stages`` names the stage its fields change (:data:`semrec.config.stages.STAGES`);
a field not named there changes what its parent field changes. The fingerprint key sets of
:mod:`semrec.config.stages` are derived from these tags. Nothing here imports another
semrec package: checks against the registries are in :mod:`semrec.config.validation`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Seeds reach numpy and Lightning's seed_everything, which take 0 <= seed < 2**32.
SEED_LIMIT = 2**32


class ConfigError(ValueError):
    """An invalid experiment config; the message names the key and the reason."""


class _Section(BaseModel):
    # every number must be finite: an infinite lr or weight turns every weight into NaN
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    #: field name -> the stage it changes; unnamed fields change what their parent does
    field_stages: ClassVar[dict[str, str]] = {}


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

    # which interactions and texts exist; the rest shapes the users' sequences
    field_stages: ClassVar[dict[str, str]] = {
        key: "data" for key in ("source", "path", "name", "options", "kcore", "text")
    }

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
    # decoder layers (0-based, after model.keep_layers) that get LoRA (null: all); with
    # only upper layers and new_tokens: frozen the backward pass stops below them
    layers: list[int] | None = None

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and (not layers or min(layers) < 0 or len(set(layers)) < len(layers)):
            raise ValueError(f"must be distinct layer indices >= 0 (null: all), got {layers}")
        return layers


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


class PostTrainConfig(_Section):
    """Post-training after supervised fine-tuning (``train.post``), in the same run.

    ``method``: ``grpo`` (group relative policy optimisation over each prompt's
    ``group_size`` best trie-constrained beams, rewarded by ``reward``: ``exact`` 1 for the
    target; ``ranking`` MiniOneRec's rank-aware reward; ``collaborative`` the in-framework
    SASRec's score of the item), ``dpo`` (the target against one negative) or
    ``sdpo`` (against ``negatives`` at once, softmax DPO). Negatives are the policy's own
    best beams that are not the target, or items drawn by popularity. ``beta`` is the KL
    weight of GRPO (MiniOneRec 1e-3) or the temperature of DPO (0.1 in the DPO paper); it
    defaults per method. Each epoch trains on ``prompts_per_epoch`` training prefixes
    (null: all), ``batch_size`` prompts a step; validation runs every ``val_check_interval``
    (of an epoch, as Lightning reads it) and the weights are kept only where validation beats
    the SFT model's best, so post-training can never leave a worse model than SFT's.
    """

    method: Literal["grpo", "dpo", "sdpo"] = "grpo"
    epochs: int = Field(1, ge=0)
    max_steps: int = Field(-1, ge=-1)
    prompts_per_epoch: int | None = Field(4096, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    group_size: int = Field(16, ge=2)
    reward: Literal["exact", "ranking", "collaborative"] = "ranking"
    beta: float | None = Field(None, ge=0)
    clip_epsilon: float = Field(0.2, gt=0, lt=1)
    negatives: int | None = Field(None, ge=1)
    negative_source: Literal["beams", "popularity"] = "beams"
    # DPO/S-DPO: add this weight times the target's SID cross-entropy (the SFT loss on the
    # chosen item, as RPO does), which keeps its likelihood from falling with the negatives'
    sft_weight: float = Field(0.0, ge=0)
    val_check_interval: float | int = 0.25
    early_stopping_patience: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _method_defaults(self) -> PostTrainConfig:
        if self.beta is None:
            self.beta = 1e-3 if self.method == "grpo" else 0.1
        if self.negatives is None:
            self.negatives = 4 if self.method == "sdpo" else 1
        if self.method == "grpo" and self.sft_weight:
            raise ValueError(
                "train.post.sft_weight adds the SFT loss of the chosen item to DPO / S-DPO; "
                "GRPO has no chosen item"
            )
        if self.method == "dpo" and self.negatives != 1:
            raise ValueError(
                f"train.post.negatives: DPO compares the target with one negative, got "
                f"{self.negatives}; use method: sdpo for several"
            )
        return self


class DistillConfig(_Section):
    """Knowledge distillation during SFT (``train.distill``) from a fitted collaborative model.

    The teacher (``teacher``: an ``eval.baselines`` model, fitted or reused from the cache
    with the run's seed and ``eval.baseline_params``, the same model as that baseline's row)
    scores every item after each training prefix's history; ``softmax(scores /
    temperature)`` is turned into one soft target per SID token: at level ``l``, the
    teacher's probability mass of the items that share the target's first ``l`` codes,
    summed per code at level ``l`` and renormalised (what teacher forcing conditions on).
    The loss is ``(1 - weight) * CE(target) + weight * CE(soft target)`` per SID token
    (Hinton et al. 2015), so each prefix carries the teacher's whole ranking rather than one
    label. History items are left out of the teacher's distribution when
    ``eval.mask_history`` is on. Needs ``model.prompt_format: compact`` and fixed SIDs.
    """

    teacher: str = "sasrec"
    weight: float = Field(0.5, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)


class TrainConfig(_Section):
    # where a run trains and what it logs, not what it learns: a run may be evaluated (and
    # resumed) on other hardware
    field_stages: ClassVar[dict[str, str]] = {
        key: "runtime"
        for key in (
            "num_threads",
            "accelerator",
            "strategy",
            "devices",
            "num_nodes",
            "log_every_n_steps",
            "report_every_n_steps",
            "progress_bar",
            "checkpoint_every_n_steps",
        )
    } | {"post": "post"}

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
    # text formats: pack each epoch's instruction pairs into training sequences of at most
    # this many tokens, each pair attending only to itself (null: one pair per row);
    # batch_size then counts packed sequences (semrec.prompts.packing)
    pack_tokens: int | None = Field(None, ge=16)
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
    # distillation from a collaborative model's scores during SFT (null: none); see DistillConfig
    distill: DistillConfig | None = None
    # post-training after SFT (null: none); see PostTrainConfig
    post: PostTrainConfig | None = None

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


class FusionConfig(_Section):
    """A labelled extra row of the test: semrec's ranking fused with a baseline's.

    Each test user's top ``max(eval.ks)`` items of semrec (the beam search) and of
    ``baseline`` (an ``eval.baselines`` entry) are merged by weighted reciprocal rank fusion
    (Cormack et al. 2009): an item scores ``weight / (rrf_k + r_semrec) + (1 - weight) /
    (rrf_k + r_baseline)`` over the ranks ``r`` (from 1) at which it appears. The row is
    ``semrec+<baseline>``; ``test/*`` stays semrec's own.
    """

    baseline: str = "sasrec"
    weight: float = Field(0.5, ge=0, le=1)
    rrf_k: int = Field(60, ge=0)


class EvalConfig(_Section):
    # validation during fit decodes with these, so they steer which checkpoint is kept; the
    # other eval keys only change the test
    field_stages: ClassVar[dict[str, str]] = {
        key: "selection"
        for key in (
            "task",
            "num_beams",
            "ks",
            "score_mode",
            "max_valid_users",
            "mask_history",
            "precision",
        )
    }

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
    # an extra, labelled test row: semrec's ranking fused with a baseline's (null: none)
    fusion: FusionConfig | None = None

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

    field_stages: ClassVar[dict[str, str]] = {"batch_size": "runtime", "store_dir": "runtime"}

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

    # the root names a stage for every field (a test checks it)
    field_stages: ClassVar[dict[str, str]] = {
        "name": "identity",
        "run_dir": "identity",
        "seed": "data",
        "dataset": "sequences",
        "encoder": "data",
        "items": "item_sids",
        "users": "user_sids",
        "model": "model",
        "tasks": "model",
        "candidates": "model",
        "train": "model",
        "eval": "evaluation",
        "annotate": "model",
    }

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

    def task_names(self) -> set[str]:
        """The names of the trained tasks and of the evaluation task."""
        return {task.name for task in self.tasks} | {self.eval.task}


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


def merge_configs(base: dict, derived: dict) -> dict:
    """``derived`` on top of ``base``: mappings merge key by key; lists and values replace."""
    merged = copy.deepcopy(base)
    for key, value in derived.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged

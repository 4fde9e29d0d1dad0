"""Checks of a config against the registries and the machine: component names and their
``params``, combinations of sections that cannot work together, and allocation sizes.

:func:`check_components` runs when a config loads (:func:`~semrec.config.load.load_config`).
This is the config module that knows the other packages (their registries); the schema and
the stage key sets import none of them.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from pydantic import ValidationError

from semrec.cf import SequentialRecommender
from semrec.config.schema import (
    SEED_LIMIT,
    ComponentConfig,
    ConfigError,
    DatasetConfig,
    ExperimentConfig,
)
from semrec.data import DATASET_LOADERS, dataset_options
from semrec.embedders import ITEM_EMBEDDERS
from semrec.embedders.hybrid import checked_text_weight
from semrec.embedders.users import USER_EMBEDDERS
from semrec.evaluation.baselines import BASELINES
from semrec.memory_budget import FP32_BYTES, TRAINED_FP32_BYTES, AllocationTooLarge, require_fits
from semrec.tasks import TASKS, ranks_candidates
from semrec.text.encoders import TEXT_ENCODERS
from semrec.tokenizers import TOKENIZERS
from semrec.tokenizers.base import level_prefixes_of
from semrec.tokenizers.dynamic import DynamicTokenizer
from semrec.tokenizers.quantizer import codebook_sizes_per_level


def check_components(config: ExperimentConfig) -> None:
    """Check registry names and their ``params`` against the registered constructors."""
    _check_dataset_options(config.dataset)
    _check_component("encoder", config.encoder, TEXT_ENCODERS)
    embedder = config.items.embedder
    if embedder.name == "text" and embedder.params:
        raise ConfigError(
            "items.embedder.params: the text embedder takes its encoder from the encoder: "
            "section (encoder.name, encoder.params); leave items.embedder.params empty"
        )
    _check_component("items.embedder", embedder, ITEM_EMBEDDERS)
    if embedder.name == "hybrid":
        _check_hybrid_parts(embedder.params, ITEM_EMBEDDERS)
    for name in config.eval.baselines:
        params = config.eval.baseline_params.get(name, {})
        _check_component(
            f"eval.baselines[{name}]", ComponentConfig(name=name, params=params), BASELINES
        )
    unused = sorted(set(config.eval.baseline_params) - set(config.eval.baselines))
    if unused:
        raise ConfigError(
            f"eval.baseline_params: {unused} are not in eval.baselines {config.eval.baselines}"
        )
    _check_prompt_format(config)
    _check_component("items.tokenizer", config.items.tokenizer, TOKENIZERS)
    _check_users(config)
    for i, task in enumerate(config.tasks):
        _check_component(f"tasks[{i}]", task, TASKS)
    try:
        eval_task = TASKS.get(config.eval.task)
    except KeyError as err:
        raise ConfigError(f"eval.task: {err}") from None
    leak = getattr(eval_task, "target_leak", None)
    if leak:
        raise ConfigError(
            f"eval.task: {config.eval.task!r} cannot be evaluated: {leak}, so its test "
            "prompts contain the answer; evaluate with a task whose prompt holds only the "
            "history, such as 'seq' (train with it all the same)"
        )
    _check_beams(config)
    _check_candidates(config)
    _check_post_training(config)
    _check_distillation(config)
    _check_packing(config)
    _check_lora(config)
    fusion = config.eval.fusion
    if fusion is not None and fusion.baseline not in config.eval.baselines:
        raise ConfigError(
            f"eval.fusion.baseline: {fusion.baseline!r} is not in eval.baselines "
            f"{config.eval.baselines}; fusion reads that baseline's ranking of the same users"
        )
    try:
        _check_allocations(config)
    except AllocationTooLarge as err:
        raise ConfigError(str(err)) from None
    if config.train.softmax == "sid_tokens" and config.eval.score_mode != "renormalized":
        raise ConfigError(
            "train.softmax: sid_tokens trains a softmax over the SID tokens only; decode "
            "the same way with eval.score_mode: renormalized"
        )


def _check_candidates(config: ExperimentConfig) -> None:

    if not ranks_candidates(config.task_names()):
        return
    cfg = config.candidates
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
    if max(config.eval.ks) > cfg.k:
        raise ConfigError(
            f"eval.ks: largest k ({max(config.eval.ks)}) exceeds candidates.k ({cfg.k}); "
            "a ranking of k candidates has only k places"
        )


def _check_users(config: ExperimentConfig) -> None:
    """User tokenizer and embedder names, and user SID prefixes apart from the items'."""
    users = config.users
    if users.tokenizer is None:
        return
    if config.model.prompt_format == "compact":
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
    items = config.items.tokenizer
    if items.name == "precomputed":  # reads its prefixes from the SIDs: checked at fit
        item_prefixes = set(items.params.get("level_prefixes") or ())
    else:
        item_prefixes = set(level_prefixes_of(items.name, items.params))
    user_prefixes = set(level_prefixes_of(users.tokenizer.name, users.tokenizer.params, user=True))
    shared = sorted(item_prefixes & user_prefixes)
    if shared:
        raise ConfigError(
            f"users.tokenizer.params.level_prefixes: user SID tokens would share the level "
            f"prefixes {shared} with item SID tokens (items.tokenizer), so a user token "
            "could read as an item token; give users other prefixes (default "
            "ua, ub, uc, ...)"
        )


def _check_prompt_format(config: ExperimentConfig) -> None:
    """A scratch model reads no natural text: it needs ``compact``, and neither text in
    its windows nor layers to drop; text options of ``compact`` need ``compact``."""
    model = config.model
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
        _check_compact_tasks(config)
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
        if config.eval.token_understanding.enabled
        else None,
    }
    for key, problem in problems.items():
        if problem:
            raise ConfigError(f"{key}: {problem}")


def _check_compact_tasks(config: ExperimentConfig) -> None:
    other = sorted({t.name for t in config.tasks} - {"seq"} | ({config.eval.task} - {"seq"}))
    if other:
        raise ConfigError(
            f"tasks: the compact format trains next-item prediction only ('seq'); "
            f"{other} need text prompts (model.prompt_format: text)"
        )


def _check_allocations(config: ExperimentConfig) -> None:
    """Values that size an allocation, against this machine's memory (lower bounds; see
    :mod:`semrec.memory_budget`)."""

    model = config.model
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
    tokenizers = [("items.tokenizer", config.items.tokenizer)]
    if config.users.tokenizer is not None:
        tokenizers.append(("users.tokenizer", config.users.tokenizer))
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
        config.eval.num_beams,
        config.eval.batch_size * config.eval.num_beams * max(sid_rows, 1) * FP32_BYTES,
        f"one decoding step's scores (eval.batch_size {config.eval.batch_size} x "
        "num_beams x SID tokens)",
    )
    if model.prompt_format == "compact":
        tokens = model.compact_window * (item_levels + 1 + model.compact_title_tokens)
        require_fits(
            "model.compact_window",
            model.compact_window,
            config.train.batch_size * tokens**2 * FP32_BYTES,
            f"the attention mask of a batch of windows (train.batch_size "
            f"{config.train.batch_size} x ({tokens} tokens)^2)",
        )


def _check_post_training(config: ExperimentConfig) -> None:
    """``train.post`` ranks the whole catalogue by beam search over fixed SIDs."""
    if config.train.post is None:
        return
    if ranks_candidates(config.task_names()):
        raise ConfigError(
            "train.post: post-training rolls out the whole catalogue by beam search; a "
            "candidate-ranking run (a verbalizer eval task) is not supported yet"
        )
    dynamic = _dynamic_tokenizers(config)
    if dynamic:
        raise ConfigError(
            f"train.post: the {' and '.join(dynamic)} tokenizer trains with the LLM, and "
            "post-training a run whose SIDs change is not supported yet; post-train a run "
            "with fixed SIDs"
        )


def _check_distillation(config: ExperimentConfig) -> None:
    """``train.distill`` reads a fitted baseline's scores at every target of compact windows."""
    distill = config.train.distill
    if distill is None:
        return
    teacher = BASELINES.get(distill.teacher) if distill.teacher in BASELINES else None
    if teacher is None or not issubclass(teacher, SequentialRecommender):
        sequential = sorted(
            name for name in BASELINES if issubclass(BASELINES.get(name), SequentialRecommender)
        )
        raise ConfigError(
            f"train.distill.teacher: {distill.teacher!r} is not a sequential recommender "
            f"semrec can fit; choose one of {sequential}"
        )
    if config.model.prompt_format != "compact":
        raise ConfigError(
            "train.distill: distillation reads each target's history from compact windows; "
            f"set model.prompt_format: compact (got {config.model.prompt_format!r})"
        )
    if _dynamic_tokenizers(config):
        raise ConfigError(
            "train.distill: the teacher's soft targets are built on the items' SIDs, which a "
            "tokenizer trained with the LLM changes; distil into a run with fixed SIDs"
        )


def _check_lora(config: ExperimentConfig) -> None:
    """``model.lora``: frozen SID rows must start apart; adapted layers must exist."""
    model = config.model
    frozen_alike = (
        model.lora.enabled
        and model.lora.new_tokens == "frozen"
        and model.embedding_init in ("mean", "mean_resizing")
        and not model.semantic_init.enabled
    )
    if frozen_alike:
        # transformers' mean_resizing draws from N(mean, 1e-9 * covariance): every new row is
        # the mean to ~5 digits; a trial trained at a constant loss of ln(768) for 434 steps
        raise ConfigError(
            f"model.lora.new_tokens: frozen keeps the SID rows as model.embedding_init "
            f"({model.embedding_init!r}) leaves them, all (almost) equal, so the model can "
            "never tell one SID token from another; start them from text "
            "(model.semantic_init: {enabled: true, source: item_texts}) or let them train "
            "(new_tokens: token_indices)"
        )
    layers = model.lora.layers
    if layers is not None and model.keep_layers is not None and max(layers) >= model.keep_layers:
        raise ConfigError(
            f"model.lora.layers: {layers} names a layer the model no longer has "
            f"(model.keep_layers: {model.keep_layers} keeps layers 0-{model.keep_layers - 1})"
        )


def _check_packing(config: ExperimentConfig) -> None:
    """``train.pack_tokens`` packs text pairs tokenized once per epoch."""
    if config.train.pack_tokens is None:
        return
    if config.model.prompt_format == "compact":
        raise ConfigError(
            "train.pack_tokens: packs the text formats' instruction pairs; the compact "
            "format's windows already score many prefixes in one sequence "
            "(model.compact_window sets how many). Leave it unset"
        )
    dynamic = _dynamic_tokenizers(config)
    if dynamic:
        raise ConfigError(
            f"train.pack_tokens: the {' and '.join(dynamic)} tokenizer trains with the LLM, "
            "so its pairs are tokenized at every step, after packing could have sized them; "
            "leave train.pack_tokens unset for this run"
        )


def _dynamic_tokenizers(config: ExperimentConfig) -> list[str]:
    """``items`` and/or ``users`` where that tokenizer trains with the LLM."""
    return [
        where
        for where, cfg in (("items", config.items.tokenizer), ("users", config.users.tokenizer))
        if cfg is not None and issubclass(TOKENIZERS.get(cfg.name), DynamicTokenizer)
    ]


def _check_beams(config: ExperimentConfig) -> None:
    if max(config.eval.ks) > config.eval.num_beams:
        raise ConfigError(
            f"eval.ks: largest k ({max(config.eval.ks)}) exceeds eval.num_beams "
            f"({config.eval.num_beams}); a beam search returns at most num_beams items"
        )


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

"""Which config keys each stage of a run depends on, derived from the schema's stage tags.

Every field of :class:`~semrec.config.schema.ExperimentConfig` is tagged with the stage it
changes (its section's ``field_stages``, or its parent's tag). A stage's fingerprint hashes
the keys whose tags it depends on, so a new field is fingerprinted where its tag says, and
no list of keys is kept by hand. ``semrec fit --resume`` and ``semrec test`` compare the
same keys with the stored config.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel

from semrec.config.schema import ConfigError, ExperimentConfig

#: Each stage tag and what a change of a field so tagged invalidates.
STAGES: dict[str, str] = {
    "data": "which interactions and texts exist: every stage",
    "item_sids": "the item SIDs, and the model trained on them",
    "user_sids": "the user SIDs, and the model trained on them",
    "sequences": "the users' training sequences: the user SIDs (their embedders read them) and the model",
    "model": "the trained model",
    "post": "the post-training after SFT (train.post), and the model it leaves",
    "selection": "which checkpoint the validation during fit keeps",
    "runtime": "nothing learned: where a run computes, how fast, what it logs",
    "evaluation": "the test metrics only",
    "identity": "nothing: the run's name and place",
}


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (also when optional); None for values and lists."""
    if typing.get_origin(annotation) in (list, dict):
        return None
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for option in (annotation, *options):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


@functools.cache
def stage_of_every_field(root: type[BaseModel] = ExperimentConfig) -> dict[str, str]:
    """Every field path of ``root`` (sections included) -> the stage tag it carries."""
    table: dict[str, str] = {}

    def walk(section: type[BaseModel], prefix: str, inherited: str | None) -> None:
        for name, field in section.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            stage = getattr(section, "field_stages", {}).get(name, inherited)
            if stage not in STAGES:
                raise ConfigError(
                    f"config field {path} has {'no stage tag' if stage is None else f'the unknown stage tag {stage!r}'}; "
                    f"tag it in {section.__name__}.field_stages with one of {sorted(STAGES)}"
                )
            table[path] = stage
            child = _section_of(field.annotation)
            if child is not None:
                walk(child, path, stage)

    walk(root, "", None)
    return table


def keys_of(
    stages: frozenset[str] | set[str], root: type[BaseModel] = ExperimentConfig
) -> tuple[str, ...]:
    """The fewest key prefixes covering exactly the fields tagged with one of ``stages``:
    a section whose every field is covered is named whole."""
    table = stage_of_every_field(root)

    def covered(path: str) -> bool:
        below = [p for p in table if p == path or p.startswith(path + ".")]
        return all(table[p] in stages for p in below)

    keys: list[str] = []
    for path, stage in table.items():
        parent = path.rpartition(".")[0]
        if stage in stages and covered(path) and not (parent and covered(parent)):
            keys.append(path)
    return tuple(keys)


#: The item tokenizer's inputs: the data and texts, and ``items:``.
ITEM_TOKENIZER_KEYS = keys_of({"data", "item_sids"})
#: The user tokenizer's inputs: the data, the users' sequences, and ``users:``.
USER_TOKENIZER_KEYS = keys_of({"data", "sequences", "user_sids"})
#: Both tokenizers' own keys (a dynamic tokenizer's warm-up adds the model's).
TOKENIZER_KEYS = keys_of({"data", "item_sids", "user_sids"})
#: What ``semrec test`` may not change: the tokenizers, the model and its training.
MODEL_KEYS = keys_of({"data", "item_sids", "user_sids", "sequences", "model", "post"})
#: Every key that changes the SIDs or the SFT weights, checkpoint selection included.
TRAINING_KEYS = keys_of({"data", "item_sids", "user_sids", "sequences", "model", "selection"})
#: The SFT keys and ``train.post``: what the post-trained weights depend on.
POST_TRAINING_KEYS = keys_of(
    {"data", "item_sids", "user_sids", "sequences", "model", "selection", "post"}
)


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
    "train.post",
    "eval.fusion",
    "train.distill",
    "train.pack_tokens",
    "model.lora.layers",
)


def config_section(config: ExperimentConfig, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The flattened keys of ``config`` under ``prefixes`` (minus :data:`LATE_KEYS` at
    their default): what a stage's fingerprint hashes."""
    flat = flatten_config(config.model_dump(mode="json"))
    defaults = _late_defaults()
    return {
        k: v
        for k, v in flat.items()
        if _selected(k, prefixes) and not (k in defaults and v == defaults[k])
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

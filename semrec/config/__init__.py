"""Typed experiment configuration: YAML in, validated pydantic models out, clear errors.

* :mod:`~semrec.config.schema`: the sections, their defaults, and each field's stage tag;
* :mod:`~semrec.config.stages`: the keys each stage's fingerprint reads, derived from the tags;
* :mod:`~semrec.config.load`: YAML files with ``base:``, ``key=value`` overrides, validation;
* :mod:`~semrec.config.validation`: component names and ``params`` against the registries,
  combinations that cannot work, allocation sizes.

Unknown keys are rejected with the closest valid names. The loading and validation names
are imported on first use: they know every registry, so the packages those registries live
in can import the schema from here without a cycle.
"""

from importlib import import_module

from semrec.config.schema import (
    ITEM_ALIASES,
    SEED_LIMIT,
    AnnotateConfig,
    AnnotatorConfig,
    CandidatesConfig,
    ComponentConfig,
    ConfigError,
    DatasetConfig,
    DistillConfig,
    EmbedderConfig,
    EncoderConfig,
    EvalConfig,
    ExperimentConfig,
    ItemsConfig,
    JointConfig,
    LoraConfig,
    ModelConfig,
    PostTrainConfig,
    ScratchConfig,
    SemanticInitConfig,
    TaskConfig,
    TextConfig,
    TokenizerConfig,
    TokenSemanticsConfig,
    TokenUnderstandingConfig,
    TrainConfig,
    UserEmbedderConfig,
    UsersConfig,
    merge_configs,
    move_item_aliases,
)
from semrec.config.stages import (
    ITEM_TOKENIZER_KEYS,
    LATE_KEYS,
    MODEL_KEYS,
    POST_TRAINING_KEYS,
    STAGES,
    TOKENIZER_KEYS,
    TRAINING_KEYS,
    USER_TOKENIZER_KEYS,
    config_diff,
    config_section,
    flatten_config,
    keys_of,
    stage_of_every_field,
)

_LAZY = {
    "load_config": "semrec.config.load",
    "apply_overrides": "semrec.config.load",
    "parse_override": "semrec.config.load",
    "dump_config": "semrec.config.load",
    "check_components": "semrec.config.validation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ITEM_ALIASES",
    "ITEM_TOKENIZER_KEYS",
    "LATE_KEYS",
    "MODEL_KEYS",
    "POST_TRAINING_KEYS",
    "PostTrainConfig",
    "SEED_LIMIT",
    "STAGES",
    "TOKENIZER_KEYS",
    "TRAINING_KEYS",
    "USER_TOKENIZER_KEYS",
    "AnnotateConfig",
    "DistillConfig",
    "AnnotatorConfig",
    "CandidatesConfig",
    "ComponentConfig",
    "ConfigError",
    "DatasetConfig",
    "EmbedderConfig",
    "EncoderConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ItemsConfig",
    "JointConfig",
    "LoraConfig",
    "ModelConfig",
    "ScratchConfig",
    "SemanticInitConfig",
    "TaskConfig",
    "TextConfig",
    "TokenSemanticsConfig",
    "TokenUnderstandingConfig",
    "TokenizerConfig",
    "TrainConfig",
    "UserEmbedderConfig",
    "UsersConfig",
    "apply_overrides",
    "check_components",
    "config_diff",
    "config_section",
    "dump_config",
    "flatten_config",
    "keys_of",
    "load_config",
    "merge_configs",
    "move_item_aliases",
    "parse_override",
    "stage_of_every_field",
]

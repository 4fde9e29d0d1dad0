"""Every config field is tagged with the stage it changes; the fingerprint key sets follow."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel

from semrec.config import (
    ITEM_TOKENIZER_KEYS,
    MODEL_KEYS,
    STAGES,
    TRAINING_KEYS,
    USER_TOKENIZER_KEYS,
    ConfigError,
    ExperimentConfig,
    config_section,
    keys_of,
    stage_of_every_field,
)


def test_every_config_field_carries_a_known_stage_tag() -> None:
    table = stage_of_every_field()
    assert set(ExperimentConfig.field_stages) == set(ExperimentConfig.model_fields)
    assert {path: stage for path, stage in table.items() if stage not in STAGES} == {}
    # a few fields whose stage is easy to get wrong
    assert table["train.num_threads"] == "runtime"
    assert table["train.lr"] == "model"
    assert table["eval.num_beams"] == "selection"
    assert table["eval.batch_size"] == "evaluation"
    assert table["dataset.text.template"] == "data"
    assert table["dataset.max_history"] == "sequences"
    assert table["users.tokenizer.params"] == "user_sids"


class _Child(BaseModel):
    field_stages: ClassVar[dict[str, str]] = {"threads": "runtime"}
    lr: float = 1.0
    threads: int = 1


class _Root(BaseModel):
    field_stages: ClassVar[dict[str, str]] = {"seed": "data", "train": "model"}
    seed: int = 0
    train: _Child = _Child()
    optional: _Child | None = None


def test_a_field_without_a_stage_tag_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="optional has no stage tag"):
        stage_of_every_field(_Root)


def test_the_keys_of_a_stage_are_the_fewest_prefixes_covering_its_fields() -> None:
    class Tagged(_Root):
        field_stages: ClassVar[dict[str, str]] = {**_Root.field_stages, "optional": "model"}

    assert stage_of_every_field(Tagged)["train.threads"] == "runtime"
    assert keys_of({"data", "model"}, Tagged) == ("seed", "train.lr", "optional.lr")
    assert keys_of({"data", "model", "runtime"}, Tagged) == ("seed", "train", "optional")
    assert keys_of({"runtime"}, Tagged) == ("train.threads", "optional.threads")


def test_fingerprints_read_training_keys_and_ignore_where_a_run_computes() -> None:
    base = ExperimentConfig()
    moved = base.model_copy(deep=True)
    moved.train.num_threads = 7
    moved.train.devices = 2
    moved.eval.batch_size = 3
    for keys in (ITEM_TOKENIZER_KEYS, USER_TOKENIZER_KEYS, MODEL_KEYS, TRAINING_KEYS):
        assert config_section(base, keys) == config_section(moved, keys)
    moved.eval.num_beams = 30
    assert config_section(base, MODEL_KEYS) == config_section(moved, MODEL_KEYS)
    assert config_section(base, TRAINING_KEYS) != config_section(moved, TRAINING_KEYS)
    moved.items.tokenizer.params = {"levels": 2}
    assert config_section(base, ITEM_TOKENIZER_KEYS) != config_section(moved, ITEM_TOKENIZER_KEYS)
    assert config_section(base, USER_TOKENIZER_KEYS) == config_section(moved, USER_TOKENIZER_KEYS)

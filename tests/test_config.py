"""Experiment config: YAML + overrides in, validated models out, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from semrec.config import ConfigError, ExperimentConfig, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "tiny.yaml"


def write_yaml(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None = None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---------------------------------------------------------------- loading files


def assert_stated_values_kept(raw: dict, dumped: dict, where: str = "") -> None:
    for key, value in raw.items():
        if isinstance(value, dict) and key != "params":
            assert_stated_values_kept(value, dumped[key], f"{where}{key}.")
        else:
            assert dumped[key] == value, f"{where}{key}"


def test_tiny_experiment_loads_with_defaults_filled_in() -> None:
    cfg = load_config(TINY)
    raw = yaml.safe_load(TINY.read_text())
    dumped = cfg.model_dump(mode="json")
    # every value the file states arrives unchanged ...
    assert_stated_values_kept(raw, dumped)
    assert cfg.model.backbone == "tiny" and cfg.items.tokenizer.name == "rqkmeans"
    # ... and every section it leaves out is the typed default
    defaults = ExperimentConfig().model_dump(mode="json")
    for key in set(defaults) - set(raw):
        assert dumped[key] == defaults[key], key
    assert dumped["eval"]["ks"] == defaults["eval"]["ks"] == [1, 5, 10]
    assert cfg.resolved_run_dir() == Path("runs/tiny")


def test_name_defaults_to_file_stem_but_an_explicit_name_wins(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "", "my_run.yaml")).name == "my_run"
    assert load_config(write_yaml(tmp_path, "name: other\n", "my_run.yaml")).name == "other"


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    message = config_error(missing)
    assert str(missing) in message and "does not exist" in message


def test_non_mapping_yaml_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- train\n- eval\n")
    message = config_error(path)
    assert str(path) in message and "mapping" in message


def test_malformed_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "train: {epochs: 2\n")
    message = config_error(path)
    assert str(path) in message and "not valid YAML" in message


def test_dumped_config_loads_back_identically(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["train.epochs=3", "eval.ks=[1,2]"])
    again = load_config(write_yaml(tmp_path, dump_config(cfg)))
    assert again == cfg


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("yaml_text", "key", "suggestion"),
    [
        ("trian: {lr: 0.1}\n", "trian", "'train'"),
        ("train: {epocs: 2}\n", "train.epocs", "'epochs'"),
        ("model: {lora: {alpah: 4}}\n", "model.lora.alpah", "'alpha'"),
        ("dataset: {text: {fieldz: [title]}}\n", "dataset.text.fieldz", "'fields'"),
        ("tasks: [{name: seq, wieght: 2}]\n", "tasks[0].wieght", "'weight'"),
    ],
)
def test_unknown_key_names_key_and_suggests_closest(
    tmp_path: Path, yaml_text: str, key: str, suggestion: str
) -> None:
    path = write_yaml(tmp_path, yaml_text)
    message = config_error(path)
    assert str(path) in message
    assert f"{key}: unknown key" in message
    assert f"did you mean {suggestion}" in message


def test_unknown_key_from_an_override_is_named() -> None:
    message = config_error(TINY, ["train.epocs=2"])
    assert "train.epocs: unknown key; did you mean 'epochs'" in message
    # the valid keys of that section are listed
    assert "valid keys here: epochs," in message


def test_every_error_is_reported_at_once() -> None:
    message = config_error(None, ["train.epocs=2", "train.lr=-1"])
    assert "train.epocs" in message and "train.lr" in message


# ---------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=-1", "train.lr"),
        ("train.precision=16", "train.precision"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.lora.dropout=1.0", "model.lora.dropout"),
        ("model.lora.new_tokens=all", "model.lora.new_tokens"),
        ("eval.ks=[0, 5]", "eval.ks"),
        ("eval.ks=[]", "eval.ks"),
        ("tasks=[{name: seq, weight: 0}]", "tasks[0].weight"),
    ],
)
def test_invalid_value_names_the_key(override: str, key: str) -> None:
    message = config_error(TINY, [override])
    assert f"{key}: " in message
    # the offending value is echoed back
    assert "(got " in message


def test_ks_larger_than_num_beams_is_rejected_but_equal_is_fine() -> None:
    message = config_error(TINY, ["eval.num_beams=10", "eval.ks=[1, 11]"])
    assert "eval.ks" in message and "num_beams" in message and "11" in message
    assert load_config(TINY, ["eval.num_beams=10", "eval.ks=[1, 10]"]).eval.ks == [1, 10]


# ---------------------------------------------------------------- registry components


def test_unknown_tokenizer_lists_registry_and_suggests() -> None:
    message = config_error(TINY, ["tokenizer.name=rqkmean"])
    assert message.startswith("items.tokenizer.name: unknown tokenizer 'rqkmean'")
    assert "did you mean 'rqkmeans'" in message
    assert "registered:" in message and "rqkmeans" in message


def test_unknown_task_lists_registry() -> None:
    message = config_error(TINY, ["tasks=[{name: seq}, {name: sequential}]"])
    assert message.startswith("tasks[1].name: unknown task 'sequential'")
    assert "registered:" in message and "seq" in message


def test_unknown_tokenizer_param_is_named_with_suggestion() -> None:
    message = config_error(TINY, ["tokenizer.params.levls=3"])
    assert message.startswith("items.tokenizer.params.levls: 'rqkmeans' has no parameter 'levls'")
    assert "did you mean 'levels'" in message
    assert "accepted: levels, codebook_size" in message


def test_unknown_task_param_is_named() -> None:
    message = config_error(TINY, ["tasks=[{name: seq, params: {templats: [a]}}]"])
    assert "tasks[0].params.templats" in message and "'templates'" in message


def test_valid_component_params_pass() -> None:
    cfg = load_config(TINY, ["tokenizer.params.levels=3", "tasks=[{name: seq, params: {}}]"])
    assert cfg.items.tokenizer.params == {"levels": 3, "codebook_size": 8}


# ---------------------------------------------------------------- overrides


def test_overrides_are_yaml_typed_and_beat_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "dataset: {max_history: 5}\ntrain: {epochs: 30}\n")
    cfg = load_config(
        path,
        [
            "train.epochs=2",  # the file says 30
            "train.lr=0.01",
            "eval.ks=[10, 1, 5, 5]",
            "model.system_prompt=null",
            "model.use_chat_template=true",
            "model.lora.target_modules=[q_proj, v_proj]",
            "name=renamed",
            "dataset.text.fields=[title, year]",  # a section absent from the file
        ],
    )
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 0.01
    assert cfg.eval.ks == [1, 5, 10]  # sorted, duplicates dropped
    assert cfg.model.system_prompt is None
    assert cfg.model.use_chat_template is True
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.name == "renamed"
    assert cfg.dataset.text.fields == ["title", "year"]
    # untouched keys keep the file's values
    assert cfg.dataset.max_history == 5


def test_overrides_without_a_file_start_from_defaults() -> None:
    cfg = load_config(None, ["seed=7"])
    assert cfg.seed == 7
    assert cfg == ExperimentConfig(seed=7)


def test_override_indexes_into_a_list_from_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "tasks:\n  - {name: seq}\n  - {name: seq, weight: 0.5}\n")
    cfg = load_config(path, ["tasks.1.weight=2", "tasks.0.params.templates=['x {history}']"])
    assert [t.weight for t in cfg.tasks] == [1.0, 2.0]
    assert cfg.tasks[0].params == {"templates": ["x {history}"]}


def test_override_list_index_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "tasks:\n  - {name: seq}\n")
    message = config_error(path, ["tasks.3.weight=2"])
    assert "tasks.3.weight=2" in message


def test_override_indexes_into_the_default_task_list() -> None:
    # tiny.yaml does not list tasks; the default is [seq], so tasks.0 exists
    cfg = load_config(TINY, ["tasks.0.weight=2"])
    assert [(t.name, t.weight) for t in cfg.tasks] == [("seq", 2.0)]


@pytest.mark.parametrize("override", ["train", "=3", "train.epochs.deeper=3"])
def test_malformed_override_is_a_config_error(override: str) -> None:
    message = config_error(TINY, [override])
    assert override in message


def test_override_with_invalid_yaml_value_is_a_config_error() -> None:
    message = config_error(TINY, ["eval.ks=[1, 5"])
    assert "eval.ks=[1, 5" in message


def test_unquoted_precision_32_is_accepted() -> None:
    assert load_config(TINY, ["train.precision=32"]).train.precision == "32"


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_experiment_config_loads(path):
    assert load_config(path).name == path.stem

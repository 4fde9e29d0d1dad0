"""Reading an experiment config: YAML files with ``base:`` chains, ``key=value`` overrides,
validation with errors that name the key, and writing a resolved config back."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from semrec.config.schema import (
    ITEM_ALIASES,
    ConfigError,
    ExperimentConfig,
    merge_configs,
    move_item_aliases,
)
from semrec.config.validation import _did_you_mean, check_components


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
    check_components(config)
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


def dump_config(config: ExperimentConfig) -> str:
    """The config as YAML, every default filled in (what a run directory stores)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

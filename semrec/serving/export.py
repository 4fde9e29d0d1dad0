"""``semrec export``: a finished run as a directory that serves without the run or its config.

::

    DIR/
      semrec.json     format version, semrec version, backbone, prompt format and template,
                      decoding settings (eval: num_beams, score_mode, ...), what was exported
      adapter/        PEFT save_pretrained of the LoRA run (embedding layers included, so
                      the SID rows travel with it): PeftModel.from_pretrained(base, DIR/adapter)
      model/          or: the merged model (--merge), or the full model of a run with LoRA
                      disabled: AutoModelForCausalLM.from_pretrained(DIR/model)
      tokenizer/      the Hugging Face tokenizer with the SID tokens
      catalogue.json  per item, in trie order: its id, SID tokens and their token ids

The SIDs are the run's current ones: a tokenizer trained with the LLM (TTDS) is exported
with the codes of the exported weights, the catalogue includes the items of
``semrec add-items``. Before anything is written, the prompts the export will build
(:func:`~semrec.serving.recommender.exported_prompts`) are checked against the run's own
evaluation prompts. A new directory appears whole or not at all. An existing non-empty
``--out`` is refused, and so is an earlier export unless ``overwrite`` (``--overwrite``)
says to replace it: then only the entries an export writes are replaced (the manifest is
removed first and written last, so a replacement cut short is never read as an export),
and files the user put there are kept.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semrec.artifacts import atomic_dir, read_json, write_json
from semrec.config import ExperimentConfig
from semrec.data.split import Example
from semrec.decoding.trie import PAD
from semrec.pipeline.trained import TrainedRun, as_trained_run
from semrec.serving.recommender import (
    CATALOGUE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MANIFEST,
    exported_prompts,
)
from semrec.tasks import TASKS


class ExportError(ValueError):
    """The export cannot be written as asked; nothing was written."""


@dataclass(frozen=True)
class ExportSummary:
    """What ``semrec export`` wrote."""

    path: Path
    weights: str  # adapter | merged | full
    num_items: int
    note: str


def eval_task_spec(config: ExperimentConfig) -> dict[str, Any]:
    """Name and params of the task that builds the evaluation prompts (as the run builds it)."""
    name = config.eval.task
    params = next((dict(t.params) for t in config.tasks if t.name == name), {})
    return {"name": name, "params": params}


def check_exportable(config: ExperimentConfig, *, merge: bool = False) -> None:
    """Raise ``NotImplementedError`` naming what an export of this run cannot serve."""
    task = eval_task_spec(config)
    if "candidates" in TASKS.get(task["name"]).requires:
        raise NotImplementedError(
            f"eval task {task['name']!r} ranks retrieved candidates with a verbalizer "
            "(candidate ranking); semrec export serves runs that generate SIDs over the "
            "whole catalogue"
        )
    if task["params"].get("user_sid_in_prompt"):
        raise NotImplementedError(
            f"eval task {task['name']!r} puts the user's SID into the prompt "
            "(user_sid_in_prompt); an exported recommender serves histories, not known users"
        )
    if merge and config.model.quantization is not None:
        raise NotImplementedError(
            f"--merge of a QLoRA run ({config.model.quantization}): merging would re-quantise "
            "the 4-bit weights; export the adapter (without --merge)"
        )


def is_export(path: Path) -> bool:
    """Whether ``path`` holds a semrec export (of any version)."""
    try:
        return read_json(path / MANIFEST).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


#: what an export writes in its directory (anything else there is the user's)
EXPORT_ENTRIES = (MANIFEST, CATALOGUE, "tokenizer", "adapter", "model")


def check_target(out: Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that exists and is not empty, unless it holds an earlier export
    and ``overwrite`` is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a directory")
    if not any(out.iterdir()):
        return
    if not is_export(out):
        raise ExportError(
            f"--out {out} is not empty and holds no previous export ({MANIFEST}); nothing "
            "was written. Choose a new or empty directory"
        )
    if not overwrite:
        raise ExportError(
            f"--out {out} holds an earlier export; nothing was written. Pass --overwrite to "
            "replace it (files an export does not write are kept), or choose a new directory"
        )


def _publish(staged: Path, out: Path) -> None:
    """Move the export ``staged`` beside ``out`` into place: the whole directory when
    ``out`` does not exist, else entry by entry over an empty dir or an earlier export."""
    if not out.exists():
        os.replace(staged, out)
        return
    (out / MANIFEST).unlink(missing_ok=True)  # first: a half-replaced export is no export
    for name in EXPORT_ENTRIES:
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    for entry in sorted(staged.iterdir(), key=lambda path: path.name == MANIFEST):
        os.replace(entry, out / entry.name)  # the manifest last
    staged.rmdir()


def export_run(
    run: TrainedRun,
    out: str | Path,
    *,
    merge: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> ExportSummary:
    """Export the trained ``run`` (:class:`~semrec.pipeline.trained.TrainedRun`) into ``out``
    (``overwrite``: replace an earlier export there; see the module docs)."""
    run = as_trained_run(run)
    from semrec.models.backbone import describe

    config = run.config
    check_exportable(config, merge=merge)
    out = Path(out)
    check_target(out, overwrite)
    model, datamodule, hf_tokenizer = run.model, run.datamodule, run.hf_tokenizer
    item_ids, _ = run.catalogue()
    trie = run.trie(include_added=True)
    token_ids = [[t for t in row if t != PAD] for row in trie.sequences.tolist()]
    sid_tokens = [hf_tokenizer.convert_ids_to_tokens(ids) for ids in token_ids]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    prefix = getattr(datamodule.training, "prefix", [])
    manifest = _manifest(run, describe(base), len(item_ids), prefix)
    manifest["backbone"]["embedding_rows"] = base.get_input_embeddings().weight.shape[0]
    staged = out.parent / f".{out.name}.export"
    with atomic_dir(staged) as tmp:
        manifest["weights"] = _write_weights(model, tmp, merge)
        hf_tokenizer.save_pretrained(str(tmp / "tokenizer"))
        rows = zip(item_ids, sid_tokens, token_ids)
        write_json(
            tmp / CATALOGUE,
            {"items": [{"id": i, "sid": s, "token_ids": t} for i, s, t in rows]},
        )
        manifest["prompt"]["example"] = _check_prompts(
            tmp, manifest, datamodule, item_ids, sid_tokens, token_ids
        )
        write_json(tmp / MANIFEST, manifest)
    try:
        _publish(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    weights = manifest["weights"]
    echo(
        f"[export] {run.run_dir} -> {out}: {weights['kind']} weights in {out / weights['path']}, "
        f"tokenizer, {len(item_ids)} items"
    )
    echo(f"[export] {weights['note']}")
    return ExportSummary(out, weights["kind"], len(item_ids), weights["note"])


def _semrec_version() -> str:
    try:
        return importlib.metadata.version("semrec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _manifest(
    run: TrainedRun, backbone: dict[str, Any], num_items: int, prefix: list[int]
) -> dict[str, Any]:
    config = run.config
    model_cfg = config.model
    prompt: dict[str, Any] = {
        "format": model_cfg.prompt_format,
        "max_history": config.dataset.max_history,
    }
    if model_cfg.prompt_format == "text":
        spec = eval_task_spec(config)
        task = TASKS.get(spec["name"])(**spec["params"])
        prompt.update(
            task=spec,
            template=task.templates[0],
            history_separator=", ",
            use_chat_template=model_cfg.use_chat_template,
            system_prompt=model_cfg.system_prompt,
            max_prompt_tokens=model_cfg.max_prompt_tokens,
        )
    else:
        if model_cfg.compact_title_tokens:
            raise NotImplementedError(
                "model.compact_title_tokens: an export does not carry the item texts its "
                "prompts need; export a run whose compact items are SIDs only"
            )
        prompt["layout"] = "prefix, then <sep> + SID tokens for each history item, then <sep>"
        prompt["prefix_ids"] = list(prefix)
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "semrec_version": _semrec_version(),
        "run": {
            "name": config.name,
            "seed": config.seed,
            "source": str(run.run_dir),
            "train_fingerprint": run.train_fingerprint(),
        },
        "backbone": {
            "source": model_cfg.backbone,
            "quantization": model_cfg.quantization,
            **backbone,
        },
        "model": model_cfg.model_dump(mode="json"),
        "prompt": prompt,
        "sids": {
            "tokenizer": config.items.tokenizer.name,
            "dynamic": bool(run.dynamic_tokenizers),
            "note": "the codes of the exported weights (fixed from now on)",
        },
        "num_items": num_items,
        "default_k": max(config.eval.ks),
        "decoding": {
            "task": config.eval.task,
            "num_beams": config.eval.num_beams,
            "score_mode": config.eval.score_mode,
            "precision": config.eval.precision,
            "ks": list(config.eval.ks),
            "exclude_history": True,
        },
    }


def _write_weights(model, directory: Path, merge: bool) -> dict[str, str]:
    """Save the weights under ``directory``; returns the manifest's ``weights`` entry."""
    from peft import PeftModel

    from semrec.models.backbone import without_residual_dropout

    if isinstance(model, PeftModel):
        if merge:
            model.merge_and_unload().save_pretrained(str(directory / "model"))
            note = "LoRA merged into the backbone: AutoModelForCausalLM.from_pretrained(DIR/model)"
            return {"kind": "merged", "path": "model", "note": note}
        # embedding layers too: the SID rows (and their init) travel with the adapter
        model.save_pretrained(str(directory / "adapter"), save_embedding_layers=True)
        note = (
            "LoRA adapter (PEFT): PeftModel.from_pretrained(base, DIR/adapter), base = the "
            "run's backbone with its embeddings resized to backbone.embedding_rows"
        )
        return {"kind": "adapter", "path": "adapter", "note": note}
    without_residual_dropout(model).save_pretrained(str(directory / "model"))
    note = (
        "LoRA is disabled in this run (all weights were trained): exported the full model"
        + (", nothing to merge" if merge else "")
        + "; AutoModelForCausalLM.from_pretrained(DIR/model)"
    )
    return {"kind": "full", "path": "model", "note": note}


def _check_prompts(
    directory: Path,
    manifest: dict[str, Any],
    datamodule,
    item_ids: list[str],
    sid_tokens: list[list[str]],
    token_ids: list[list[int]],
) -> dict[str, Any] | None:
    """Compare the export's prompts for a few evaluation users with the run's own; returns
    one of them as an example for ``semrec.json``."""
    from transformers import AutoTokenizer

    examples = (datamodule.test_examples or datamodule.valid_examples)[:8]
    if not examples:
        return None
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    prompts = exported_prompts(manifest, tokenizer, item_ids, sid_tokens, token_ids)
    training = datamodule.training
    expected = training.collate_prompts(training.eval_prompts(examples))
    served = [Example(-1, example.history, -1) for example in examples]
    built = prompts.collate_prompts(prompts.eval_prompts(served))
    for row in range(len(examples)):
        want = expected["input_ids"][row][expected["attention_mask"][row].bool()]
        got = built["input_ids"][row][built["attention_mask"][row].bool()]
        if not torch.equal(want, got):
            raise NotImplementedError(
                f"the exported prompt differs from the run's (eval task "
                f"{manifest['decoding']['task']!r}): run {tokenizer.decode(want)!r}, "
                f"export {tokenizer.decode(got)!r}"
            )
    first = built["input_ids"][0][built["attention_mask"][0].bool()]
    return {
        "history": [item_ids[i] for i in examples[0].history],
        "text": tokenizer.decode(first),
    }

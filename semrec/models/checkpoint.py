"""Saving and restoring only the trained parameters (LoRA, SID rows), best-by-validation.

A full Lightning checkpoint of SmolLM2 would store the frozen 135M base on every save; the
trainable part is ~3M parameters. ``trainable.safetensors`` holds exactly the parameters
with ``requires_grad`` (LoRA matrices, PEFT's trainable SID rows, or everything when LoRA is
off), keyed by their names in the wrapped model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from semrec.artifacts import atomic_dir, umask_mode, write_json

WEIGHTS_FILE = "trainable.safetensors"


class CheckpointMismatchError(RuntimeError):
    """Saved weights do not fit the model they are loaded into."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def save_trained_weights(
    model: nn.Module,
    directory: Path,
    metrics: dict | None = None,
    tokenizers: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write the trainable parameters (and the metrics they scored) to ``directory``.

    ``tokenizers`` (name -> tokenizer trained with the LLM) are saved with them, each to
    ``directory/<name>``: their codes belong to these weights.
    """
    state = trainable_state(model)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        write_json(tmp / "info.json", {"parameters": len(state), "metrics": metrics or {}})
        for name, tokenizer in (tokenizers or {}).items():
            tokenizer.save(tmp / name)
            write_json(tmp / name / "stats.json", tokenizer.stats())


def load_trained_tokenizers(tokenizers: Mapping[str, Any], directory: Path) -> None:
    """Restore the tokenizers :func:`save_trained_weights` saved with the weights."""
    for name, tokenizer in tokenizers.items():
        path = Path(directory) / name
        if not path.is_dir():
            raise CheckpointMismatchError(
                f"{path} does not exist: the adapter was saved without its {name!r} tokenizer"
            )
        tokenizer.load_state_from(path)


def load_trained_weights(model: nn.Module, directory: Path) -> None:
    """Load ``trainable.safetensors`` into ``model``; every saved tensor must match by name and shape."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointMismatchError(f"{path} does not exist; was training finished?")
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointMismatchError(f"{path} is not a readable safetensors file: {err}") from None
    params = dict(model.named_parameters())
    missing = sorted(set(saved) - set(params))
    if missing:
        raise CheckpointMismatchError(
            f"{path}: {len(missing)} saved tensors have no counterpart in the model "
            f"(e.g. {missing[:3]}); the run was trained with a different model or LoRA config"
        )
    expected = {n for n, p in params.items() if p.requires_grad}
    absent = sorted(expected - set(saved))
    if absent:
        raise CheckpointMismatchError(
            f"{path}: no saved values for {len(absent)} trainable tensors (e.g. {absent[:3]})"
        )
    for name, tensor in saved.items():  # check everything before touching the model
        if params[name].shape != tensor.shape:
            raise CheckpointMismatchError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, model expects "
                f"{tuple(params[name].shape)} (different vocabulary or LoRA rank?)"
            )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].dtype))


class BestAdapterCheckpoint(L.Callback):
    """Saves the trainable weights whenever ``monitor`` (e.g. ``val/ndcg@10``) improves
    (with ``tokenizers``: their state too, see :func:`save_trained_weights`).

    It acts in ``on_validation_end``, which Lightning calls after every
    ``on_validation_epoch_end`` (callbacks first, then the LightningModule, where the
    validation metrics are logged): the score it compares and the weights it saves come from
    the same validation. Its best score travels in full Lightning checkpoints, so a resumed
    run keeps comparing against the best validation before the crash.
    """

    def __init__(
        self,
        directory: Path,
        monitor: str | None,
        tokenizers: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.tokenizers = dict(tokenizers or {})
        self.best: float | None = None
        self.best_metrics: dict[str, float] | None = None
        self.saved = False

    def save(self, model: nn.Module, metrics: dict | None = None) -> None:
        save_trained_weights(model, self.directory, metrics, self.tokenizers)
        self.saved = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every process sees the same (gathered) metrics; only global rank zero writes
        if self.monitor is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"BestAdapterCheckpoint: validation logged no {self.monitor!r} "
                f"(logged: {sorted(trainer.callback_metrics)})"
            )
        value = float(value)
        if self.best is None or value > self.best:
            self.best = value
            self.best_metrics = dict(getattr(pl_module, "last_metrics", {}).get("val", {}))
            if trainer.is_global_zero:
                self.save(pl_module.model, {self.monitor: value, "step": trainer.global_step})
            else:
                self.saved = True  # by rank zero

    def state_dict(self) -> dict:
        return {"best": self.best, "best_metrics": self.best_metrics, "saved": self.saved}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
        self.best_metrics = state_dict.get("best_metrics")
        self.saved = bool(state_dict.get("saved")) and (self.directory / WEIGHTS_FILE).is_file()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: a temp file renamed into place, so a run
    killed while saving keeps its previous checkpoint whole."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.chmod(tmp, umask_mode())  # Lightning's writer sets its own mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

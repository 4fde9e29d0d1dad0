"""A run directory's bookkeeping: its format, the stage fingerprints, the stored config.

:class:`RunDirectory` checks that a directory can be written (or, for a read-only run, that
it was made by this run-directory format), records in ``stages.json`` the fingerprint of
each finished stage so an unchanged stage is reused, and refuses a config that differs
from the stored one in keys that would change what was trained.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semrec.artifacts import atomic_write, read_json, write_json
from semrec.config.load import dump_config, load_config
from semrec.config.schema import ExperimentConfig
from semrec.config.stages import config_diff
from semrec.errors import RunError

__all__ = [
    "ADDED_ITEMS_FILE",
    "CHECKPOINTS",
    "DEPENDENTS",
    "RUN_FORMAT",
    "RunDirectory",
    "RunError",
    "added_items",
]


# Version of the run-directory layout; stages.json records it. Bump it when stored
# artifacts change meaning so an older run directory is refused, not misread.
# 3: the items:/users: config sections (stage fingerprints hash their keys).
RUN_FORMAT = 3
CHECKPOINTS = "checkpoints"
DEPENDENTS = {
    "tokenizer": ("train", "post"),
    "user_tokenizer": ("train", "post"),
    "train": ("post",),
    "post": (),
}
#: What the tokenizer and train stages leave in a run directory (a finished SFT).
TRAINED_FILES = (
    "tokenizer",
    "user_tokenizer",
    "adapter",
    "hf_tokenizer",
    "valid_metrics.json",
    "config.yaml",
)
# Items given SIDs after training (``semrec add-items``), which the run's catalogue includes.
ADDED_ITEMS_FILE = "added_items.json"


def added_items(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records ``semrec add-items`` appended to the run in ``run_dir`` (oldest first)."""
    path = Path(run_dir) / ADDED_ITEMS_FILE
    return read_json(path)["items"] if path.is_file() else []


class RunDirectory:
    """The files of one run: ``stages.json``, ``config.yaml``, ``checkpoints/``, ``hf_tokenizer/``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._check_format()

    @property
    def stages_file(self) -> Path:
        return self.path / "stages.json"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def check_writable(self) -> None:
        """Fail before any work if the directory cannot be created or written."""
        existing = self.path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            problem = f"{existing} is a file, not a directory"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is read-only"
        else:
            return
        raise RunError(f"run directory {self.path} is not writable: {problem}")

    def _check_format(self) -> None:
        """Refuse a run directory written by another semrec run-directory format."""
        if not self.stages_file.exists():
            return
        try:
            found = read_json(self.stages_file).get("format")
        except (OSError, ValueError, AttributeError) as err:
            raise RunError(f"{self.stages_file} is not a readable stages file: {err}") from None
        if found != RUN_FORMAT:
            found = found or 1
            newer = isinstance(found, int) and found > RUN_FORMAT
            origin = (
                "a newer semrec: upgrade semrec to use it"
                if newer
                else "an older semrec: rerun `semrec fit` with a new --run-dir"
            )
            raise RunError(
                f"{self.stages_file}: run directory format {found!r} (written by {origin}); "
                f"this semrec reads and writes format {RUN_FORMAT} (nothing in this directory "
                "was changed)"
            )

    def stages(self) -> dict[str, Any]:
        return read_json(self.stages_file) if self.stages_file.exists() else {}

    def stage_done(self, name: str, fingerprint: str) -> bool:
        return self.stages().get(name) == fingerprint

    def mark_stage(self, name: str, fingerprint: str) -> None:
        """Record ``name`` as finished with ``fingerprint``; the stages built on it are forgotten."""
        stages = self.stages()
        stages["format"] = RUN_FORMAT
        stages[name] = fingerprint
        for later in DEPENDENTS[name]:
            stages.pop(later, None)
        write_json(self.stages_file, stages)

    def write_config(self, config: ExperimentConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.config_file) as fh:
            fh.write(dump_config(config))

    def stored_config(
        self,
        config: ExperimentConfig,
        keys: tuple[str, ...],
        *,
        refusal: str,
        advice: str,
    ) -> ExperimentConfig:
        """The config the directory was made with; refuses if ``config`` differs in ``keys``."""
        if not self.config_file.is_file():
            raise RunError(f"{self.path} has no config.yaml: not a semrec run directory")
        stored = load_config(self.config_file)
        diff = config_diff(stored, config, keys)
        if diff:
            raise RunError(f"{refusal}:\n  " + "\n  ".join(diff) + f"\n{advice}")
        return stored

    def latest_checkpoint(self) -> Path:
        """The newest full training checkpoint (for ``fit --resume``)."""
        candidates = sorted(self.checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not self.config_file.is_file() or not candidates:
            raise RunError(
                f"--resume: {self.path} has no training checkpoint to resume from "
                f"(looked for {self.checkpoints}/*.ckpt); run `semrec fit` without --resume"
            )
        return candidates[-1]

    def check_vocabulary(self, hf_tokenizer) -> None:
        """Refuse trained weights whose token ids no longer mean what they meant in training.

        The weights were trained with ``hf_tokenizer/``; the tokenizer built now must map
        every token to the same id (a changed backbone file or semrec version could
        renumber them, e.g. the scratch backbone's specials).
        """
        from transformers import AutoTokenizer

        saved_dir = self.path / "hf_tokenizer"
        if not saved_dir.is_dir():
            return
        saved = AutoTokenizer.from_pretrained(str(saved_dir)).get_vocab()
        built = hf_tokenizer.get_vocab()
        if saved != built:
            changed = sorted(t for t in set(saved) | set(built) if saved.get(t) != built.get(t))
            raise RunError(
                f"{saved_dir}: the model was trained with another vocabulary than the one "
                f"built now ({len(changed)} tokens differ, e.g. "
                + ", ".join(f"{t!r}: {saved.get(t)} -> {built.get(t)}" for t in changed[:3])
                + "); the backbone or semrec changed since training. Retrain with `semrec fit` "
                "into a new --run-dir"
            )

    def take_finished_training(self, source: RunDirectory) -> bool:
        """Start this (new) directory from the finished tokenizers and SFT of ``source``.

        Copies what those stages wrote (``TRAINED_FILES``) and their fingerprints, nothing
        else: the stages built on them (post-training, the test) run here. The fingerprints
        are checked again when the stages run, so a copy that does not fit this config is
        retrained, never misused. Returns False (and copies nothing) when ``source`` has no
        finished training or this directory already has stages.
        """
        import shutil

        finished = source.stages()
        if "train" not in finished or self.stages_file.exists():
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        for name in TRAINED_FILES:
            origin = source.path / name
            if origin.is_dir():
                shutil.copytree(origin, self.path / name)
            elif origin.is_file():
                shutil.copy2(origin, self.path / name)
        kept = {k: v for k, v in finished.items() if k in ("format", *DEPENDENTS) and k != "post"}
        write_json(self.stages_file, kept)  # last: the copy counts only once it is whole
        return True

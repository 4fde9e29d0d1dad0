"""Golden values that a refactor must not move (issue #27 writes them before any code moves).

- the stage keys of every ``experiments/*.yaml``: the hash of the config section each stage
  fingerprints (tokenizer, user tokenizer, training), so a reorganised config keeps every
  existing run directory valid;
- each tokenizer's codes for a fixed seed and fixed inputs;
- the tiny run's metrics (``tests/test_pipeline.py``, on the run its other tests share).

The values live in ``tests/golden/*.json``. They change only on purpose: rerun with
``SEMREC_UPDATE_GOLDEN=1`` and say in the commit why (a changed stage hash also needs a run
format bump in ``semrec/run_directory.py``).

Codes and metrics come from float arithmetic: the inputs are built with wide margins
between levels so that rounding differences between CPUs (other vector units, other BLAS
blocking) cannot flip a code; on a CPU other than the recording one, a trained tokenizer may still
move ``OTHER_CPU_SLACK`` items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from semrec.artifacts import content_hash
from semrec.config import (
    ITEM_TOKENIZER_KEYS,
    TRAINING_KEYS,
    USER_TOKENIZER_KEYS,
    config_section,
    load_config,
)
from semrec.machine import cpu_name
from semrec.tokenizers import TOKENIZERS

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("SEMREC_UPDATE_GOLDEN") == "1"


def check_golden(name: str, actual: dict) -> None:
    """``actual`` equals ``tests/golden/<name>.json`` (rewritten under SEMREC_UPDATE_GOLDEN=1)."""
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    changed = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    assert not changed, f"{path.name}: golden values changed for {changed}"


# --------------------------------------------------------------------------- stage keys

STAGES = {
    "tokenizer": ITEM_TOKENIZER_KEYS,
    "user_tokenizer": USER_TOKENIZER_KEYS,
    "train": TRAINING_KEYS,
}


def test_the_stage_keys_of_every_experiment_are_unchanged() -> None:
    actual = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        config = load_config(path)
        for stage, keys in STAGES.items():
            actual[f"{path.stem}/{stage}"] = content_hash(stage, config_section(config, keys))
    assert len(actual) == 3 * len(list((ROOT / "experiments").glob("*.yaml")))
    check_golden("stage_keys", actual)


# --------------------------------------------------------------------------- tokenizer codes


def separable_embeddings(n_items: int = 64, dim: int = 16) -> torch.Tensor:
    """Items = a coarse centre (4, far apart) + a fine centre (4, closer) + a little noise."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(4, dim, generator=g) * 10
    fine = torch.randn(4, dim, generator=g) * 2
    index = torch.arange(n_items)
    noise = torch.randn(n_items, dim, generator=g) * 0.05
    return coarse[index % 4] + fine[(index // 4) % 4] + noise


SMALL_NET = {"code_dim": 8, "hidden_layers": [32], "batch_size": 32}
SIZES = [4, 16]  # four coarse groups, then room for every item of a group
TOKENIZER_PARAMS = {
    "rqkmeans": {"levels": 2, "codebook_size": SIZES},
    "rqvae_usm": {"levels": 2, "codebook_size": SIZES, "epochs": 5, **SMALL_NET},
    "behavior_codebook": {
        "levels": 2,
        "codebook_size": SIZES,
        "epochs": 3,
        "llm_alignment": False,
    },
    "ttds": {"levels": 2, "codebook_size": 16, "suffix_size": 16},
    "ulmrec_user": {"levels": 2, "codebook_size": SIZES, "epochs": 3, **SMALL_NET},
    "lsh": {"levels": 2, "bits": 4},
    "lsh_dynamic": {"levels": 2, "bits": 4},
    "random_ids": {"levels": 2, "codebook_size": SIZES},
    "vanilla_id": {},
}


def test_every_tokenizer_but_precomputed_has_golden_codes() -> None:
    assert set(TOKENIZER_PARAMS) == set(TOKENIZERS.names()) - {"precomputed"}


# On another CPU (other vector units round differently) a trained tokenizer may move this
# many of the 64 items; on the CPU that recorded the codes none may move.
OTHER_CPU_SLACK = 2


def test_each_tokenizer_gives_its_golden_codes() -> None:
    x = separable_embeddings()
    actual = {}
    for name, params in TOKENIZER_PARAMS.items():
        tokenizer = TOKENIZERS.get(name)(**params)
        tokenizer.fit(x.clone(), seed=0)
        actual[name] = tokenizer.codes.tolist()
    path = GOLDEN / "tokenizer_codes.json"
    if UPDATE:
        recorded = {"cpu": cpu_name(), "codes": actual}
        path.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    golden = json.loads(path.read_text())
    slack = 0 if golden["cpu"] == cpu_name() else OTHER_CPU_SLACK
    assert set(golden["codes"]) == set(actual)
    moved = {
        name: sum(a != b for a, b in zip(golden["codes"][name], codes))
        + abs(len(golden["codes"][name]) - len(codes))
        for name, codes in actual.items()
    }
    assert {name: n for name, n in moved.items() if n > slack} == {}, (
        f"items whose codes changed, per tokenizer (allowed {slack}): {moved}"
    )

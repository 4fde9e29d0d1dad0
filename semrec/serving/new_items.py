"""``semrec add-items``: give items that arrived after training SIDs, without retraining.

Semantic Convergence (section "Inference"): a new item's tokens come from the trained
codebooks, so neither the LLM nor the codebooks are retrained. Here:

1. each new item gets a vector in the space the tokenizer was fitted in: its ``embedding``
   field when given; otherwise its text (built with the run's ``dataset.text`` settings)
   through the text encoder (``embedder: text``) or through the run's text-to-CF regressor
   (a CF embedder with ``embedder.cold_start: text``);
2. the tokenizer encodes the vectors (:meth:`~semrec.tokenizers.base.ItemTokenizer.encode_new`);
3. a new SID that an existing item (or an earlier new one) already has moves to a free
   last-level code under its prefix (:func:`~semrec.tokenizers.collisions.reassign_last_level`
   with the catalogue fixed), so no existing item's SID changes and every SID stays unique;
4. the items are appended to ``run_dir/added_items.json`` (rewritten atomically), which the
   run's catalogue and trie read: ``semrec predict`` can return them at once. Their tokens
   are SID tokens the model already has, so the LLM is not touched.

The input file is a JSON list of objects (or ``{"items": [...]}``), each with an ``id``
(new, unique) and text fields (``title``, ``description``, ...) and/or an ``embedding``; an
item with only an ``embedding`` is recorded with ``"text": null``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from semrec.artifacts import read_json, write_json
from semrec.data.dataset import DataError
from semrec.run_directory import ADDED_ITEMS_FILE, added_items
from semrec.tokenizers.base import SIDConflictWarning
from semrec.tokenizers.collisions import PAD, collision_groups, reassign_last_level

if TYPE_CHECKING:
    from semrec.pipeline.trained import TrainedRun


def read_new_items(path: str | Path, existing_ids: set[str]) -> list[dict[str, Any]]:
    """The records of a new-items file, validated; errors name the file and the record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: new-items file not found")
    try:
        data = read_json(path)
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err})", source=path) from None
    records = data.get("items") if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise DataError("expected a non-empty JSON list of item objects", source=path)
    seen: set[str] = set()
    for number, record in enumerate(records):
        where = f"item #{number}"
        if not isinstance(record, dict):
            raise DataError("expected an object", source=path, record=where)
        item_id = record.get("id")
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or item_id == "":
            raise DataError("needs an 'id' (string)", source=path, record=where, field="id")
        item_id = str(item_id)
        if item_id in existing_ids:
            raise DataError(
                "an item with this id is already in the catalogue",
                source=path,
                record=f"item {item_id!r}",
                field="id",
            )
        if item_id in seen:
            raise DataError("duplicate id", source=path, record=f"item {item_id!r}", field="id")
        seen.add(item_id)
        embedding = record.get("embedding")
        if embedding is not None and not (
            isinstance(embedding, list)
            and embedding
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in embedding)
        ):
            raise DataError(
                "'embedding' must be a non-empty list of numbers",
                source=path,
                record=f"item {item_id!r}",
                field="embedding",
            )
    return [{**record, "id": str(record["id"])} for record in records]


def assign_new_codes(existing: torch.Tensor, new: torch.Tensor, last_size: int, seed: int):
    """Codes for ``new`` rows that collide with no ``existing`` row nor each other.

    ``existing`` stays exactly as it is; a colliding new row moves to a free last-level code
    under its prefix. Needs fixed-length codes (no -1 padding).
    """
    if bool((existing == PAD).any()) or bool((new == PAD).any()):
        raise ValueError(
            "add-items needs fixed-length SIDs; this tokenizer gave some items an extra "
            "suffix level (collision: suffix), so a new item's SID could be a prefix of an "
            "existing one. Fit the tokenizer with collision: reassign"
        )
    combined = torch.cat([existing, new])
    fixed = torch.zeros(combined.shape[0], dtype=torch.bool)
    fixed[: existing.shape[0]] = True
    try:
        resolved = reassign_last_level(combined, last_size, seed, fixed=fixed)
    except ValueError as err:
        raise ValueError(f"add-items: {err}") from None
    assert torch.equal(resolved[: existing.shape[0]], existing)
    assert not collision_groups(resolved)
    return resolved[existing.shape[0] :]


def add_items(run: TrainedRun, items_path: str | Path, echo=print) -> list[dict[str, Any]]:
    """Give the items of ``items_path`` SIDs in a trained ``run``; returns the added records."""
    from semrec.factories.data import new_item_texts

    item_ids, codes = run.catalogue()
    records = read_new_items(items_path, set(item_ids))
    tokenizer = run.tokenizer
    texts = new_item_texts(run.config.dataset.text, run.data.dataset, records, str(items_path))
    vectors = run.vectors.new_item_vectors(records, texts, source=str(items_path))
    with warnings.catch_warnings():  # conflicts are resolved below
        warnings.simplefilter("ignore", SIDConflictWarning)
        raw = tokenizer.encode_new(vectors)
    if raw.shape[1] != codes.shape[1]:
        raise ValueError(
            f"the tokenizer gave new items {raw.shape[1]} levels, the catalogue has "
            f"{codes.shape[1]}"
        )
    new = assign_new_codes(codes, raw, tokenizer.codebook_sizes[-1], run.config.seed)
    moved = int((new != raw).any(dim=1).sum())
    added = []
    for record, row, text in zip(records, new.tolist(), texts):
        added.append(
            {
                "id": record["id"],
                "text": text,
                "codes": row,
                "sid": "".join(tokenizer.token(level, code) for level, code in enumerate(row)),
            }
        )
    previous = added_items(run.run_dir)
    write_json(run.run_dir / ADDED_ITEMS_FILE, {"items": previous + added})
    echo(
        f"[add-items] {len(added)} items added ({moved} moved to a free last-level code to "
        f"avoid a collision); the catalogue now has {len(item_ids) + len(added)} items. "
        f"Written to {run.run_dir / ADDED_ITEMS_FILE}"
    )
    return added

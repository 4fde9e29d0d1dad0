"""Turn an item's text fields (and a user's reviews) into one string for an encoder or prompt.

Two modes:

- fields: ``"title: Toy Story; year: 1995; categories: Animation, Comedy"`` (``name: value``
  pairs joined by ``"; "``, in the order requested);
- template: ``"{title} ({year}). Genres: {categories}"`` (``str.format`` with the fields).

Whitespace inside the output is collapsed to single spaces.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import Literal

from semrec.data.dataset import DataError, RecDataset

LEADING_FIELDS = ("title", "description")


def _collapse(text: str) -> str:
    return " ".join(text.split())


@dataclass
class ItemTextBuilder:
    """Builds one text per item from ``RecDataset.item_text``.

    ``fields=None`` uses every field each item has (``title``, ``description`` first, then
    the rest in order of first appearance in the dataset). With explicit ``fields`` or a
    ``template``, ``missing="error"`` rejects an item lacking a requested field and
    ``missing="skip"`` leaves that field out (template: formats it as ""). An item with no
    text at all is always an error, as is a field that no item has (likely a typo).
    """

    fields: list[str] | None = None
    template: str | None = None
    missing: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        if self.missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {self.missing!r}")
        if self.fields is not None and self.template is not None:
            raise ValueError("give either fields or template, not both")
        if self.fields is not None and not self.fields:
            raise ValueError("fields must not be empty (use None for all fields)")

    def requested_fields(self, ds: RecDataset) -> list[str]:
        """The fields this builder reads, checked against the fields the dataset has."""
        available = _available_fields(ds)
        if not available and ds.num_items:
            raise DataError(
                f"none of the {ds.num_items} items has any text (e.g. item {ds.item_ids[0]!r}); "
                "item text comes from the item file (RecBole <name>.item, LC-Rec "
                "<name>.item.json): is it missing or empty?",
                source=ds.source or ds.name,
            )
        if self.template is not None:
            requested = _template_fields(self.template)
            kind = "template"
        elif self.fields is not None:
            requested = list(self.fields)
            kind = "fields list"
        else:
            return available
        for name in requested:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=2, cutoff=0.6)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise DataError(
                    f"item field {name!r} in the {kind} is on no item{hint} "
                    f"(available: {', '.join(available) or 'none'})",
                    source=ds.source or ds.name,
                    field=name,
                )
        return requested

    def build(self, ds: RecDataset) -> list[str]:
        """One text per item, aligned with ``ds.item_ids``."""
        return self.render(ds, ds.item_ids, ds.item_text)

    def render(
        self,
        ds: RecDataset,
        item_ids: list[str],
        item_text: list[dict[str, str]],
        source: str | None = None,
    ) -> list[str]:
        """Texts of items given by their fields (e.g. new items), with the fields that
        :meth:`build` reads from ``ds``; errors name ``source`` (default: the dataset's)."""
        requested = self.requested_fields(ds)
        source = source or ds.source or ds.name
        strict = self.missing == "error" and (self.fields is not None or self.template is not None)
        texts = []
        for item_id, item in zip(item_ids, item_text):
            present = {name: item[name] for name in requested if item.get(name, "").strip()}
            if not present:
                raise DataError(
                    f"item {item_id!r} has no text in fields {', '.join(requested) or '(none)'}",
                    source=source,
                    record=f"item {item_id!r}",
                )
            if strict and len(present) < len(requested):
                absent = [name for name in requested if name not in present]
                raise DataError(
                    f"item {item_id!r} lacks {', '.join(map(repr, absent))} "
                    f"(has: {', '.join(sorted(item)) or 'nothing'}); "
                    "set missing='skip' to leave missing fields out",
                    source=source,
                    record=f"item {item_id!r}",
                    field=absent[0],
                )
            if self.template is not None:
                values = {name: present.get(name, "") for name in requested}
                texts.append(_collapse(self.template.format(**values)))
            else:
                texts.append(_collapse("; ".join(f"{k}: {v}" for k, v in present.items())))
        return texts


def _available_fields(ds: RecDataset) -> list[str]:
    """Fields with text on at least one item: title, description first, then first-seen order."""
    seen: dict[str, None] = {}
    for item in ds.item_text:
        for name, value in item.items():
            if value.strip():
                seen.setdefault(name, None)
    leading = [name for name in LEADING_FIELDS if name in seen]
    return leading + [name for name in seen if name not in LEADING_FIELDS]


def _template_fields(template: str) -> list[str]:
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"bad item text template {template!r}: {err}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"item text template {template!r}: placeholders must be field names "
                f"like {{title}}, got {{{name}}}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"item text template {template!r} has no {{field}} placeholder")
    return names


def user_text(ds: RecDataset, max_chars: int = 2000, separator: str = "\n") -> list[str] | None:
    """Per user, their reviews joined by ``separator`` and cut to ``max_chars``.

    ``None`` when the dataset has no user text. Reviews are not tied to interactions, so
    they may mention held-out items; use them for profiles, not where that would leak.
    """
    if ds.user_text is None:
        return None
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    joined = (separator.join(r.strip() for r in reviews if r.strip()) for reviews in ds.user_text)
    return [text[:max_chars].rstrip() for text in joined]

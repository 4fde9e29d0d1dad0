"""Item text fields as the alignment tasks read them: cleaned values, fallbacks, data checks.

Tasks read the raw per-item fields of ``RecDataset.item_text`` (``title``, ``description``,
``categories``, ``year``, ...), not the single embedding text in ``TaskContext.item_texts``.
A field that is absent or blank counts as missing.
"""

from __future__ import annotations

import logging

from semrec.data.dataset import RecDataset, field_text
from semrec.tasks.base import TaskContext, TaskDataError, check_choice

log = logging.getLogger(__name__)


def first_field(ds: RecDataset, item: int, fields: tuple[str, ...]) -> tuple[str, str] | None:
    """``(field, text)`` of the first of ``fields`` the item has, or ``None`` if it has none."""
    for field in fields:
        text = field_text(ds, item, field)
        if text:
            return field, text
    return None


def require_any_field(task: str, ds: RecDataset, fields: tuple[str, ...]) -> None:
    """Raise :class:`TaskDataError` unless at least one item has one of ``fields``."""
    if any(first_field(ds, item, fields) for item in range(ds.num_items)):
        return
    present = sorted({name for text in ds.item_text for name, value in text.items() if value})
    wanted = " or ".join(repr(field) for field in fields)
    raise TaskDataError(
        f"task {task!r} needs the item field {wanted}, but no item of dataset {ds.name!r} "
        f"({ds.source}) has it; item fields present: {', '.join(present) or 'none'}"
    )


def report_skipped(task: str, skipped: int, total: int, reason: str) -> None:
    """Log how many of a task's ``total`` candidate pairs were left out of the epoch, and why."""
    if skipped:
        log.info("task %r: skipped %d of %d pairs (%s)", task, skipped, total, reason)


ITEM_FORMATS = ("title", "sid")


def check_items_as(task: str, items_as: str) -> None:
    """Raise ``ValueError`` unless ``items_as`` is one of :data:`ITEM_FORMATS`."""
    check_choice(task, "items_as", items_as, ITEM_FORMATS)


def item_label(ctx: TaskContext, item: int, items_as: str = "title") -> str:
    """The item as a prompt lists it: its title (its SID when untitled), or its SID."""
    if items_as == "sid":
        return ctx.sids[item]
    return field_text(ctx.dataset, item, "title") or ctx.sids[item]


def numbered(labels: list[str], marks: list[str] | None = None) -> str:
    """``"(1) first (2) second"``, or with ``marks`` (letters) in place of the numbers."""
    marks = marks or [str(k) for k in range(1, len(labels) + 1)]
    return " ".join(f"({mark}) {label}" for mark, label in zip(marks, labels))

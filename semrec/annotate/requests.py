"""Annotation requests: one prompt per annotation key, built from a dataset and its split.

- ``preference``: one request per user, keyed ``"<user id>"``; the prompt lists the titles of
  the last ``max_history`` items of the user's training part (never valid/test items).
- ``intention``: one request per (user, target) of the train, valid and test examples, keyed
  ``"<user id>:<item id>"``; the prompt holds the user's review text and the target's title.
  It needs reviews (``RecDataset.user_text``); datasets without them (ml-100k) derive
  intentions from item text instead (the ITE tasks' ``intention_source: item_text``).

Templates come from the config and use ``str.format`` placeholders: ``{history}`` for
preferences, ``{reviews}`` and ``{title}`` for intentions.
"""

from __future__ import annotations

import random
import string

from semrec.annotate.errors import AnnotationError
from semrec.data.dataset import RecDataset, field_text
from semrec.data.split import Split
from semrec.tasks.intention import intention_key

KINDS = ("intention", "preference")
PLACEHOLDERS = {"intention": ("reviews", "title"), "preference": ("history",)}

DEFAULT_TEMPLATES = {
    "preference": (
        "A user has interacted with the following items, oldest first:\n{history}\n"
        "Based only on these items, describe the user's preferences in two or three "
        "sentences: what kinds of items they like and which qualities matter to them."
    ),
    "intention": (
        'A user wrote these reviews: "{reviews}"\n'
        'The user then chose the item "{title}". In one or two sentences, written as the '
        "user in the first person, say what they were looking for when they chose it. "
        "Describe the need, not the item's name."
    ),
}


def check_template(kind: str, template: str) -> None:
    """Raise :class:`AnnotationError` unless ``template`` uses exactly ``kind``'s placeholders."""
    allowed = PLACEHOLDERS[check_kind(kind)]
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise AnnotationError(f"{kind} template is not a valid format string: {err}") from None
    expected = ", ".join("{" + name + "}" for name in allowed)
    unknown = sorted({name for name in fields if name not in allowed})
    if unknown:
        shown = ", ".join("{" + name + "}" for name in unknown)
        raise AnnotationError(
            f"{kind} template uses unknown placeholder(s) {shown}; it may use only {expected}"
        )
    missing = [name for name in allowed if name not in fields]
    if missing:
        shown = ", ".join("{" + name + "}" for name in missing)
        raise AnnotationError(f"{kind} template must contain {shown} (placeholders: {expected})")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise AnnotationError(f"unknown annotation kind {kind!r}; expected one of {KINDS}")
    return kind


def item_title(ds: RecDataset, item: int) -> str:
    """The item's title, or ``"item <id>"`` when it has none."""
    return field_text(ds, item, "title") or f"item {ds.item_ids[item]}"


def history_lines(ds: RecDataset, items: list[int]) -> str:
    """Numbered item titles, one per line: ``"1. Heat\\n2. Fargo"``."""
    return "\n".join(f"{n}. {item_title(ds, item)}" for n, item in enumerate(items, start=1))


def review_text(reviews: list[str], max_chars: int) -> str:
    """A user's reviews joined by spaces, whitespace collapsed, cut to ``max_chars``."""
    text = " ".join(" ".join(reviews).split())
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + " ..."
    return text


def annotation_requests(
    kind: str,
    dataset: RecDataset,
    split: Split,
    template: str | None = None,
    max_requests: int | None = None,
    seed: int = 0,
    *,
    max_history: int = 20,
    max_review_chars: int = 1000,
) -> dict[str, str]:
    """Annotation key -> prompt for ``kind`` (see the module docstring).

    ``template=None`` uses :data:`DEFAULT_TEMPLATES`. ``max_requests`` keeps a random subset
    of that size (chosen with ``seed``), in the original order. Users whose training part is
    empty (preference) or who wrote no review (intention) get no request.
    """
    template = DEFAULT_TEMPLATES[check_kind(kind)] if template is None else template
    check_template(kind, template)
    if max_requests is not None and max_requests < 1:
        raise AnnotationError(f"max_requests must be >= 1 or None, got {max_requests}")
    if max_history < 1:
        raise AnnotationError(f"max_history must be >= 1, got {max_history}")
    if kind == "preference":
        requests = _preference_requests(dataset, split, template, max_history)
    else:
        requests = _intention_requests(dataset, split, template, max_review_chars)
    if max_requests is None or len(requests) <= max_requests:
        return requests
    chosen = set(random.Random(seed).sample(list(requests), max_requests))
    return {key: prompt for key, prompt in requests.items() if key in chosen}


def _preference_requests(
    ds: RecDataset, split: Split, template: str, max_history: int
) -> dict[str, str]:
    if not split.train_sequences:
        raise AnnotationError("preference requests need the split's train_sequences (empty)")
    requests = {}
    for user, sequence in enumerate(split.train_sequences):
        if len(sequence):
            history = history_lines(ds, sequence[-max_history:].tolist())
            requests[ds.user_ids[user]] = template.format(history=history)
    return requests


def _intention_requests(
    ds: RecDataset, split: Split, template: str, max_review_chars: int
) -> dict[str, str]:
    if ds.user_text is None or not any(ds.user_text):
        raise AnnotationError(
            f"dataset {ds.name!r} ({ds.source or 'no source'}) has no user reviews, which "
            "intention annotations are made from; derive intentions from item text instead by "
            "setting `params: {intention_source: item_text}` on the ITE tasks "
            "(ite_intention, ite_history_intention)"
        )
    requests = {}
    for example in [*split.train, *split.valid, *split.test]:
        reviews = review_text(ds.user_text[example.user], max_review_chars)
        if reviews:
            key = intention_key(ds, example.user, example.target)
            requests[key] = template.format(reviews=reviews, title=item_title(ds, example.target))
    return requests


def annotation_keys(kind: str, dataset: RecDataset) -> set[str]:
    """Every key an annotation of ``kind`` may have for ``dataset`` (checks supplied files).

    Preferences: all user ids. Intentions: ``"<user id>:<item id>"`` of every interaction.
    """
    if check_kind(kind) == "preference":
        return set(dataset.user_ids)
    pairs = set(zip(dataset.users.tolist(), dataset.items.tolist(), strict=True))
    return {intention_key(dataset, user, item) for user, item in pairs}

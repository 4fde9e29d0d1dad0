"""LC-Rec's explicit index-language alignment (MUT, section III-C2): item text <-> SID.

``mut_text2sid`` asks for the SID of an item given its title, its description or both;
``mut_sid2text`` asks for the title and description of the item behind a SID. Both make one
pair per item per epoch.
"""

from __future__ import annotations

import random
import string
from typing import Any

from semrec.tasks.base import TASKS, Sample, Task, TaskContext
from semrec.tasks.item_fields import field_text, report_skipped, require_any_field

TEXT_FIELDS = ("title", "description")


def template_fields(template: str) -> frozenset[str]:
    """The placeholder names a ``str.format`` template uses."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def describe_item(title: str, description: str) -> str:
    """The ``mut_sid2text`` response: ``"title: T; description: D"``, or ``T`` alone."""
    if title and description:
        return f"title: {title}; description: {description}"
    if description:
        return f"description: {description}"
    return title


@TASKS.register("mut_text2sid")
class TextToSIDTask(Task):
    """Identify an item's SID from its title, its description, or both.

    A template's *variant* is the set of fields it names: ``{title}``, ``{description}`` or
    both. For each item the variant is drawn among those the item has text for (so an item
    without a description always gets a title-only prompt), then a template of that variant.
    Items with text for no variant are skipped; ``skipped`` holds the last epoch's count.
    """

    name = "mut_text2sid"
    requires = ("item_text",)
    skipped = 0
    templates = (
        'An item is called "{title}" and described as "{description}". Can you tell me which '
        "item it is?",
        'Which item has the title "{title}" and the description "{description}"?',
        'Find the item titled "{title}". Its description reads: "{description}".',
        'Which item is called "{title}"?',
        'Give me the index of the item named "{title}".',
        'Here is the title of an item: "{title}". Which item does it refer to?',
        'An item is described as follows: "{description}". Which item is it?',
        'Which item matches this description? "{description}"',
        'Tell me the item whose description is: "{description}".',
    )

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self.variants: dict[frozenset[str], list[int]] = {}
        for index, template in enumerate(self.templates):
            fields = template_fields(template)
            if not fields or not fields <= set(TEXT_FIELDS):
                raise ValueError(
                    f"task {self.name!r}: template {index} ({template!r}) must use {{title}}, "
                    f"{{description}} or both, and no other placeholder; it uses "
                    f"{sorted(fields) or 'none'}"
                )
            self.variants.setdefault(fields, []).append(index)

    def check(self, ctx: TaskContext) -> None:
        super().check(ctx)
        used = tuple(f for f in TEXT_FIELDS if any(f in variant for variant in self.variants))
        require_any_field(self.name, ctx.dataset, used)

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        candidates = []  # (item, its texts, the variants it has text for)
        for item in range(ctx.dataset.num_items):
            text = {f: field_text(ctx.dataset, item, f) for f in TEXT_FIELDS}
            usable = [v for v in self.variants if all(text[f] for f in v)]
            if usable:
                candidates.append((item, text, usable))
        self.skipped = ctx.dataset.num_items - len(candidates)
        report_skipped(self.name, self.skipped, ctx.dataset.num_items, "items without text")
        samples = []
        for item, text, usable in self.epoch_subset(candidates, rng):
            template = rng.choice(self.variants[rng.choice(usable)])
            prompt = self.templates[template].format(**text)
            samples.append(Sample(self.name, prompt, ctx.sids[item], item))
        return samples


@TASKS.register("mut_sid2text")
class SIDToTextTask(Task):
    """Recover an item's title and description from its SID (see :func:`describe_item`).

    ``fields`` chooses what the response holds: ``["title"]`` asks for the title alone
    (TS-Rec's SID2Title, appendix A.2.2). Items with none of the chosen fields are skipped;
    ``skipped`` holds the count.
    """

    name = "mut_sid2text"
    requires = ("item_text",)
    skipped = 0
    templates = (
        "Please tell me what item {sid} is called, along with a brief description of it.",
        "What is the title of item {sid}? Describe it briefly if you can.",
        "Item {sid}: give its name and a short description.",
        "I came across the item {sid}. What is it called and what is it about?",
        "Describe the item with index {sid}: its title and, if known, its description.",
    )

    def __init__(
        self,
        *,
        fields: list[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        chosen = tuple(TEXT_FIELDS if fields is None else fields)
        if not chosen or not set(chosen) <= set(TEXT_FIELDS):
            raise ValueError(
                f"task {self.name!r}: fields must be a non-empty subset of {list(TEXT_FIELDS)}, "
                f"got {fields}"
            )
        self.fields = tuple(f for f in TEXT_FIELDS if f in chosen)

    def check(self, ctx: TaskContext) -> None:
        super().check(ctx)
        require_any_field(self.name, ctx.dataset, self.fields)

    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        candidates = []  # (item, response)
        for item in range(ctx.dataset.num_items):
            response = describe_item(
                *(field_text(ctx.dataset, item, f) if f in self.fields else "" for f in TEXT_FIELDS)
            )
            if response:
                candidates.append((item, response))
        self.skipped = ctx.dataset.num_items - len(candidates)
        report_skipped(self.name, self.skipped, ctx.dataset.num_items, "items without text")
        samples = []
        for item, response in self.epoch_subset(candidates, rng):
            template = self.templates[rng.randrange(len(self.templates))]
            samples.append(Sample(self.name, template.format(sid=ctx.sids[item]), response))
        return samples

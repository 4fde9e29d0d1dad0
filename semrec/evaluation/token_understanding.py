"""SID comprehension (TS-Rec RQ4): can the model map titles to SIDs and SIDs back to titles?

Two generative retrieval probes on a sample of items (TS-Rec section 5.5, prompts of A.2.2):

- **Title2SID**: the prompt holds an item's title; the answer is decoded by trie-constrained
  beam search (width 5), so it is always a real item. Accuracy is the fraction of items whose
  top beam is the item itself; hit@5 counts the item anywhere in the top 5 beams.
- **SID2Title**: the prompt holds an item's SID string; the answer is free text from
  ``model.generate`` (beam search, width 5, no constraint). Accuracy is the fraction of top
  beams equal to the title after :func:`normalize_title`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.models.prompting import PromptFormatter

DEFAULT_TITLE2SID = "Which item has the title: {title}?"
DEFAULT_SID2TITLE = 'What is the title of item "{sid}"?'
HIT_AT = 5
"""Title2SID also reports whether the item is among this many top beams."""
EXTRA_TITLE_TOKENS = 8
"""SID2Title may generate this many tokens more than the longest evaluated title."""
MAX_EXAMPLES = 5
"""Examples kept per task for the report."""

_SURROUNDING = " \t\r\n.,;:!?\"'`“”‘’«»"


def normalize_title(text: str) -> str:
    """Casefold, collapse whitespace and strip surrounding quotes and punctuation."""
    return " ".join(text.casefold().split()).strip(_SURROUNDING)


@dataclass(frozen=True)
class UnderstandingResult:
    """Title2SID / SID2Title accuracies over ``n_items`` items, plus a few examples."""

    title2sid_acc: float
    title2sid_hit5: float
    sid2title_acc: float
    n_items: int
    examples: list[dict] = field(default_factory=list)
    """Up to 5 per task: ``{"task", "item", "prompt", "expected", "predicted"}``."""

    def metrics(self, prefix: str = "understanding/") -> dict[str, float]:
        return {
            f"{prefix}title2sid_acc": self.title2sid_acc,
            f"{prefix}title2sid_hit@{HIT_AT}": self.title2sid_hit5,
            f"{prefix}sid2title_acc": self.sid2title_acc,
            f"{prefix}items": float(self.n_items),
        }


def sample_items(titles: Sequence[str], max_items: int | None, seed: int) -> list[int]:
    """Sorted random sample of ``max_items`` items among those with a non-empty title.

    ``max_items=None`` (or more than there are titled items) returns every titled item.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
    titled = [item for item, title in enumerate(titles) if title and title.strip()]
    if not titled:
        raise ValueError(f"none of the {len(titles)} items has a non-empty title")
    if max_items is None or max_items >= len(titled):
        return titled
    return sorted(random.Random(seed).sample(titled, max_items))


def evaluate_token_understanding(
    model: nn.Module,
    formatter: PromptFormatter,
    trie: SIDTrie,
    items: Sequence[int],
    titles: Sequence[str],
    sids: Sequence[str],
    *,
    num_beams: int = 5,
    batch_size: int = 16,
    title2sid_template: str = DEFAULT_TITLE2SID,
    sid2title_template: str = DEFAULT_SID2TITLE,
) -> UnderstandingResult:
    """Run Title2SID and SID2Title on ``items`` and return their accuracies.

    ``titles[i]`` and ``sids[i]`` (e.g. ``"<a_1><b_7><c_3>"``) describe item ``i``, which is
    row ``i`` of ``trie``. ``model`` is a Hugging Face causal LM or a peft model wrapping one;
    it runs in eval mode and gets its previous mode back afterwards. Prompts are batched by
    ``batch_size`` and left padded. Title2SID hit@5 looks at ``min(5, num_beams)`` beams.
    """
    _check_inputs(trie, items, titles, sids, num_beams, batch_size)
    _check_template("title2sid_template", title2sid_template, "title")
    _check_template("sid2title_template", sid2title_template, "sid")
    probes = _Probes(
        model=model,
        formatter=formatter,
        items=[int(item) for item in items],
        titles={int(item): " ".join(titles[item].split()) for item in items},
        sids=sids,
        num_beams=num_beams,
        batch_size=batch_size,
    )
    was_training = model.training
    model.eval()
    try:
        title2sid = probes.title2sid(trie, title2sid_template)
        sid2title = probes.sid2title(sid2title_template)
    finally:
        model.train(was_training)

    n = len(probes.items)
    return UnderstandingResult(
        title2sid_acc=title2sid.top1 / n,
        title2sid_hit5=title2sid.hits / n,
        sid2title_acc=sid2title.top1 / n,
        n_items=n,
        examples=title2sid.examples + sid2title.examples,
    )


# ---------------------------------------------------------------------- the two probes


@dataclass
class _Tally:
    """Correct answers of one probe and its first few examples."""

    top1: int = 0
    hits: int = 0
    examples: list[dict] = field(default_factory=list)

    def example(self, task: str, item: int, prompt: str, expected: str, predicted: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {
                    "task": task,
                    "item": item,
                    "prompt": prompt,
                    "expected": expected,
                    "predicted": predicted,
                }
            )


@dataclass
class _Probes:
    """Both probes over the same items; ``titles`` maps item -> whitespace-collapsed title."""

    model: nn.Module
    formatter: PromptFormatter
    items: list[int]
    titles: dict[int, str]
    sids: Sequence[str]
    num_beams: int
    batch_size: int

    def title2sid(self, trie: SIDTrie, template: str) -> _Tally:
        decoder = ConstrainedBeamSearch(num_beams=self.num_beams)
        top_k = min(HIT_AT, self.num_beams)
        tally = _Tally()
        for batch in self._batches():
            prompts = [template.format(title=self.titles[item]) for item in batch]
            inputs = self._collate(prompts)
            found = decoder.search(
                self.model, trie, inputs["input_ids"], inputs["attention_mask"], top_k=top_k
            ).items.cpu()
            for row, item in enumerate(batch):
                ranked = found[row].tolist()
                tally.top1 += ranked[0] == item
                tally.hits += item in ranked
                predicted = self.sids[ranked[0]] if ranked[0] >= 0 else "<no item>"
                tally.example("title2sid", item, prompts[row], self.sids[item], predicted)
        return tally

    @torch.no_grad()
    def sid2title(self, template: str) -> _Tally:
        tokenizer = self.formatter.tokenizer
        longest = max(
            len(tokenizer(self.titles[item], add_special_tokens=False).input_ids)
            for item in self.items
        )
        tally = _Tally()
        for batch in self._batches():
            prompts = [template.format(sid=self.sids[item]) for item in batch]
            inputs = self._collate(prompts)
            output = self.model.generate(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                num_beams=self.num_beams,
                do_sample=False,
                max_new_tokens=longest + EXTRA_TITLE_TOKENS,
                early_stopping=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            answers = tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for row, item in enumerate(batch):
                predicted = answers[row].strip()
                tally.top1 += normalize_title(predicted) == normalize_title(self.titles[item])
                tally.example("sid2title", item, prompts[row], self.titles[item], predicted)
        return tally

    def _batches(self) -> Iterator[list[int]]:
        for start in range(0, len(self.items), self.batch_size):
            yield self.items[start : start + self.batch_size]

    def _collate(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = [self.formatter.prompt_ids(prompt) for prompt in prompts]
        device = next(self.model.parameters()).device
        return {
            name: tensor.to(device) for name, tensor in self.formatter.collate_prompts(ids).items()
        }


# ---------------------------------------------------------------------- helpers


def _check_template(name: str, template: str, placeholder: str) -> None:
    if "{" + placeholder + "}" not in template:
        raise ValueError(f"{name} must contain the placeholder {{{placeholder}}}: {template!r}")
    try:
        template.format(**{placeholder: "x"})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"{name} may only use the placeholder {{{placeholder}}} (double other braces as "
            f"{{{{ }}}}): {template!r} fails with {type(err).__name__}: {err}"
        ) from None


def _check_inputs(
    trie: SIDTrie,
    items: Sequence[int],
    titles: Sequence[str],
    sids: Sequence[str],
    num_beams: int,
    batch_size: int,
) -> None:
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(titles) != len(sids):
        raise ValueError(
            f"titles and sids must both have one entry per item, got {len(titles)} titles "
            f"and {len(sids)} sids"
        )
    if trie.num_items != len(sids):
        raise ValueError(f"the SID trie has {trie.num_items} items but sids has {len(sids)}")
    if len(items) == 0:
        raise ValueError("no items to evaluate (items is empty)")
    outside = [item for item in items if not 0 <= item < len(sids)]
    if outside:
        raise ValueError(f"items {outside[:5]} are outside the catalog [0, {len(sids)})")
    untitled = [item for item in items if not (titles[item] and titles[item].strip())]
    if untitled:
        raise ValueError(
            f"items {untitled[:5]} have an empty title ({len(untitled)} in all); "
            "pick items with sample_items()"
        )
    duplicated = len(items) - len(set(items))
    if duplicated:
        raise ValueError(f"items lists {duplicated} item(s) more than once")


class NoTitlesError(ValueError):
    """The dataset has no item titles to probe."""


def probe_dataset(
    model: nn.Module,
    formatter: PromptFormatter,
    trie: SIDTrie,
    dataset,
    sids: Sequence[str],
    cfg,
    *,
    seed: int,
    batch_size: int,
) -> UnderstandingResult:
    """:func:`evaluate_token_understanding` on a ``cfg.max_items`` sample of ``dataset``'s titled
    items (``cfg``: the ``eval.token_understanding`` section)."""
    from semrec.data.dataset import field_text

    titles = [field_text(dataset, item, "title") for item in range(dataset.num_items)]
    if not any(title and title.strip() for title in titles):
        raise NoTitlesError(
            f"eval.token_understanding needs item titles; no item of dataset "
            f"{dataset.name!r} has one"
        )
    return evaluate_token_understanding(
        model,
        formatter,
        trie,
        sample_items(titles, cfg.max_items, seed),
        titles,
        sids,
        num_beams=cfg.num_beams,
        batch_size=batch_size,
        title2sid_template=cfg.title2sid_template,
        sid2title_template=cfg.sid2title_template,
    )

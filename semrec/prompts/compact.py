"""The compact prompt format (``model.prompt_format: compact``): items as SID tokens.

An item is written as a separator followed by its SID tokens, ``<sep> <a_3> <b_7> <c_1>``,
optionally followed by a few tokens of its title (``suffixes``, never predicted). A prompt
is an optional ``prefix`` (e.g. a short instruction), the history's items and one more
``<sep>``; the response is the target's SID tokens. Without prefix and titles this is
TIGER's generative retrieval as a decoder-only model; with them a pretrained LLM reads
text it knows around the new tokens.

Training sees every training prefix of ``split.train`` once per epoch. A user's
consecutive training examples form one token sequence, cut into windows of
``window_items`` targets; each window carries the ``max_history`` items before its first
target as context, and every target item's tokens attend to the tokens of the
``max_history`` items before it and to its own earlier tokens. One causal pass over a
window thus scores all of its prefixes.

With ``window_items: 1`` every prefix is its own window: the model sees exactly what its
prompt at evaluation holds. With longer windows the history items' own states were
computed in the window, where they attend to the items before *them*: a model of ``n``
layers sees up to ``n x max_history`` items back in training, against ``max_history`` at
evaluation (a one-layer model is exact either way). Longer windows repeat far less work
(a prefix costs about one item's tokens instead of a whole prompt); the tests check both
properties.

With ``item_tokens`` given as a function (a tokenizer trained with the LLM), windows are
kept as item lists and written out in tokens when their batch's step begins
(:meth:`CompactSequences.encode_pending`, as for the text formats), and evaluation prompts
when they are batched; training batches then also carry ``sid_items``.

The ``prefix`` opens every window and every prompt, and every token of the window may
attend to it (for a pretrained LLM it is also the attention sink its first tokens always
were). A target far along a window sees the prefix from farther away than its standalone
prompt does, so with a prefix and rotary positions windows are exact only with
``window_items: 1``.

A window is one training item; batches hold ``attention_mask`` as a boolean
``[B, 1, T, T]`` mask (True: may attend), ``position_ids``, ``examples`` (prefixes),
``tokens`` (non-padding tokens), ``window_items`` (each window's items, ``-1`` padded) and
``first_target`` (the index of each window's first predicted item). Positions restart at 0 in every window: with rotary
position embeddings (LLaMA) attention depends only on the distance between tokens, so a
prefix scores the same in a window and in its standalone prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from semrec.data.split import Example, Split
from semrec.prompts.batching import IGNORE_INDEX, causal_attention_mask, left_pad

#: the item position of prefix tokens: every token may attend to them
PREFIX_POSITION = -1
#: the item position of padding: far from every real item, so nothing attends to it
PADDING_POSITION = -(10**9)


@dataclass(frozen=True)
class Window:
    """One training window: token ids, per-token item position, and labels (``-100``: none)."""

    input_ids: torch.Tensor
    item_position: torch.Tensor
    labels: torch.Tensor
    examples: int
    #: the window's items, and the index of the first one predicted
    items: tuple[int, ...]
    first_target: int


@dataclass(frozen=True)
class WindowPlan:
    """A window as items: the context items, then targets from index ``first_target`` on."""

    items: tuple[int, ...]
    first_target: int

    @property
    def examples(self) -> int:
        return len(self.items) - self.first_target


def consecutive_runs(examples: list[Example], max_history: int) -> list[list[Example]]:
    """Groups of one user's examples in which each continues the previous one.

    Example ``j + 1`` continues example ``j`` when its history is the last ``max_history``
    items of ``example_j.history + (example_j.target,)``; those examples share one sequence.
    """
    runs: list[list[Example]] = []
    for example in examples:
        if runs:
            last = runs[-1][-1]
            follows = (
                last.user == example.user
                and example.history
                == (
                    *last.history,
                    last.target,
                )[-max_history:]
            )
            if follows:
                runs[-1].append(example)
                continue
        runs.append([example])
    return runs


class CompactSequences:
    """Compact-format training windows over ``split.train`` and prompts for evaluation.

    Args:
        split: the leave-one-out split (its ``train`` examples are the training prefixes).
        item_tokens: per item, its SID token ids.
        sep_id: the separator token's id; pad_id: the padding id.
        max_history: the split's history cap: how many earlier items a target attends to.
        window_items: training targets per window (speed only: longer windows repeat less
            context but cost more attention per token).
        prefix: token ids opening every window and prompt (e.g. an instruction); may be empty.
        suffixes: per item, token ids written after its SID (e.g. its title), or None.
        max_examples: train on a random subset of windows per epoch holding at least this
            many targets (``train.max_train_samples``; None: every window), drawn with
            ``seed`` and the epoch.

    Windows are built once; an epoch is all of them (:meth:`epoch_items`).
    ``item_tokens`` may be a function returning the current table (codes that change).
    """

    def __init__(
        self,
        split: Split,
        item_tokens: list[list[int]] | Callable[[], list[list[int]]],
        *,
        sep_id: int,
        pad_id: int,
        max_history: int,
        window_items: int = 64,
        prefix: list[int] | tuple[int, ...] = (),
        suffixes: list[list[int]] | None = None,
        max_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        if window_items < 1:
            raise ValueError(f"window_items must be >= 1, got {window_items}")
        if suffixes is not None and len(suffixes) != split.num_items:
            raise ValueError(f"suffixes has {len(suffixes)} rows for {split.num_items} items")
        self.prefix = list(prefix)
        self.suffixes = suffixes
        self.max_examples = max_examples
        self.seed = seed
        self.sep_id = sep_id
        self.pad_id = pad_id
        self.max_history = max_history
        self.window_items = window_items
        self.dynamic = callable(item_tokens)
        self._item_tokens = item_tokens
        self._static_table: list[list[int]] | None = None
        table = self.item_tokens
        if len(table) != split.num_items:
            raise ValueError(f"item_tokens has {len(table)} rows for {split.num_items} items")
        self.plans = [
            plan
            for run in consecutive_runs(split.train, max_history)
            for plan in self._run_plans(run)
        ]
        # batching lengths must not follow the codes: every item counted at its widest now
        self._item_width = max(len(tokens) for tokens in table)
        if suffixes is not None:
            self._item_width += max(len(tokens) for tokens in suffixes)
        self.windows = None if self.dynamic else [self._window(plan) for plan in self.plans]
        self.num_examples = sum(plan.examples for plan in self.plans)

    @property
    def item_tokens(self) -> list[list[int]]:
        """Per item, ``<sep>`` then its current SID token ids."""
        if self.dynamic:
            return [[self.sep_id, *tokens] for tokens in self._item_tokens()]
        if self._static_table is None:
            self._static_table = [[self.sep_id, *tokens] for tokens in self._item_tokens]
        return self._static_table

    def _run_plans(self, run: list[Example]) -> list[WindowPlan]:
        items = [*run[0].history, *(ex.target for ex in run)]
        plans = []
        for start in range(len(run[0].history), len(items), self.window_items):
            stop = min(start + self.window_items, len(items))
            context = max(0, start - self.max_history)
            plans.append(WindowPlan(tuple(items[context:stop]), start - context))
        return plans

    def _window(self, plan: WindowPlan, table: list[list[int]] | None = None) -> Window:
        table = self.item_tokens if table is None else table
        ids = list(self.prefix)
        positions = [PREFIX_POSITION] * len(ids)
        labels = [IGNORE_INDEX] * len(ids)
        for offset, item in enumerate(plan.items):
            tokens = table[item]
            suffix = self.suffixes[item] if self.suffixes is not None else []
            ids.extend(tokens)
            ids.extend(suffix)
            positions.extend([offset] * (len(tokens) + len(suffix)))
            # the separator is given; a target's SID tokens after it are predicted
            predicted = offset >= plan.first_target
            labels.append(IGNORE_INDEX)
            labels.extend(tokens[1:] if predicted else [IGNORE_INDEX] * (len(tokens) - 1))
            labels.extend([IGNORE_INDEX] * len(suffix))
        return Window(
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(positions, dtype=torch.long),
            torch.tensor(labels, dtype=torch.long),
            plan.examples,
            plan.items,
            plan.first_target,
        )

    # ---------------------------------------------------------------- training

    def epoch_items(self, epoch: int) -> list:
        """The epoch's windows (every window, unless ``max_examples`` samples them; batches
        are reshuffled by the data module); with changing codes, the windows' plans."""
        items = self.plans if self.dynamic else self.windows
        return [items[i] for i in self._epoch_indices(epoch)]

    def _epoch_indices(self, epoch: int) -> list[int]:
        if self.max_examples is None or self.max_examples >= self.num_examples:
            return list(range(len(self.plans)))
        order = torch.randperm(
            len(self.plans), generator=torch.Generator().manual_seed(self.seed + epoch)
        ).tolist()
        picked, examples = [], 0
        for index in order:
            if examples >= self.max_examples:
                break
            picked.append(index)
            examples += self.plans[index].examples
        return sorted(picked)

    def length(self, window) -> int:
        if isinstance(window, WindowPlan):  # independent of the current codes
            return len(self.prefix) + len(window.items) * self._item_width
        return len(window.input_ids)

    def examples_per_epoch(self, epoch: int) -> int:
        if self.max_examples is None:
            return self.num_examples
        return sum(self.plans[i].examples for i in self._epoch_indices(epoch))

    def encode_pending(self, batch: dict) -> dict[str, torch.Tensor]:
        """Write a pending batch's windows in the current SID tokens; add ``sid_items``."""
        plans = batch["pending"]
        table = self.item_tokens
        out = self._collate([self._window(plan, table) for plan in plans])
        out["sid_items"] = torch.tensor([item for plan in plans for item in plan.items])
        return out

    def collate(self, windows: list) -> dict:
        """A training batch; with changing codes ``{"pending": plans}`` for
        :meth:`encode_pending`."""
        if self.dynamic:
            return {"pending": list(windows)}
        return self._collate(windows)

    def _collate(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        """Right-padded ids/labels, the windowed causal mask, position ids and ``examples``."""
        width = max(len(w.input_ids) for w in windows)
        batch = len(windows)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        item_position = torch.full((batch, width), PADDING_POSITION, dtype=torch.long)
        window_items = torch.full((batch, max(len(w.items) for w in windows)), -1)
        for row, window in enumerate(windows):
            window_items[row, : len(window.items)] = torch.tensor(window.items)
            n = len(window.input_ids)
            input_ids[row, :n] = window.input_ids
            labels[row, :n] = window.labels
            item_position[row, :n] = window.item_position
        query, key = item_position.unsqueeze(2), item_position.unsqueeze(1)
        recent = (query - key <= self.max_history) & (key >= 0)
        return {
            "input_ids": input_ids,
            "attention_mask": causal_attention_mask(recent | (key == PREFIX_POSITION)),
            "position_ids": torch.arange(width).expand(batch, -1).contiguous(),
            "labels": labels,
            "examples": torch.tensor(sum(w.examples for w in windows)),
            "tokens": torch.tensor(sum(len(w.input_ids) for w in windows)),
            "window_items": window_items,
            "first_target": torch.tensor([w.first_target for w in windows]),
        }

    # -------------------------------------------------------------- evaluation

    def prompt_ids(
        self, history: tuple[int, ...], table: list[list[int]] | None = None
    ) -> list[int]:
        """The prompt for one history: the prefix, its last ``max_history`` items, ``<sep>``."""
        table = self.item_tokens if table is None else table
        ids = list(self.prefix)
        for item in history[-self.max_history :]:
            ids.extend(table[item])
            if self.suffixes is not None:
                ids.extend(self.suffixes[item])
        return [*ids, self.sep_id]

    def eval_prompts(self, examples: list[Example]) -> list:
        """Prompt ids; with changing codes, the histories (written out when batched)."""
        if self.dynamic:
            return [ex.history[-self.max_history :] for ex in examples]
        return [self.prompt_ids(ex.history) for ex in examples]

    def collate_prompts(self, prompts: list) -> dict[str, torch.Tensor]:
        if self.dynamic:
            table = self.item_tokens
            prompts = [self.prompt_ids(tuple(history), table) for history in prompts]
        return left_pad(prompts, self.pad_id)

    def eval_candidates(self, examples: list[Example]) -> None:
        """The compact format ranks the whole catalogue (no candidate lists)."""
        return None

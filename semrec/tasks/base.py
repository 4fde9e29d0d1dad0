"""The task interface: turn a split plus the SID table into (instruction, response) pairs.

A task declares which data it needs (``requires``); :meth:`Task.check` names the missing
field when a dataset can't feed it. Each task carries several instruction templates and
samples one per example per epoch (LC-Rec section III-D: each example is seen once per
epoch, with one template, rather than once per template). Every task draws its pairs from
a pool (training examples, items, users or SID tokens); ``max_samples_per_epoch`` caps how
many of them an epoch uses.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

from semrec.data.dataset import RecDataset
from semrec.data.split import Example, Split
from semrec.registry import Registry

TASKS: Registry[type[Task]] = Registry("task")


def ranks_candidates(task_names) -> bool:
    """Whether one of the named tasks ranks retrieved candidates (needs a retriever)."""
    return any("candidates" in TASKS.get(name).requires for name in task_names)


T = TypeVar("T")


class TaskDataError(ValueError):
    """A task needs data the dataset does not have."""


@dataclass(frozen=True)
class Sample:
    """One instruction-tuning pair; ``target_item`` is set when the response is an item SID,
    ``user`` when the pair is about one user (then the prompt can carry the user's SID)."""

    task: str
    prompt: str
    response: str
    target_item: int | None = None
    user: int | None = None


@dataclass
class TaskContext:
    """What tasks may read: the dataset, its split, SID strings and item texts per item.

    ``annotations`` holds generated texts by kind, then key (``semrec annotate`` makes them):
    ``annotations["intention"]["<user id>:<item id>"]`` is why that user chose that item and
    ``annotations["preference"]["<user id>"]`` a user's preferences, with the dataset's
    external ids (``dataset.user_ids`` / ``dataset.item_ids``), e.g. ``"196:242"``.

    ``level_tokens[l]`` lists the SID token strings of level ``l``; ``token_semantics`` maps a
    token string to its parsed TS-Rec semantics (``.description``, ``.keywords``).
    ``user_sids[u]`` is user ``u``'s SID string when the run gives users SIDs
    (``users.tokenizer``); ``candidates`` the retrieved candidates of every example
    (:class:`~semrec.ranking.candidates.CandidateSets`) when a task ranks them.
    """

    dataset: RecDataset
    split: Split
    sids: list[str]
    item_texts: list[str] | None = None
    annotations: dict[str, dict[str, str]] | None = None
    level_tokens: list[list[str]] | None = None
    token_semantics: dict[str, Any] | None = None
    user_sids: list[str] | None = None
    candidates: Any | None = None  # semrec.ranking.CandidateSets, for candidate ranking

    def history_text(self, history: tuple[int, ...], separator: str = ", ") -> str:
        return separator.join(self.sids[i] for i in history)


DEFAULT_USER_TEMPLATE = "The user is {user}. {prompt}"


def check_choice(task: str, key: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``task`` and ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"task {task!r}: {key} must be one of {tuple(choices)}, got {value!r}")


class Task(ABC):
    """Base class of instruction tasks; subclasses register with ``@TASKS.register(name)``.

    ``user_sid_in_prompt`` puts the user's SID into every prompt of the task through
    ``user_template`` (``{user}``: the SID string, ``{prompt}``: the task's own prompt); it
    needs user SIDs (``users.tokenizer``) and a task whose pairs are about one user.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    templates: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        templates: list[str] | None = None,
        max_samples_per_epoch: int | None = None,
        user_sid_in_prompt: bool = False,
        user_template: str = DEFAULT_USER_TEMPLATE,
    ) -> None:
        if user_sid_in_prompt and not ("{user}" in user_template and "{prompt}" in user_template):
            raise ValueError(
                f"task {self.name!r}: user_template must contain {{user}} and {{prompt}}, "
                f"got {user_template!r}"
            )
        self.user_sid_in_prompt = user_sid_in_prompt
        self.user_template = user_template
        if templates is not None:
            if not templates:
                raise ValueError(f"task {self.name!r}: templates must not be empty")
            self.templates = tuple(templates)
        if max_samples_per_epoch is not None and max_samples_per_epoch < 1:
            raise ValueError(
                f"task {self.name!r}: max_samples_per_epoch must be >= 1 or None, "
                f"got {max_samples_per_epoch}"
            )
        self.max_samples_per_epoch = max_samples_per_epoch

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The keyword parameters a config may give: this class's and every base's."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for name, parameter in inspect.signature(init).parameters.items():
                kinds = (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                if name != "self" and parameter.kind in kinds and name not in names:
                    names.append(name)
        return names

    def epoch_subset(self, pool: Sequence[T], rng: random.Random) -> list[T]:
        """At most ``max_samples_per_epoch`` entries of ``pool``, drawn without replacement
        and kept in their original order (all of them when there is no cap)."""
        limit = self.max_samples_per_epoch
        if limit is None or len(pool) <= limit:
            return list(pool)
        return [pool[i] for i in sorted(rng.sample(range(len(pool)), limit))]

    def check(self, ctx: TaskContext) -> None:
        """Raise :class:`TaskDataError` naming the first required field the data lacks.

        A field is looked up on the context first (``item_texts``), then on the dataset
        (``user_text``, ``ratings``, ...).
        """
        for field in self.requires:
            value = getattr(ctx, field, None)
            if value is None:
                value = getattr(ctx.dataset, field, None)
            if value is None:
                raise TaskDataError(
                    f"task {self.name!r} needs {field!r}, which dataset "
                    f"{ctx.dataset.name!r} ({ctx.dataset.source}) does not provide"
                )

    @abstractmethod
    def train_samples(self, ctx: TaskContext, rng: random.Random) -> list[Sample]:
        """All training pairs for one epoch, each with one randomly sampled template."""

    def personalize(self, ctx: TaskContext, samples: list[Sample]) -> list[Sample]:
        """``samples`` with the user's SID in each prompt when ``user_sid_in_prompt`` is on."""
        if not self.user_sid_in_prompt:
            return samples
        if ctx.user_sids is None:
            raise TaskDataError(
                f"task {self.name!r}: user_sid_in_prompt needs user SIDs; give users a "
                "tokenizer (users.tokenizer)"
            )
        out = []
        for sample in samples:
            if sample.user is None:
                raise TaskDataError(
                    f"task {self.name!r}: user_sid_in_prompt is on, but its pairs are not "
                    "about one user (no user to put in the prompt)"
                )
            prompt = self.user_template.format(
                user=ctx.user_sids[sample.user], prompt=sample.prompt
            )
            out.append(replace(sample, prompt=prompt))
        return out

    def notes(self) -> list[str]:
        """Facts about this task's data a run should print (e.g. where its texts come from)."""
        return []


class RecommendationTask(Task):
    """A task whose response is the next item; it also builds the evaluation prompts.

    ``target_leak`` is set (to the reason) by tasks whose prompt is built from the target
    item itself; the config refuses them as ``eval.task``.
    """

    target_leak: ClassVar[str | None] = None

    @abstractmethod
    def prompt(self, ctx: TaskContext, example: Example, template: int = 0) -> str:
        """The instruction for ``example`` using template number ``template``."""

    def eval_samples(self, ctx: TaskContext, examples: list[Example]) -> list[Sample]:
        """Deterministic prompts (template 0) for validation / test examples."""
        samples = [
            Sample(self.name, self.prompt(ctx, ex, 0), ctx.sids[ex.target], ex.target, ex.user)
            for ex in examples
        ]
        return self.personalize(ctx, samples)


def build_mixture(
    tasks: list[tuple[Task, float]], ctx: TaskContext, rng: random.Random
) -> list[Sample]:
    """One epoch of training pairs from weighted tasks, shuffled.

    A weight scales how many of a task's pairs enter the epoch: 1 keeps all of them, 0.5 a
    random half, 2 every pair twice (each copy with its own template draw).
    """
    mixture: list[Sample] = []
    for task, weight in tasks:
        task.check(ctx)
        whole, fraction = divmod(weight, 1.0)
        for _ in range(int(whole)):
            mixture.extend(task.personalize(ctx, task.train_samples(ctx, rng)))
        if fraction > 0:
            pool = task.personalize(ctx, task.train_samples(ctx, rng))
            mixture.extend(rng.sample(pool, round(fraction * len(pool))))
    rng.shuffle(mixture)
    return mixture

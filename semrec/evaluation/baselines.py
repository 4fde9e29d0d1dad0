"""In-framework baselines, evaluated on the same split and protocol as the LLM.

``BASELINES`` maps a name to a class; ``BASELINES.get(name)(**params)`` gives an object
with two methods::

    rank(split, examples, k, exclude=None) -> LongTensor [len(examples), k]
    evaluate(split, examples, ks, exclude=None) -> {"<part>/<metric>": value}

``rank`` gives each example's top-``k`` item ids (``-1`` for empty slots); ``run_baselines``
scores those lists like the LLM's and keeps every example's target rank (for paired tests
between methods). ``examples`` of ``evaluate`` maps a part name (``"valid"``, ``"test"``) to
its examples; ``exclude`` (optional) holds per-example lists of items never to recommend
(``eval.mask_history``). Models that learn fit on ``split`` first (train examples, early
stopping on ``split.valid``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from semrec.cf import GRU4Rec, SASRec
from semrec.config import EvalConfig
from semrec.data.split import Example, Split
from semrec.metrics.popularity import evaluate_popularity, popularity_lists
from semrec.metrics.ranking import evaluate_ranked
from semrec.registry import Registry


class Baseline(Protocol):
    def rank(
        self,
        split: Split,
        examples: Sequence[Example],
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor: ...

    def evaluate(
        self,
        split: Split,
        examples: Mapping[str, Sequence[Example]],
        ks: Sequence[int],
        exclude: Mapping[str, Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, float]: ...


BASELINES: Registry[type[Baseline]] = Registry("baseline")


@BASELINES.register("popularity")
class Popularity:
    """Every user gets the items most frequent in training (see :mod:`.popularity`)."""

    def rank(
        self,
        split: Split,
        examples: Sequence[Example],
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        banned = None if exclude is None else [list(b) for b in exclude]
        return popularity_lists(split, len(examples), k, banned)

    def evaluate(
        self,
        split: Split,
        examples: Mapping[str, Sequence[Example]],
        ks: Sequence[int],
        exclude: Mapping[str, Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, part_examples in examples.items():
            banned = (exclude or {}).get(part)
            scores = evaluate_popularity(
                split,
                list(part_examples),
                list(ks),
                None if banned is None else [list(b) for b in banned],
            )
            out.update({f"{part}/{name}": value for name, value in scores.items()})
        return out


BASELINES.register("sasrec")(SASRec)
BASELINES.register("gru4rec")(GRU4Rec)


@dataclass
class BaselineResults:
    """What :func:`run_baselines` measured: ``{name}/{part}/{metric}`` metrics, seconds per
    baseline, and ``ranks[name][part]``, every example's target rank (``inf``: not in the
    top ``max(ks)``) in the order of ``examples[part]``."""

    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: ``rankings[name][part]``: every example's top ``max(ks)`` items ``[n, max(ks)]``
    rankings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def fitted_baseline(cfg: EvalConfig, name: str, seed: int, split: Split):
    """The learned baseline ``name`` (SASRec, GRU4Rec) as its row in the test uses it: built
    from ``eval.baseline_params`` (``seed`` unless they set one), fitted on ``split`` or
    reused from the cache of fitted models (its ``from_cache`` says which)."""
    from semrec.cf import fit_cached

    params = {"seed": seed, **cfg.baseline_params.get(name, {})}
    return fit_cached(BASELINES.get(name)(**params), split)


def run_baselines(
    cfg: EvalConfig,
    seed: int,
    split: Split,
    examples: Mapping[str, Sequence[Example]],
    exclude: Mapping[str, Sequence[Sequence[int]] | None] | None,
    echo: Callable[[str], None] = print,
) -> BaselineResults:
    """``eval.baselines`` on ``examples`` (see :class:`BaselineResults`).

    Learned baselines (SASRec, GRU4Rec) are fitted on ``split`` or reused from the cache of
    fitted models (``cache_dir()/cf``); their seed defaults to ``seed``.
    """
    from semrec.cf import SequentialRecommender

    results = BaselineResults()
    for name in cfg.baselines:
        factory = BASELINES.get(name)
        learned = isinstance(factory, type) and issubclass(factory, SequentialRecommender)
        start = time.perf_counter()
        if not learned:
            baseline = factory(**cfg.baseline_params.get(name, {}))
        else:
            baseline = fitted_baseline(cfg, name, seed, split)
            stopped = (
                f"stopped early (best epoch {baseline.best_epoch})"
                if baseline.epochs_run < baseline.max_epochs
                else f"reached its max_epochs cap (best epoch {baseline.best_epoch})"
            )
            echo(
                f"[baselines] {name}: {baseline.epochs_run} epochs, {stopped}; "
                + ("reused from the cache, " if baseline.from_cache else "")
                + f"fitted in {baseline.fit_seconds:.0f} s"
            )
            results.metrics[f"{name}/fit/epochs"] = float(baseline.epochs_run)
            results.metrics[f"{name}/fit/best_epoch"] = float(baseline.best_epoch)
        results.ranks[name] = {}
        results.rankings[name] = {}
        for part, part_examples in examples.items():
            banned = (exclude or {}).get(part)
            ranked = baseline.rank(split, part_examples, max(cfg.ks), banned)
            targets = torch.tensor([ex.target for ex in part_examples], dtype=torch.long)
            scores, ranks = evaluate_ranked(ranked, targets, list(cfg.ks), split.num_items)
            results.metrics.update({f"{name}/{part}/{key}": v for key, v in scores.items()})
            results.ranks[name][part] = ranks
            results.rankings[name][part] = ranked
        results.seconds[name] = round(time.perf_counter() - start, 2)
    return results

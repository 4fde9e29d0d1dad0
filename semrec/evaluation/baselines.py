"""In-framework baselines, evaluated on the same split and protocol as the LLM.

``BASELINES`` maps a name to a class; ``BASELINES.get(name)(**params)`` gives an object
with one method::

    evaluate(split, examples, ks, exclude=None) -> {"<part>/<metric>": value}

``examples`` maps a part name (``"valid"``, ``"test"``) to its examples; ``exclude``
(optional) maps the same names to per-example lists of items never to recommend
(``eval.mask_history``). Models that learn fit on ``split`` first (train examples, early
stopping on ``split.valid``) and add ``fit/...`` entries (epochs run, best epoch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from semrec.cf import GRU4Rec, SASRec
from semrec.config import EvalConfig
from semrec.data.split import Example, Split
from semrec.evaluation.popularity import evaluate_popularity
from semrec.registry import Registry


class Baseline(Protocol):
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


def run_baselines(
    cfg: EvalConfig,
    seed: int,
    split: Split,
    examples: Mapping[str, Sequence[Example]],
    exclude: Mapping[str, Sequence[Sequence[int]]] | None,
    echo: Callable[[str], None] = print,
) -> tuple[dict[str, float], dict[str, float]]:
    """``eval.baselines`` on ``examples``: (``{name}/{part}/{metric}`` metrics, seconds per name).

    Learned baselines (SASRec, GRU4Rec) are fitted on ``split`` or reused from the cache of
    fitted models (``cache_dir()/cf``); their seed defaults to ``seed``.
    """
    from semrec.cf import SequentialRecommender, fit_cached

    metrics: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for name in cfg.baselines:
        factory = BASELINES.get(name)
        params = dict(cfg.baseline_params.get(name, {}))
        learned = isinstance(factory, type) and issubclass(factory, SequentialRecommender)
        if learned:
            params.setdefault("seed", seed)
        baseline = factory(**params)
        start = time.perf_counter()
        if learned:
            fit_cached(baseline, split)
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
        scores = baseline.evaluate(split, examples, cfg.ks, exclude)
        seconds[name] = round(time.perf_counter() - start, 2)
        metrics.update({f"{name}/{key}": value for key, value in scores.items()})
    return metrics, seconds

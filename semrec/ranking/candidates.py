"""Top-K candidates per example from a sequential recommender that never saw the target.

Two fits of the retriever (SASRec by default), as LlamaRec and ULMRec do it:

* the **valid retriever** is fitted on the training examples only, with early stopping on
  each user's last training example (:func:`~semrec.data.split.holdout_last_train`), and
  proposes the candidates of the training and validation examples;
* the **test retriever** is fitted on the training and validation examples, for the
  valid retriever's best number of epochs (no early stopping: nothing is left to stop
  on without reading a test target), and proposes the candidates of the test examples.

So no candidate list is computed by a model that was trained or stopped on its target.
Candidates exclude the items of the example's history when ``exclude_history`` is on.
A training example whose target the retriever missed gets it in place of its last
candidate, so every training prompt has an answer; evaluation keeps the misses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from semrec.data.split import Example, Split, holdout_last_train


@dataclass
class CandidateSets:
    """Candidates (item ids, retriever order) per example of each part, aligned with ``split``."""

    k: int
    train: list[tuple[int, ...]]
    valid: list[tuple[int, ...]]
    test: list[tuple[int, ...]]
    retriever: str = "sasrec"
    notes: list[str] = dataclasses.field(default_factory=list)
    _index: dict[Example, tuple[int, ...]] | None = dataclasses.field(default=None, repr=False)

    def index(self, split: Split) -> None:
        """Remember which candidates belong to which example of ``split`` (for :meth:`of`)."""
        self._index = {}
        for part in ("train", "valid", "test"):  # test last: it wins a (rare) tie
            for example, candidates in zip(getattr(split, part), getattr(self, part)):
                self._index[example] = candidates

    def of(self, example: Example) -> tuple[int, ...]:
        """The candidates of ``example`` (after :meth:`index`)."""
        if self._index is None:
            raise RuntimeError("CandidateSets.index(split) was not called")
        try:
            return self._index[example]
        except KeyError:
            raise KeyError(
                f"no candidates for {example}: it is not an example of the split"
            ) from None

    def metrics(
        self, examples: Sequence[Example], ks: Sequence[int], split: Split
    ) -> dict[str, float]:
        """The retriever's own ranking of the candidates of ``examples`` (test users):
        ``test/*`` over all of them (a missed target is a miss), ``test_subset/*`` over those
        whose target is a candidate, and ``test/recall@<k>``."""
        from semrec.metrics.ranking import TopKRankingMetrics

        ks = sorted(ks)
        lists = [self.of(ex) for ex in examples]
        ranked = torch.full((len(lists), self.k), -1, dtype=torch.long)
        for row, items in enumerate(lists):
            ranked[row, : len(items)] = torch.tensor(items, dtype=torch.long)
        targets = torch.tensor([ex.target for ex in examples], dtype=torch.long)
        retrieved = (ranked == targets[:, None]).any(dim=1)
        out = {}
        for part, rows in (("test", slice(None)), ("test_subset", retrieved)):
            metric = TopKRankingMetrics(ks, split.num_items)
            if len(targets[rows]):
                metric.update(ranked[rows], targets[rows])
            out.update({f"{part}/{name}": value for name, value in metric.compute().items()})
        out[f"test/recall@{self.k}"] = self.recall(examples)
        return out

    def recall(self, examples: Sequence[Example]) -> float:
        """Fraction of ``examples`` whose target is among their candidates."""
        if not examples:
            return 0.0
        return sum(ex.target in self.of(ex) for ex in examples) / len(examples)


def retrieve_candidates(
    split: Split,
    build: Callable[..., object],
    *,
    k: int = 20,
    exclude_history: bool = True,
    fit: Callable[[object, Split], object],
    name: str = "sasrec",
) -> CandidateSets:
    """Candidates for every example of ``split`` (see the module docstring).

    ``build(**overrides)`` makes an unfitted retriever (a
    :class:`~semrec.cf.base.SequentialRecommender`); ``fit(retriever, split)`` fits it
    (e.g. :func:`~semrec.cf.cache.fit_cached`).
    """
    if k < 1:
        raise ValueError(f"candidates: k must be >= 1, got {k}")
    if k > split.num_items:
        raise ValueError(f"candidates: k={k} is more than the {split.num_items} items")
    valid_retriever = fit(build(), holdout_last_train(split))
    epochs = max(1, int(valid_retriever.best_epoch))
    train_and_valid = dataclasses.replace(
        split, train=[*split.train, *split.valid], test=[], _valid_targets=None
    )
    test_retriever = fit(
        build(max_epochs=epochs, patience=None, eval_every=epochs), train_and_valid
    )

    def top(retriever, examples: Sequence[Example]) -> list[tuple[int, ...]]:
        histories = [ex.history for ex in examples]
        exclude = [ex.history for ex in examples] if exclude_history else None
        ranked = retriever.recommend(histories, k, exclude)
        return [tuple(int(i) for i in row if i >= 0) for row in ranked.tolist()]

    train = [
        _with_target(candidates, ex.target)
        for candidates, ex in zip(top(valid_retriever, split.train), split.train)
    ]
    sets = CandidateSets(
        k=k,
        train=train,
        valid=top(valid_retriever, split.valid),
        test=top(test_retriever, split.test),
        retriever=name,
        notes=[
            f"{name} retriever: valid candidates from a fit on train ({valid_retriever.epochs_run}"
            f" epochs, best {valid_retriever.best_epoch}), test candidates from a fit on "
            f"train+valid ({epochs} epochs)"
        ],
    )
    sets.index(split)
    return sets


def _with_target(candidates: tuple[int, ...], target: int) -> tuple[int, ...]:
    """``candidates`` with ``target`` in place of the last one when it is missing."""
    if target in candidates:
        return candidates
    return (*candidates[:-1], target)

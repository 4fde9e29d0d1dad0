"""What every collaborative sequential recommender shares: padding, the training loop, ranking.

A model is two parts:

- a :class:`SequenceNetwork` (an ``nn.Module``) that turns padded item sequences into one
  vector per sequence, and whose item embedding table doubles as the output layer (scores
  are dot products with every item's embedding, as in RecBole);
- a :class:`SequentialRecommender` (the estimator a user holds): hyper-parameters, ``fit``
  on a leave-one-out :class:`~semrec.data.split.Split`, ``score`` / ``recommend`` /
  ``item_embeddings`` and ``evaluate``. Subclasses only say how to build their network.

Item ids: callers use the split's ids ``0 .. num_items-1``. Inside a network item ``i`` is
row ``i + 1`` of the embedding table and row ``PADDING = 0`` is padding. Sequences are
left aligned and padded on the right (RecBole's layout): position 0 holds the oldest item
of the (capped) history, and the sequence's vector is read at position ``length - 1``.

Training follows RecBole 1.2.1's defaults: every training prefix is one example (that is
``split.train``), cross-entropy over all items (no negative sampling), Adam, an evaluation
on the valid users every ``eval_every`` epochs, and early stopping once more than
``patience`` evaluations in a row score below the best; the best weights are kept.
``fit`` seeds everything it draws (initialisation, dropout, example order) from ``seed``
and restores torch's global RNG, thread count and determinism settings afterwards.
``save`` / ``load`` keep a fitted model on disk (:func:`semrec.cf.cache.fit_cached` uses
them to reuse a fit).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from semrec.artifacts import atomic_dir, read_json, write_json
from semrec.data.split import Example, Split
from semrec.metrics.ranking import TopKRankingMetrics
from semrec.seeding import seeded

PADDING = 0
"""Row of the padding item in every network's embedding table; item ``i`` is row ``i + 1``."""

DEFAULT_KS = (1, 5, 10)

RESULT_NEUTRAL = frozenset({"echo", "num_threads", "eval_batch_size"})
"""Constructor arguments that change only speed or logging, never the fitted model."""

WEIGHTS_FILE = "network.pt"
FIT_RECORD_FILE = "fit.json"


class SequenceNetwork(nn.Module, ABC):
    """Maps right-padded item sequences to one vector each; scores items by dot product.

    Subclasses set ``self.item_embedding`` (``nn.Embedding(num_items + 1, d,
    padding_idx=PADDING)``) and implement :meth:`encode`.
    """

    item_embedding: nn.Embedding

    @abstractmethod
    def encode(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``items``: LongTensor [B, L] of internal ids (right padded); ``lengths``: [B] (>= 1).

        Returns the FloatTensor [B, d] that is compared with the item embeddings.
        """

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores [B, num_items] over every real item (the padding row excluded)."""
        return self.encode(items, lengths) @ self.item_embedding.weight[PADDING + 1 :].T

    @staticmethod
    def last_position(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rows of ``states`` [B, L, d] at position ``lengths - 1``: [B, d]."""
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
        return states.gather(1, index).squeeze(1)


@dataclass(frozen=True)
class Validation:
    """One evaluation on the valid users during ``fit``."""

    epoch: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float


def pad_histories(
    histories: Sequence[Sequence[int]], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories (external ids, oldest first) -> internal ids [N, L] right padded, lengths [N].

    Each history keeps its last ``max_length`` items; ``L`` is the longest kept length (at
    least 1). An empty history becomes a single padding item with length 1, so it still gets
    a (history-free) score.
    """
    kept = [tuple(history)[-max_length:] if max_length else () for history in histories]
    width = max([1, *map(len, kept)])
    items = torch.full((len(kept), width), PADDING, dtype=torch.long)
    for row, history in enumerate(kept):
        if history:
            items[row, : len(history)] = torch.as_tensor(history, dtype=torch.long) + 1
    lengths = torch.tensor([max(1, len(history)) for history in kept], dtype=torch.long)
    return items, lengths


class SequentialRecommender(ABC):
    """Estimator for a next-item model trained on a leave-one-out split (see module docs).

    Args:
        max_history: longest history the network reads (its positional range); ``None``:
            the longest history in the split, i.e. the split's ``max_history`` cap.
        learning_rate, weight_decay: Adam's (RecBole: 1e-3, 0).
        batch_size: training examples per step (RecBole ``train_batch_size``: 2048).
        max_epochs: upper bound on epochs (RecBole ``epochs``: 300).
        patience: stop once more than this many evaluations in a row score below the
            best (RecBole ``stopping_step``: 10; a tie resets the count and its weights are
            kept); ``None`` trains all ``max_epochs``.
        eval_every: epochs between evaluations on ``split.valid`` (RecBole ``eval_step``).
        valid_metric: the metric early stopping watches (``ndcg@10``; any key of
            :class:`~semrec.metrics.ranking.TopKRankingMetrics` at ``ks``).
        ks: cut-offs of the validation metrics.
        eval_batch_size: users per scoring batch.
        seed: seeds initialisation, dropout and the order of the examples: two fits with
            one seed (and one thread count) give identical scores.
        num_threads: torch threads during ``fit`` (``None``: leave as is).
        echo: called with one line per validation (e.g. ``print``); ``None``: silent.

    After ``fit``: ``network``, ``history_length`` (the positional range used),
    ``validations`` (one :class:`Validation` each), ``best_epoch``, ``epochs_run`` and
    ``fit_seconds``.
    """

    def __init__(
        self,
        *,
        max_history: int | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 2048,
        max_epochs: int = 300,
        patience: int | None = 10,
        eval_every: int = 1,
        valid_metric: str = "ndcg@10",
        ks: Sequence[int] = DEFAULT_KS,
        eval_batch_size: int = 4096,
        seed: int = 2020,
        num_threads: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        if max_history is not None and max_history < 1:
            raise ValueError(f"max_history must be >= 1 or None, got {max_history}")
        for name, value in (
            ("batch_size", batch_size),
            ("max_epochs", max_epochs),
            ("eval_every", eval_every),
            ("eval_batch_size", eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.max_history = max_history
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.eval_every = eval_every
        self.valid_metric = valid_metric
        self.ks = sorted(ks)
        watchable = [f"{name}@{k}" for k in self.ks for name in ("hr", "ndcg")]
        if valid_metric not in [*watchable, f"mrr@{max(self.ks)}"]:
            raise ValueError(
                f"valid_metric {valid_metric!r} is not computed with ks={self.ks}; "
                f"choose one of {watchable} or mrr@{max(self.ks)}"
            )
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_threads = num_threads
        self.echo = echo
        self.network: SequenceNetwork | None = None
        self.num_items = 0
        self.history_length = 0
        self.validations: list[Validation] = []
        self.best_epoch = 0
        self.epochs_run = 0
        self.fit_seconds = 0.0
        self.from_cache = False  # set by semrec.cf.fit_cached

    @abstractmethod
    def build_network(self, num_items: int, max_history: int) -> SequenceNetwork:
        """A freshly initialised network for ``num_items`` items and histories up to ``max_history``."""

    @classmethod
    def parameter_names(cls) -> list[str]:
        """Every keyword the constructor accepts, the subclass's first, then the base's."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for name, parameter in inspect.signature(init).parameters.items():
                named = parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
                if named and name != "self" and name not in names:
                    names.append(name)
        return names

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments that change the fitted model, as stored on ``self``.

        Everything but :data:`RESULT_NEUTRAL` (``echo``, ``num_threads``,
        ``eval_batch_size``); subclasses need no override as long as they store each
        argument under its own name.
        """
        return {
            name: getattr(self, name)
            for name in self.parameter_names()
            if name not in RESULT_NEUTRAL
        }

    # ---------------------------------------------------------------- fitting

    @property
    def is_fitted(self) -> bool:
        return self.network is not None

    def fit(self, split: Split) -> SequentialRecommender:
        """Train on ``split.train`` only; evaluate on ``split.valid`` to stop early. Returns self.

        ``split.valid`` targets only choose the epoch whose weights are kept (as in RecBole);
        no gradient ever comes from a valid or test target.
        """
        if not split.train:
            raise ValueError("split.train is empty: nothing to fit on")
        if not split.valid:
            raise ValueError("split.valid is empty: early stopping needs valid examples")
        self.history_length = self.history_length_for(split)
        self.num_items = split.num_items
        start = time.perf_counter()
        with seeded(self.seed, deterministic=True, num_threads=self.num_threads) as generator:
            self.network = self.build_network(split.num_items, self.history_length)
            self._train(split, generator)
        self.fit_seconds = time.perf_counter() - start
        return self

    def history_length_for(self, split: Split) -> int:
        """The positional range a fit on ``split`` uses: ``max_history``, else the longest history.

        Only the histories' lengths (the split's cap) are read from valid / test here.
        """
        return self.max_history or max(
            len(ex.history) for part in (split.train, split.valid, split.test) for ex in part
        )

    def _train(self, split: Split, generator: torch.Generator) -> None:
        network = self._require_network()
        items, lengths = pad_histories([ex.history for ex in split.train], self.history_length)
        targets = torch.tensor([ex.target for ex in split.train], dtype=torch.long)
        optimizer = torch.optim.Adam(
            network.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        self.validations = []
        best_value, best_state, stale = -math.inf, None, 0
        self.best_epoch = self.epochs_run = 0
        for epoch in range(1, self.max_epochs + 1):
            epoch_start = time.perf_counter()
            network.train()
            total_loss = 0.0
            order = torch.randperm(len(targets), generator=generator)
            for batch in order.split(self.batch_size):
                width = int(lengths[batch].max())  # right padding: trailing pads can go
                scores = network(items[batch, :width], lengths[batch])
                loss = F.cross_entropy(scores, targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(batch)
            self.epochs_run = epoch
            if epoch % self.eval_every and epoch != self.max_epochs:
                continue
            metrics = self.ranking_metrics(split.valid)
            validation = Validation(
                epoch, total_loss / len(targets), metrics, time.perf_counter() - epoch_start
            )
            self.validations.append(validation)
            if self.echo is not None:
                self.echo(
                    f"{type(self).__name__} epoch {epoch}: loss {validation.train_loss:.4f}, "
                    f"valid {self.valid_metric} {metrics[self.valid_metric]:.4f}"
                )
            # RecBole's rule: a tie counts as progress (the later weights are kept) and
            # training stops once more than ``patience`` evaluations in a row fall short.
            if metrics[self.valid_metric] >= best_value:
                best_value, stale, self.best_epoch = metrics[self.valid_metric], 0, epoch
                best_state = copy.deepcopy(network.state_dict())
            else:
                stale += 1
                if self.patience is not None and stale > self.patience:
                    break
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write the fitted model to ``directory`` (replaced atomically).

        ``network.pt`` holds the network's ``state_dict``; ``fit.json`` the class, the
        :meth:`hyperparameters`, ``num_items``, ``history_length``, ``best_epoch``,
        ``epochs_run``, ``fit_seconds`` and the validations.
        """
        network = self._require_network()
        record = {
            "class": type(self).__name__,
            "hyperparameters": self.hyperparameters(),
            "num_items": self.num_items,
            "history_length": self.history_length,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "fit_seconds": self.fit_seconds,
            "validations": [dataclasses.asdict(v) for v in self.validations],
        }
        with atomic_dir(directory) as tmp:
            torch.save(network.state_dict(), tmp / WEIGHTS_FILE)
            write_json(tmp / FIT_RECORD_FILE, record)

    def load(self, directory: str | Path) -> SequentialRecommender:
        """Restore a model written by :meth:`save` into ``self``; returns self.

        The stored class and hyper-parameters must be ``self``'s (a ``ValueError`` names
        those that differ). Torch's global RNG is left as it was.
        """
        directory = Path(directory)
        record = read_json(directory / FIT_RECORD_FILE)
        if record["class"] != type(self).__name__:
            raise ValueError(f"{directory} holds a {record['class']}, not a {type(self).__name__}")
        mine = json.loads(json.dumps(self.hyperparameters(), default=str))
        stored = record["hyperparameters"]
        differing = sorted(k for k in set(mine) | set(stored) if mine.get(k) != stored.get(k))
        if differing:
            details = ", ".join(f"{k}: {stored.get(k)!r} != {mine.get(k)!r}" for k in differing)
            raise ValueError(f"{directory} was fitted with other hyper-parameters ({details})")
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):  # initialisation draws are overwritten anyway
            network = self.build_network(record["num_items"], record["history_length"])
        network.load_state_dict(state)
        self.network = network.eval()
        self.num_items = record["num_items"]
        self.history_length = record["history_length"]
        self.best_epoch = record["best_epoch"]
        self.epochs_run = record["epochs_run"]
        self.fit_seconds = record["fit_seconds"]
        self.validations = [Validation(**v) for v in record["validations"]]
        return self

    # -------------------------------------------------------------- inference

    def _require_network(self) -> SequenceNetwork:
        if self.network is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(split) first")
        return self.network

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores FloatTensor [len(histories), num_items] of every item after each history.

        Histories are item ids oldest first; longer ones are cut to their last
        ``history_length`` items.
        """
        network = self._require_network()
        was_training = network.training
        network.eval()
        rows = []
        for start in range(0, len(histories), self.eval_batch_size):
            chunk = histories[start : start + self.eval_batch_size]
            items, lengths = pad_histories(chunk, self.history_length)
            rows.append(network(items, lengths))
        network.train(was_training)
        if not rows:
            return torch.empty(0, self.num_items)
        return torch.cat(rows)

    def item_embeddings(self) -> torch.Tensor:
        """The items' output embeddings FloatTensor [num_items, d] (row ``i`` = item ``i``)."""
        weight = self._require_network().item_embedding.weight
        return weight[PADDING + 1 :].detach().clone()

    def recommend(
        self,
        histories: Sequence[Sequence[int]],
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """Top-``k`` item ids LongTensor [len(histories), k], best first.

        ``exclude[i]`` are items never returned for history ``i``; slots left without an
        item (``k`` above what remains) hold ``-1``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if exclude is not None and len(exclude) != len(histories):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(histories)} histories")
        ranked = []
        for start in range(0, len(histories), self.eval_batch_size):
            stop = start + self.eval_batch_size
            scores = self.score(histories[start:stop])
            if exclude is not None:
                for row, banned in enumerate(exclude[start:stop]):
                    if banned:
                        scores[row, torch.as_tensor(list(banned), dtype=torch.long)] = -math.inf
            top_scores, top_items = scores.topk(min(k, self.num_items), dim=1)
            top_items[top_scores == -math.inf] = -1
            ranked.append(F.pad(top_items, (0, k - top_items.shape[1]), value=-1))
        if not ranked:
            return torch.empty(0, k, dtype=torch.long)
        return torch.cat(ranked)

    def rank(
        self,
        split: Split,
        examples: Sequence[Example],
        k: int,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> torch.Tensor:
        """The baseline protocol's ranking: fit on ``split`` unless fitted, then the top-``k``
        of every example's history (see :meth:`recommend`)."""
        if not self.is_fitted:
            self.fit(split)
        return self.recommend([ex.history for ex in examples], k, exclude)

    def ranking_metrics(
        self,
        examples: Sequence[Example],
        ks: Sequence[int] | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, float]:
        """Full-ranking metrics (HR/NDCG@k, MRR, coverage, ...) of the model on ``examples``."""
        ks = sorted(ks or self.ks)
        metric = TopKRankingMetrics(ks, self.num_items)
        histories = [ex.history for ex in examples]
        targets = torch.tensor([ex.target for ex in examples], dtype=torch.long)
        metric.update(self.recommend(histories, max(ks), exclude), targets)
        return metric.compute()

    def evaluate(
        self,
        split: Split,
        examples: Mapping[str, Sequence[Example]],
        ks: Sequence[int],
        exclude: Mapping[str, Sequence[Sequence[int]] | None] | None = None,
    ) -> dict[str, float]:
        """The baseline protocol (see :mod:`semrec.evaluation.baselines`): fit, then rank.

        Fits on ``split`` unless already fitted; returns ``{"<part>/<metric>": value}`` for
        every part of ``examples`` (e.g. ``valid``, ``test``), plus ``fit/epochs`` and
        ``fit/best_epoch``.
        """
        if not self.is_fitted:
            self.fit(split)
        out: dict[str, float] = {}
        for part, part_examples in examples.items():
            banned = (exclude or {}).get(part)
            for name, value in self.ranking_metrics(part_examples, ks, banned).items():
                out[f"{part}/{name}"] = value
        out["fit/epochs"] = float(self.epochs_run)
        out["fit/best_epoch"] = float(self.best_epoch)
        return out

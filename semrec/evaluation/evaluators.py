"""A paper's extra evaluation of a trained run, as a registered evaluator (``EVALUATORS``).

The test stage runs every evaluator that applies to the run after the ranking metrics, and
adds what it returns to ``metrics.json``; its seconds go to ``time/<name>_s``. An evaluator
reads only :class:`EvaluationInputs`, so a new one needs no change to the run:

* ``token_understanding``: TS-Rec RQ4, Title2SID / SID2Title accuracy
  (``eval.token_understanding.enabled``);
* ``rating_prediction``: ULMRec's MAE / RMSE, when the ``rating_prediction`` task is trained;
* ``next_user``: TTDS's next-user HR / NDCG, when the ``next_user`` task is trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from semrec.artifacts import write_json
from semrec.config import ExperimentConfig
from semrec.errors import RunError
from semrec.evaluation.next_user import evaluate_next_user
from semrec.evaluation.rating import evaluate_rating_task, rating_report
from semrec.evaluation.token_understanding import NoTitlesError, probe_dataset
from semrec.registry import Registry
from semrec.tasks import NextUserTask, RatingPredictionTask


@dataclass(frozen=True)
class EvaluationInputs:
    """What an evaluator may read of a trained run; the callables build their part on demand."""

    config: ExperimentConfig
    model: Any  # the trained causal LM
    datamodule: Any  # test_examples, valid_examples
    dataset: Any  # RecDataset
    tasks: list[tuple[Any, float]]  # the configured (task, weight) pairs
    run_dir: Path
    echo: Callable[[str], None]
    task_context: Callable[[], Any]
    formatter: Callable[[], Any]  # the run's prompt formatter (resolves SID placeholders)
    plain_formatter: Callable[[], Any]  # the formatter without placeholder resolution
    item_trie: Callable[[], Any]
    user_trie: Callable[[], Any]
    item_sids: Callable[[], list[str]]
    beam_search: Callable[[], Any]

    def task(self, kind: type) -> Any | None:
        """The configured task of class ``kind``, or None."""
        return next((task for task, _ in self.tasks if isinstance(task, kind)), None)


class Evaluator(Protocol):
    def applies(self, inputs: EvaluationInputs) -> bool: ...

    def evaluate(self, inputs: EvaluationInputs) -> dict[str, float]: ...


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")


@EVALUATORS.register("token_understanding")
class TokenUnderstanding:
    """TS-Rec RQ4; a few examples of each probe go to ``run_dir/token_understanding.json``."""

    def applies(self, inputs: EvaluationInputs) -> bool:
        return inputs.config.eval.token_understanding.enabled

    def evaluate(self, inputs: EvaluationInputs) -> dict[str, float]:
        try:
            result = probe_dataset(
                inputs.model,
                inputs.plain_formatter(),
                inputs.item_trie(),
                inputs.dataset,
                inputs.item_sids(),
                inputs.config.eval.token_understanding,
                seed=inputs.config.seed,
                batch_size=inputs.config.eval.batch_size,
            )
        except NoTitlesError as err:
            raise RunError(str(err)) from None
        write_json(inputs.run_dir / "token_understanding.json", {"examples": result.examples})
        inputs.echo(
            f"[eval] SID comprehension on {result.n_items} items: Title2SID accuracy "
            f"{result.title2sid_acc:.4f}, SID2Title accuracy {result.sid2title_acc:.4f}"
        )
        return result.metrics()


@EVALUATORS.register("rating_prediction")
class RatingPrediction:
    """MAE / RMSE of the ``rating_prediction`` task on the test items."""

    def applies(self, inputs: EvaluationInputs) -> bool:
        return inputs.task(RatingPredictionTask) is not None

    def evaluate(self, inputs: EvaluationInputs) -> dict[str, float]:
        metrics = evaluate_rating_task(
            inputs.model,
            inputs.formatter(),
            inputs.task(RatingPredictionTask),
            inputs.task_context(),
            inputs.datamodule.test_examples,
            batch_size=inputs.config.eval.batch_size,
        )
        inputs.echo(rating_report(metrics))
        return metrics


@EVALUATORS.register("next_user")
class NextUserPrediction:
    """HR / NDCG of the ``next_user`` task over all users (TTDS)."""

    def applies(self, inputs: EvaluationInputs) -> bool:
        return inputs.task(NextUserTask) is not None

    def evaluate(self, inputs: EvaluationInputs) -> dict[str, float]:
        return evaluate_next_user(
            inputs.model,
            inputs.formatter(),
            inputs.user_trie(),
            inputs.beam_search(),
            inputs.task(NextUserTask),
            inputs.task_context(),
            inputs.datamodule.test_examples,
            inputs.config.eval.ks,
            batch_size=inputs.config.eval.batch_size,
        )

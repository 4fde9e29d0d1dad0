"""The candidate-ranking pieces from ``candidates:``: retrieved candidates and the verbalizer."""

from __future__ import annotations

from collections.abc import Callable

from semrec.config import ExperimentConfig
from semrec.data.split import Split
from semrec.errors import RunError
from semrec.ranking import CandidateSets, VerbalizerRanker, candidate_letters, retrieve_candidates
from semrec.ranking.verbalizer import letter_token_ids


def run_candidates(
    config: ExperimentConfig, split: Split, echo: Callable[[str], None]
) -> CandidateSets:
    """Each example's top ``candidates.k`` from the retriever (fits cached), and a report line."""
    from semrec.cf import fit_cached
    from semrec.evaluation.baselines import BASELINES

    cfg = config.candidates
    params = {"seed": config.seed, **cfg.params}

    def build(**overrides):
        return BASELINES.get(cfg.retriever)(**{**params, **overrides})

    sets = retrieve_candidates(
        split,
        build,
        k=cfg.k,
        exclude_history=cfg.exclude_history,
        fit=fit_cached,
        name=cfg.retriever,
    )
    echo(
        f"[candidates] {cfg.retriever} top {cfg.k}: recall@{cfg.k} "
        f"{sets.recall(split.valid):.4f} on valid, "
        f"{sets.recall(split.test):.4f} on test; " + "; ".join(sets.notes)
    )
    return sets


def verbalizer(config: ExperimentConfig, formatter, k: int) -> VerbalizerRanker:
    """The letter verbalizer of ``k`` candidates in ``formatter``'s tokenizer."""
    try:
        return VerbalizerRanker(letter_token_ids(formatter.response_ids, candidate_letters(k)))
    except ValueError as err:
        raise RunError(f"candidate ranking with {config.model.backbone}: {err}") from None

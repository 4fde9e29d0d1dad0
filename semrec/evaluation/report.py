"""What a run prints and saves: the metrics table (``metrics.md``), its notes, tokenizer stats."""

from __future__ import annotations

from typing import Any

from semrec.config import ExperimentConfig
from semrec.tasks import TASKS


def metrics_table(metrics: dict[str, float], ks: list[int], notes: list[str] | None = None) -> str:
    """One row per method (the tuned LLM, each baseline) on the test users."""
    columns = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + [f"mrr@{max(ks)}"]
    rows = [("semrec (test)", "test/")]
    if any(key.startswith("test_beam/") for key in metrics):  # exact ranking: beam row too
        rows.append(("semrec, beam search (test)", "test_beam/"))
    baselines = sorted(
        {
            key.split("/")[0]
            for key in metrics
            if key.count("/") == 2
            and key.split("/", 2)[2] in columns
            and key.split("/")[0] not in {name for name, _ in NEXT_USER_ROWS}
        }
    )
    rows += [(f"{name} (test)", f"{name}/test/") for name in baselines]
    if any(key.startswith("test_subset/") for key in metrics):  # candidate ranking
        rows += [
            ("semrec, retrieved users (test)", "test_subset/"),
            ("retriever, retrieved users (test)", "retriever/test_subset/"),
        ]
    extra = ["invalid_rate", "coverage"]
    header = "| method | " + " | ".join(c.upper() for c in columns + extra) + " |"
    lines = [header, "|" + "---|" * (len(columns) + len(extra) + 1)]
    for label, prefix in rows:
        cells = []
        for column in columns + extra:
            value = metrics.get(prefix + column)
            cells.append("-" if value is None else f"{value:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    understanding = {
        k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("understanding/")
    }
    if understanding:
        lines.append(
            "\nSID comprehension (TS-Rec RQ4, beam search on "
            f"{int(understanding.get('items', 0))} items): "
            + ", ".join(
                f"{name} {value:.4f}" for name, value in understanding.items() if name != "items"
            )
        )
    if "test/rating_mae" in metrics:
        lines.append(
            "\nRating prediction (MAE / RMSE): "
            + ", ".join(
                f"{label} {metrics[prefix + 'rating_mae']:.4f} / "
                f"{metrics[prefix + 'rating_rmse']:.4f}"
                for label, prefix in (
                    ("semrec", "test/"),
                    ("user mean", "user_mean/test/"),
                    ("global mean", "global_mean/test/"),
                )
                if prefix + "rating_mae" in metrics
            )
        )
    if "next_user/test/users" in metrics:
        lines.append(
            f"\nNext-user prediction (TTDS; {int(metrics['next_user/test/users'])} held-out "
            "interactions, all users ranked): "
            + "; ".join(
                f"{label} "
                + ", ".join(
                    f"{c.upper()} {metrics[prefix + c]:.4f}"
                    for c in columns
                    if prefix + c in metrics
                )
                for label, prefix in ((label, f"{name}/test/") for name, label in NEXT_USER_ROWS)
                if prefix + "users" in metrics
            )
        )
    for note in notes or []:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)


#: the next-user metrics' rows (semrec.evaluation.next_user), shown apart from the items'
NEXT_USER_ROWS = (("next_user", "semrec"), ("next_user_popularity", "popularity"))


def hr_stderr(p: float, n: int) -> float:
    """Standard error of a hit rate ``p`` over ``n`` users (binomial)."""
    return (p * (1 - p) / max(n, 1)) ** 0.5


def report_notes(
    metrics: dict[str, float], config: ExperimentConfig, n_test_users: int, n_train_examples: int
) -> list[str]:
    """The notes under the metrics table: user sample, ranking protocol, capped baselines."""
    ev = config.eval
    notes = []
    n_test = int(metrics.get("test/users", 0))
    if n_test < n_test_users:
        notes.append(
            f"test metrics on {n_test} of {n_test_users} users "
            f"(eval.max_test_users={ev.max_test_users}); standard error of "
            f"HR@10 ~ {hr_stderr(metrics.get('test/hr@10', 0.0), n_test):.3f}"
        )
    if "candidates" in TASKS.get(ev.task).requires:
        protocol = (
            f"ranking: the {config.candidates.k} candidates of the {config.candidates.retriever}"
            " retriever, scored by their letter logits (verbalizer); a target the retriever "
            "missed counts as a miss"
        )
    else:
        protocol = (
            "ranking: "
            + (
                "exact (every item scored)"
                if ev.exact_ranking
                else f"beam search ({ev.num_beams} beams)"
            )
            + f", history items {'masked' if ev.mask_history else 'not masked'} (eval.mask_history)"
        )
    notes.append(protocol + f", decoding in {'bf16' if ev.precision == 'bf16' else 'fp32'}")
    if ev.fusion is not None:
        notes.append(
            f"semrec+{ev.fusion.baseline}: semrec's and {ev.fusion.baseline}'s top-{max(ev.ks)} "
            f"fused by reciprocal rank (weight {ev.fusion.weight:g} on semrec, k "
            f"{ev.fusion.rrf_k}; eval.fusion), a labelled extra row, not semrec alone"
        )
    k = max(ev.ks)
    if f"test_beam/hr@{k}" in metrics:
        exact, beam = metrics[f"test/hr@{k}"], metrics[f"test_beam/hr@{k}"]
        notes.append(
            f"beam search ({ev.num_beams} beams) vs exact ranking: HR@{k} {beam:.4f} vs "
            f"{exact:.4f} ({beam - exact:+.4f}), NDCG@{k} {metrics[f'test_beam/ndcg@{k}']:.4f}"
            f" vs {metrics[f'test/ndcg@{k}']:.4f}"
        )
    for name in ev.baselines:
        cap = ev.baseline_params.get(name, {}).get("max_epochs")
        if cap is not None and metrics.get(f"{name}/fit/epochs") == cap:
            notes.append(
                f"{name} stopped at its epoch cap (eval.baseline_params.{name}.max_epochs="
                f"{cap}) before early stopping would have: it is under-trained here"
            )
    if config.train.max_train_samples:
        notes.append(
            f"trained on {config.train.max_train_samples} sampled pairs per epoch "
            f"(train.max_train_samples), not the full {n_train_examples}"
        )
    return notes


def format_tokenizer_stats(stats: dict[str, Any], entity: str = "items") -> str:
    """Short human summary of :meth:`~semrec.tokenizers.ItemTokenizer.stats` (``entity``: what
    the rows are, items or users)."""
    resolution = stats.get("collision_resolution", {})
    details = ", ".join(
        f"{key}={value}"
        for key, value in resolution.items()
        if key != "strategy" and isinstance(value, (int, float, str, bool))
    )
    lines = [
        f"[tokenize] {stats.get('n_items')} {entity}, {stats.get('levels')} levels; "
        f"collision rate {stats.get('collision_rate_before', 0):.4f} before resolution, "
        f"{stats.get('collision_rate_after', 0):.4f} after "
        f"({resolution.get('strategy', 'none')}{': ' + details if details else ''})"
    ]
    for level in stats.get("per_level", []):
        lines.append(
            f"  level {level.get('level')}: {level.get('used_codes')}/{level.get('codebook_size')} "
            f"codes used, normalised entropy {level.get('normalized_entropy') or 0:.3f}"
        )
    return "\n".join(lines)

"""The markdown metrics table printed at the end of a run and saved as ``metrics.md``."""

from __future__ import annotations


def metrics_table(metrics: dict[str, float], ks: list[int], notes: list[str] | None = None) -> str:
    """One row per method (the tuned LLM, each baseline) on the test users."""
    columns = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + [f"mrr@{max(ks)}"]
    rows = [("semrec (test)", "test/")]
    if any(key.startswith("test_beam/") for key in metrics):  # exact ranking: beam row too
        rows.append(("semrec, beam search (test)", "test_beam/"))
    baselines = sorted({key.split("/")[0] for key in metrics if key.count("/") == 2})
    rows += [(f"{name} (test)", f"{name}/test/") for name in baselines]
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
    for note in notes or []:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines)

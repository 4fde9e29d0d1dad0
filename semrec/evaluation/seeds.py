"""One config over several seeds: mean and standard deviation of every metric."""

from __future__ import annotations

import math
from collections.abc import Mapping


def seed_summary(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric present in every seed's results: mean, sample standard deviation, n.

    The standard deviation is over seeds (``ddof=1``; 0 for a single seed). Timings
    (``time/...``) are left out.
    """
    if not per_seed:
        raise ValueError("no seed results to summarise")
    common = set.intersection(*(set(metrics) for metrics in per_seed.values()))
    summary = {}
    for key in sorted(k for k in common if not k.startswith("time/")):
        values = [float(metrics[key]) for metrics in per_seed.values()]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[key] = {"mean": mean, "std": math.sqrt(var), "n": len(values), "values": values}
    return summary


def seeds_table(summary: Mapping[str, Mapping[str, float]], ks: list[int], seeds: list[int]) -> str:
    """Markdown: one row per method (semrec, each baseline) on the test users, mean ± std."""
    columns = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1]
    methods = [("semrec", "test/")]
    methods += [
        (name, f"{name}/test/")
        for name in sorted({key.split("/")[0] for key in summary if key.count("/") == 2})
        if f"{name}/test/hr@{ks[-1]}" in summary
    ]
    if "test_beam/hr@" + str(ks[-1]) in summary:
        methods.insert(1, ("semrec, beam search", "test_beam/"))
    lines = [
        "| method | " + " | ".join(c.upper() for c in columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for label, prefix in methods:
        cells = []
        for column in columns:
            entry = summary.get(prefix + column)
            cells.append("-" if entry is None else f"{entry['mean']:.4f} ± {entry['std']:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nMean ± standard deviation over seeds {', '.join(map(str, seeds))} "
        f"(n={len(seeds)}); each seed's own table is in seed-<n>/metrics.md."
    )
    return "\n".join(lines)

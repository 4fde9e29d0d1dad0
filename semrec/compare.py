"""``semrec compare``: several configs (or one config with sweeps) x seeds, one readable result.

A *row* is one config variant: a ``--config`` file, or a combination of ``--sweep`` values
applied to it. Each (row, seed) *cell* is an ordinary run in ``OUT/cells/<row>/seed-<n>``.
A cell whose ``cell.json`` fingerprint (resolved config + seed) matches and whose
``metrics.json`` exists is skipped, so a killed compare continues where it stopped (a cell
with training checkpoints resumes from them).

Outputs in ``OUT``:

* ``compare.md`` / ``compare.csv``: mean ± std over seeds of each metric per row (and the
  baselines of the first row's runs), and for every row the paired difference against the
  reference row over the same test users (per-user ranks from each run's ``ranks.json``),
  with a 95% bootstrap interval and p-values (:mod:`semrec.metrics.significance`),
  and for every pair of methods how many test users each hits at @k, alone or together
  (:func:`hit_overlap`);
* ``compare_overlap.csv``: that hit overlap, one line per pair of methods;
* ``compare.png``: grouped bars with error bars (std over seeds);
* ``compare.json``: everything above, machine-readable.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semrec.artifacts import atomic_write, content_hash, read_json, write_json
from semrec.config import ConfigError, ExperimentConfig, load_config
from semrec.metrics.per_user import RANKS_FILE, PerUserRanks, per_user_metric
from semrec.metrics.significance import PairedResult, paired_test

CELL_FILE = "cell.json"
OVERLAP_K = 10


def split_values(text: str) -> list[str]:
    """``a,b,[c, d]`` -> ``["a", "b", "[c, d]"]``: commas inside brackets or braces stay."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if depth != 0 or any(not value for value in values):
        raise ConfigError(f"--sweep values {text!r}: expected comma-separated values like a,b")
    return values


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2`` -> ``(key, [v1, v2])``."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--sweep {text!r}: expected key=value1,value2")
    return key.strip(), split_values(values)


@dataclass
class Row:
    """One config variant: its label, the file it comes from and its overrides."""

    label: str
    config_path: str
    overrides: list[str]

    def config(self, seed: int) -> ExperimentConfig:
        config = load_config(self.config_path, self.overrides)
        return config.model_copy(update={"seed": seed})


def plan_rows(
    config_paths: Sequence[str], sweeps: Sequence[str] = (), overrides: Sequence[str] = ()
) -> list[Row]:
    """Every config x every combination of the sweeps' values (``overrides`` apply to all)."""
    if not config_paths:
        raise ConfigError("compare needs at least one --config")
    parsed = [parse_sweep(sweep) for sweep in sweeps]
    combos = list(itertools.product(*[[f"{key}={v}" for v in values] for key, values in parsed]))
    rows = []
    for path in config_paths:
        for combo in combos:
            label_parts = ([Path(path).stem] if len(config_paths) > 1 else []) + list(combo)
            label = ", ".join(label_parts) or Path(path).stem
            rows.append(Row(label, str(path), [*overrides, *combo]))
    labels = [row.label for row in rows]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"compare rows must differ; got the labels {labels}")
    for row in rows:
        row.config(0)  # a bad key or value fails now, before any cell runs
    return rows


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "row"


@dataclass
class Cell:
    row: Row
    seed: int
    directory: Path

    @property
    def fingerprint(self) -> str:
        return content_hash("compare-cell", self.row.config(self.seed).model_dump(mode="json"))

    def finished(self) -> bool:
        marker = self.directory / CELL_FILE
        if not (marker.is_file() and (self.directory / "metrics.json").is_file()):
            return False
        return read_json(marker).get("fingerprint") == self.fingerprint


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


RunCell = Callable[[ExperimentConfig, Path, bool], dict[str, float]]


def run_cell(
    config: ExperimentConfig, directory: Path, resume: bool, *, overwrite: bool = True
) -> dict[str, float]:
    """One ``semrec fit`` of ``config`` into ``directory``: a compare's cell, or one seed of
    ``semrec fit --seeds``. A compare owns its cells' directories, so by default a cell whose
    row now has another config is retrained (``overwrite``)."""
    from semrec.pipeline import Run

    return Run(config, directory).fit(resume=resume, overwrite=overwrite)


def run_cells(
    rows: Sequence[Row],
    seeds: Sequence[int],
    out: Path,
    echo: Callable[[str], None] = print,
    runner: RunCell = run_cell,
) -> list[Cell]:
    """Run every unfinished cell, printing one progress line per cell with an ETA."""
    cells = [
        Cell(row, seed, out / "cells" / _slug(row.label) / f"seed-{seed}")
        for row in rows
        for seed in seeds
    ]
    todo = [cell for cell in cells if not cell.finished()]
    if len(todo) < len(cells):
        echo(f"[compare] {len(cells) - len(todo)} of {len(cells)} cells already finished")
    spent: list[float] = []
    for index, cell in enumerate(todo, 1):
        start = time.perf_counter()
        resume = any(
            any((cell.directory / name).glob("*.ckpt"))
            for name in ("checkpoints", "post_checkpoints")
        )
        echo(
            f"[compare] cell {index}/{len(todo)}: {cell.row.label}, seed {cell.seed}"
            + (" (resuming)" if resume else "")
        )
        config = cell.row.config(cell.seed)
        if not resume:
            _share_training(cell, config, cells, echo)
        runner(config, cell.directory, resume)
        write_json(
            cell.directory / CELL_FILE,
            {"fingerprint": cell.fingerprint, "row": cell.row.label, "seed": cell.seed},
        )
        spent.append(time.perf_counter() - start)
        left = (len(todo) - index) * float(np.mean(spent))
        echo(
            f"[compare] cell {index}/{len(todo)} done in {_duration(spent[-1])}"
            + (f"; ETA {_duration(left)}" if index < len(todo) else "")
        )
    return cells


def _share_training(
    cell: Cell, config: ExperimentConfig, cells: Sequence[Cell], echo: Callable[[str], None]
) -> None:
    """Start a new cell from the finished SFT of a cell of the same seed whose config
    trains the same model (rows that differ only in ``train.post`` or evaluation keys):
    its tokenizers and adapter are copied, and only what differs runs."""
    from semrec.config import TRAINING_KEYS, config_diff
    from semrec.run_directory import RunDirectory

    target = RunDirectory(cell.directory)
    if target.stages_file.exists():
        return
    for other in cells:
        if other is cell or other.seed != cell.seed:
            continue
        source = RunDirectory(other.directory)
        if "train" not in source.stages() or not source.config_file.is_file():
            continue
        if config_diff(load_config(source.config_file), config, TRAINING_KEYS):
            continue
        if target.take_finished_training(source):
            echo(
                f"[compare] {cell.row.label}, seed {cell.seed}: starts from the finished "
                f"training of {other.row.label} (the same SFT config)"
            )
            return


@dataclass
class Summary:
    """Per method (rows, then baselines): per metric the values over seeds, and per method the
    paired results against the reference."""

    metrics: list[str]
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    paired: dict[str, dict[str, PairedResult]] = field(default_factory=dict)
    reference: str = ""
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overlap_k: int = OVERLAP_K
    overlap: dict[tuple[str, str], HitOverlap] = field(default_factory=dict)

    def mean_std(self, method: str, metric: str) -> tuple[float, float, int] | None:
        values = self.values.get(method, {}).get(metric)
        if not values:
            return None
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return float(np.mean(values)), std, len(values)


def summarize(
    cells: Sequence[Cell],
    rows: Sequence[Row],
    metrics: Sequence[str],
    significance_metrics: Sequence[str],
    reference: str | None = None,
    overlap_k: int = OVERLAP_K,
) -> Summary:
    """Collect each cell's metrics.json and ranks.json into a :class:`Summary`."""
    seeds = sorted({cell.seed for cell in cells})
    summary = Summary(list(metrics), seeds=seeds, overlap_k=overlap_k)
    ranks: dict[str, dict[int, PerUserRanks]] = {}
    first = rows[0].label
    baselines: list[str] = []
    for cell in cells:
        stored = read_json(cell.directory / "metrics.json")
        method = cell.row.label
        for metric in metrics:
            if f"test/{metric}" in stored:
                summary.values.setdefault(method, {}).setdefault(metric, []).append(
                    float(stored[f"test/{metric}"])
                )
        per_user_file = cell.directory / RANKS_FILE
        per_user = PerUserRanks.load(per_user_file) if per_user_file.is_file() else None
        if per_user is not None:
            ranks.setdefault(method, {})[cell.seed] = _renamed(per_user, "semrec", method)
        if method != first:
            continue
        # baselines: taken from the first row's runs (same split and seed as every row's)
        for key, value in stored.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == "test" and parts[2] in metrics:
                if parts[0] not in baselines:
                    baselines.append(parts[0])
                summary.values.setdefault(parts[0], {}).setdefault(parts[2], []).append(value)
        if per_user is not None:
            for name in baselines:
                if name in per_user.methods:
                    ranks.setdefault(name, {})[cell.seed] = _renamed(per_user, name, name)
    order = [row.label for row in rows] + baselines  # rows first, then the baselines
    summary.values = {m: summary.values[m] for m in order if m in summary.values}
    if baselines:
        summary.notes.append(
            f"Baselines ({', '.join(baselines)}) are from the runs of {first!r}; every row "
            "is evaluated on the same split and the same test users per seed."
        )
    summary.reference = reference or first
    if summary.reference not in summary.values:
        raise ConfigError(
            f"--reference {summary.reference!r} is not a row; rows: {sorted(summary.values)}"
        )
    summary.paired = _paired(ranks, summary.reference, significance_metrics, summary.notes)
    summary.overlap = _overlaps(ranks, list(summary.values), overlap_k, summary.notes)
    return summary


def _renamed(per_user: PerUserRanks, method: str, as_name: str) -> PerUserRanks:
    return PerUserRanks(per_user.users, per_user.k, {as_name: per_user.methods[method]})


def _paired(
    ranks: dict[str, dict[int, PerUserRanks]],
    reference: str,
    metrics: Sequence[str],
    notes: list[str],
) -> dict[str, dict[str, PairedResult]]:
    if reference not in ranks:
        notes.append(f"No per-user ranks for {reference!r}: no paired tests.")
        return {}
    out: dict[str, dict[str, PairedResult]] = {}
    base = ranks[reference]
    for method, by_seed in ranks.items():
        if method == reference:
            continue
        seeds = sorted(set(by_seed) & set(base))
        unpaired = [s for s in seeds if by_seed[s].users != base[s].users]
        if not seeds or unpaired:
            notes.append(f"{method}: not paired with {reference} (different test users).")
            continue
        out[method] = {}
        for metric in metrics:
            diffs = [
                by_seed[s].metric(method, metric) - base[s].metric(reference, metric) for s in seeds
            ]
            out[method][metric] = paired_test(diffs)
    return out


@dataclass(frozen=True)
class HitOverlap:
    """Test users hit at @k by method A only, B only, both or neither (means over ``seeds``)."""

    a_only: float
    b_only: float
    both: float
    neither: float
    seeds: int = 1

    @property
    def a_hits(self) -> float:
        return self.a_only + self.both

    @property
    def b_hits(self) -> float:
        return self.b_only + self.both

    @property
    def users(self) -> float:
        return self.a_only + self.b_only + self.both + self.neither

    @property
    def oracle_hr(self) -> float:
        """HR@k of an oracle taking the better of the two lists per user: what fusing can reach."""
        return (self.a_only + self.b_only + self.both) / self.users if self.users else 0.0


OVERLAP_COUNTS = ("a_hits", "b_hits", "a_only", "b_only", "both", "neither", "users")
"""The :class:`HitOverlap` counts in the order compare_overlap.csv and compare.md give them."""


def hit_overlap(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int) -> HitOverlap:
    """Count the users whose target is in the top ``k`` of A only, of B only, of both, of neither.

    ``ranks_a`` and ``ranks_b`` are the 0-based target ranks of the same users in the same
    order (``inf``: not in the list), so a hit is ``rank < k``, HR@k's hit.
    """
    a = per_user_metric(ranks_a, f"hr@{k}").astype(bool)
    b = per_user_metric(ranks_b, f"hr@{k}").astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"hit overlap: {a.size} ranks for A but {b.size} for B")
    return HitOverlap(
        a_only=float(np.sum(a & ~b)),
        b_only=float(np.sum(~a & b)),
        both=float(np.sum(a & b)),
        neither=float(np.sum(~a & ~b)),
    )


def mean_overlap(overlaps: Sequence[HitOverlap]) -> HitOverlap:
    """The mean of per-seed :class:`HitOverlap` counts."""
    names = ("a_only", "b_only", "both", "neither")
    means = {name: float(np.mean([getattr(o, name) for o in overlaps])) for name in names}
    return HitOverlap(**means, seeds=sum(o.seeds for o in overlaps))


def _overlaps(
    ranks: dict[str, dict[int, PerUserRanks]], methods: Sequence[str], k: int, notes: list[str]
) -> dict[tuple[str, str], HitOverlap]:
    """:func:`hit_overlap` of every pair of ``methods`` (in that order), averaged over the
    seeds where both have per-user ranks of the same test users."""
    short = [m for m in methods if any(r.k < k for r in ranks.get(m, {}).values())]
    if short:
        notes.append(f"{', '.join(short)}: ranks kept for fewer than {k} places; no hit overlap.")
    usable = [m for m in methods if m in ranks and m not in short]
    out: dict[tuple[str, str], HitOverlap] = {}
    for a, b in itertools.combinations(usable, 2):
        seeds = sorted(set(ranks[a]) & set(ranks[b]))
        per_seed = [
            hit_overlap(ranks[a][s].methods[a], ranks[b][s].methods[b], k)
            for s in seeds
            if ranks[a][s].users == ranks[b][s].users
        ]
        if per_seed:
            out[(a, b)] = mean_overlap(per_seed)
        else:
            notes.append(f"{a} / {b}: no hit overlap (no seed with the same test users).")
    return out


def _count(value: float) -> str:
    """A mean count: an integer as such, otherwise with two decimals."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def markdown(summary: Summary) -> str:
    """compare.md: the mean ± std table, the paired tests against the reference, the hit
    overlap of every pair of methods."""
    head = ["method"] + [m.upper() for m in summary.metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in summary.values:
        cells = []
        for metric in summary.metrics:
            stats = summary.mean_std(method, metric)
            cells.append("-" if stats is None else f"{stats[0]:.4f} ± {stats[1]:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, summary.seeds))
    lines.append(f"\nMean ± standard deviation over seeds {seeds} (n={len(summary.seeds)}).")
    if summary.paired:
        lines += [
            "",
            f"Paired differences against **{summary.reference}** over the same test users "
            "(per seed, then averaged over seeds); 95% bootstrap interval (10,000 resamples "
            "of users within each seed); * marks bootstrap p < 0.05.",
            "",
            "| method | metric | difference | 95% interval | p (bootstrap) | p (paired t) | pairs |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, results in summary.paired.items():
            for metric, r in results.items():
                star = " *" if r.significant() else ""
                lines.append(
                    f"| {method} | {metric.upper()} | {r.difference:+.4f}{star} | "
                    f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_bootstrap:.4f} | "
                    f"{r.p_t_test:.4f} | {r.n_pairs} |"
                )
    if summary.overlap:
        k = summary.overlap_k
        lines += [
            "",
            f"Hit overlap at @{k}: users hit by A only, B only, both, neither (a hit: the "
            f"target in the top {k}; means over the seeds where both have per-user ranks). "
            f"Oracle HR@{k}: the better of the two lists per user, what fusing them can reach.",
            "",
            "| A | B | A hits | B hits | A only | B only | both | neither | users | "
            f"oracle HR@{k} | seeds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (a, b), o in summary.overlap.items():
            counts = " | ".join(_count(getattr(o, name)) for name in OVERLAP_COUNTS)
            lines.append(f"| {a} | {b} | {counts} | {o.oracle_hr:.4f} | {o.seeds} |")
    lines += [f"\n{note}" for note in summary.notes]
    return "\n".join(lines) + "\n"


def csv_text(summary: Summary) -> str:
    """compare.csv: one line per method; mean/std/n per metric, then the paired columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    paired_metrics = sorted({m for results in summary.paired.values() for m in results})
    header = ["method"]
    for metric in summary.metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_n"]
    for metric in paired_metrics:
        header += [f"{metric}_diff", f"{metric}_ci_low", f"{metric}_ci_high"]
        header += [f"{metric}_p_bootstrap", f"{metric}_p_t_test"]
    writer.writerow(header)
    for method in summary.values:
        line: list[Any] = [method]
        for metric in summary.metrics:
            stats = summary.mean_std(method, metric)
            line += ["", "", ""] if stats is None else [f"{stats[0]:.6f}", f"{stats[1]:.6f}"]
            line += [] if stats is None else [stats[2]]
        for metric in paired_metrics:
            r = summary.paired.get(method, {}).get(metric)
            if r is None:
                line += [""] * 5
            else:
                line += [f"{r.difference:.6f}", f"{r.ci_low:.6f}", f"{r.ci_high:.6f}"]
                line += [f"{r.p_bootstrap:.6f}", f"{r.p_t_test:.6f}"]
        writer.writerow(line)
    return buffer.getvalue()


def overlap_csv_text(summary: Summary) -> str:
    """compare_overlap.csv: one line per pair of methods, its :class:`HitOverlap` counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["a", "b", "k", *OVERLAP_COUNTS, "oracle_hr", "seeds"])
    for (a, b), o in summary.overlap.items():
        counts = [_count(getattr(o, name)) for name in OVERLAP_COUNTS]
        writer.writerow([a, b, summary.overlap_k, *counts, f"{o.oracle_hr:.6f}", o.seeds])
    return buffer.getvalue()


def plot(summary: Summary, path: Path, title: str) -> None:
    """compare.png: per metric a group of bars, one per method, with std error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(summary.values)
    metrics = summary.metrics
    width = 0.8 / max(1, len(methods))
    figure = Figure(figsize=(max(6.0, 1.6 * len(metrics) + 0.5 * len(methods)), 4.6), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for index, method in enumerate(methods):
        means, stds = [], []
        for metric in metrics:
            stats = summary.mean_std(method, metric)
            means.append(np.nan if stats is None else stats[0])
            stds.append(0.0 if stats is None else stats[1])
        positions = np.arange(len(metrics)) + (index - (len(methods) - 1) / 2) * width
        label = method + (" (reference)" if method == summary.reference else "")
        axes.bar(positions, means, width * 0.95, yerr=stds, capsize=3, label=label)
    axes.set_xticks(np.arange(len(metrics)), [m.upper() for m in metrics])
    axes.set_ylabel("test score (mean over seeds)")
    axes.set_title(f"{title}: mean ± std over {len(summary.seeds)} seed(s)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    with atomic_write(path, mode="wb") as fh:
        figure.savefig(fh, format="png")


def compare(
    config_paths: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    sweeps: Sequence[str] = (),
    overrides: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    significance_metrics: Sequence[str] = ("hr@10", "ndcg@10"),
    reference: str | None = None,
    overlap_k: int = OVERLAP_K,
    echo: Callable[[str], None] = print,
    runner: RunCell = run_cell,
) -> Summary:
    """Run (or reuse) every cell, then write compare.md / .csv / .png / .json and
    compare_overlap.csv (hit overlap at @``overlap_k``) in ``out``."""
    out = Path(out)
    rows = plan_rows(config_paths, sweeps, overrides)
    for row in rows:
        train = row.config(seeds[0]).train
        if train.devices != 1 or train.num_nodes != 1:
            raise ConfigError(
                f"semrec compare runs its cells in this one process, but {row.label!r} asks "
                f"for train.devices={train.devices!r}, train.num_nodes={train.num_nodes}; "
                "run multi-process cells with `semrec fit --seeds` one row at a time"
            )
    if metrics is None:
        ks = rows[0].config(0).eval.ks
        metrics = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1]
    echo(
        f"[compare] {len(rows)} row(s) x {len(seeds)} seed(s) -> {out}: "
        + "; ".join(row.label for row in rows)
    )
    cells = run_cells(rows, seeds, out, echo, runner)
    summary = summarize(cells, rows, metrics, significance_metrics, reference, overlap_k)
    table = markdown(summary)
    with atomic_write(out / "compare.md") as fh:
        fh.write(table)
    with atomic_write(out / "compare.csv") as fh:
        fh.write(csv_text(summary))
    with atomic_write(out / "compare_overlap.csv") as fh:
        fh.write(overlap_csv_text(summary))
    plot(summary, out / "compare.png", rows[0].config(0).name)
    write_json(
        out / "compare.json",
        {
            "rows": [vars(row) for row in rows],
            "seeds": list(seeds),
            "reference": summary.reference,
            "values": summary.values,
            "paired": {
                m: {k: vars(r) for k, r in res.items()} for m, res in summary.paired.items()
            },
            "overlap": {
                "k": summary.overlap_k,
                "pairs": [
                    {
                        "a": a,
                        "b": b,
                        **{name: getattr(o, name) for name in OVERLAP_COUNTS},
                        "oracle_hr": o.oracle_hr,
                        "seeds": o.seeds,
                    }
                    for (a, b), o in summary.overlap.items()
                ],
            },
            "notes": summary.notes,
        },
    )
    echo(table)
    echo(
        "[compare] wrote compare.md, compare.csv, compare_overlap.csv, compare.png, "
        f"compare.json in {out}"
    )
    return summary

"""Pictures of a run: the tokenizer's code usage and collisions, and the training curves.

* :func:`plot_tokenizer` (``semrec tokenize --plot`` -> ``tokenizer/diagnostics.png``): per
  level, how many items each code holds, codes sorted from most to least used (a flat
  curve is a well-used codebook, a spike a collapsed one), with the level's used codes and
  normalised entropy; then the normalised entropy per level and the collision rate before
  and after resolution.
* :func:`plot_training_curves` (``semrec fit`` -> ``training_curves.png``): the training
  loss and the validation metrics against the optimisation step, from Lightning's CSV log.

Both draw on a :class:`matplotlib.figure.Figure` (no pyplot, no global backend state) and
write the PNG atomically.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semrec.artifacts import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, mode="wb") as fh:
        figure.savefig(fh, format="png")
    return path


def plot_tokenizer(
    codes: torch.Tensor, stats: Mapping[str, Any], path: str | Path, title: str = ""
) -> Path:
    """Code usage per level (sorted), entropy per level and collision rates; see module."""
    codes = torch.as_tensor(codes)
    sizes = list(stats["codebook_sizes"])
    per_level = list(stats["per_level"])
    levels = codes.shape[1]
    columns = min(levels, 4)
    rows = math.ceil(levels / columns)
    figure = _figure(3.3 * columns, 2.7 * rows + 2.9)
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[1.0] * rows + [1.1])
    for level in range(levels):
        axes = figure.add_subplot(grid[level // columns, level % columns])
        column = codes[:, level]
        column = column[column >= 0]  # PAD: rows without this level (a suffix)
        counts = np.sort(np.bincount(column.numpy(), minlength=sizes[level]))[::-1]
        axes.bar(np.arange(1, len(counts) + 1), counts, width=1.0, color="tab:blue")
        info = per_level[level]
        axes.set_title(
            f"level {level}: {info['used_codes']}/{sizes[level]} codes used,\n"
            f"normalised entropy {info['normalized_entropy']:.2f}",
            fontsize=9,
        )
        axes.set_xlabel("code rank (most used first)", fontsize=8)
        axes.set_ylabel("items with the code", fontsize=8)
        axes.tick_params(labelsize=7)
    entropy_axes = figure.add_subplot(grid[rows, : max(1, columns // 2)])
    entropy = [info["normalized_entropy"] for info in per_level]
    entropy_axes.bar([str(level) for level in range(levels)], entropy, color="tab:green")
    entropy_axes.set_ylim(0, 1.05)
    entropy_axes.set_xlabel("level", fontsize=8)
    entropy_axes.set_ylabel("entropy / log(codebook size)", fontsize=8)
    entropy_axes.set_title("code entropy per level (1 = uniform)", fontsize=9)
    collision_axes = figure.add_subplot(
        grid[rows, max(1, columns // 2) :] if columns > 1 else grid[rows, 0]
    )
    rates = [100 * stats["collision_rate_before"], 100 * stats["collision_rate_after"]]
    bars = collision_axes.bar(["before", "after"], rates, color=["tab:red", "tab:blue"])
    collision_axes.bar_label(bars, labels=[f"{rate:.2f}%" for rate in rates], fontsize=8)
    collision_axes.set_ylim(0, max(rates + [1.0]) * 1.25)
    collision_axes.set_ylabel("items sharing a SID (%)", fontsize=8)
    strategy = stats.get("collision_resolution", {}).get("strategy", "resolution")
    collision_axes.set_title(f"collisions before / after {strategy}", fontsize=9)
    name = stats.get("tokenizer", "tokenizer")
    figure.suptitle(
        f"{title + ': ' if title else ''}{name}, {stats['n_items']} rows, {levels} levels"
    )
    figure.tight_layout()
    return _save(figure, path)


def _plot_post_signals(axes, series: dict[str, list[tuple[int, float]]], keys: list[str]) -> None:
    """Post-training's per-step signals; the KL on its own axis (it is orders smaller)."""
    kl_axes = axes.twinx() if "post/kl" in keys else None
    for key in keys:
        steps, values = zip(*series[key])
        target = kl_axes if key == "post/kl" else axes
        style = {"color": "tab:red", "ls": "--"} if key == "post/kl" else {}
        target.plot(steps, values, lw=0.9, label=key.split("/", 1)[1], **style)
    axes.set_xlabel("optimisation step")
    axes.set_title("post-training signals", fontsize=10)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if kl_axes is not None:
        kl_axes.set_ylabel("KL to the SFT model (k3)", color="tab:red")
        more = kl_axes.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    axes.legend(handles, labels, fontsize=8)


def read_csv_log(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSV log (the newest ``version_*/metrics.csv`` under ``log_dir``): per
    column, the (step, value) points where it was logged."""
    files = sorted(
        Path(log_dir).glob("version_*/metrics.csv"),
        key=lambda f: int(f.parent.name.split("_")[-1]),
    )
    if not files:
        raise FileNotFoundError(f"{log_dir}: no version_*/metrics.csv (Lightning CSV log)")
    series: dict[str, list[tuple[int, float]]] = {}
    with open(files[-1], newline="") as fh:
        for row in csv.DictReader(fh):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                number = float(value)
                if math.isfinite(number):
                    series.setdefault(key, []).append((int(float(step)), number))
    return series


def plot_training_curves(log_dir: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Training loss and validation HR/NDCG against the step, and, for post-training, its
    per-step signals (reward, KL, ...: the ``post/*`` columns); None when nothing was logged."""
    series = read_csv_log(log_dir)
    loss = series.get("train/loss", [])
    validation = sorted(
        key for key in series if key.startswith("val/") and key.split("/")[1][:3] in ("hr@", "ndc")
    )
    signals = sorted(key for key in series if key.startswith("post/"))
    if not loss and not validation:
        return None
    panels = 3 if signals else 2
    figure = _figure(5.25 * panels, 3.8)
    loss_axes = figure.add_subplot(1, panels, 1)
    if loss:
        steps, values = zip(*loss)
        loss_axes.plot(steps, values, lw=0.8, color="tab:blue", alpha=0.5, label="per log step")
        if len(values) >= 10:
            window = max(5, len(values) // 25)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            loss_axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window}")
        loss_axes.legend(fontsize=8)
    loss_axes.set_xlabel("optimisation step")
    loss_axes.set_ylabel("training loss")
    loss_axes.set_title("training loss", fontsize=10)
    loss_axes.grid(alpha=0.3)
    if signals:
        _plot_post_signals(figure.add_subplot(1, panels, 2), series, signals)
    val_axes = figure.add_subplot(1, panels, panels)
    for key in validation:
        steps, values = zip(*series[key])
        val_axes.plot(steps, values, marker="o", ms=3, label=key.split("/", 1)[1].upper())
    val_axes.set_xlabel("optimisation step")
    val_axes.set_ylabel("validation score")
    val_axes.set_title("validation (constrained decoding)", fontsize=10)
    val_axes.grid(alpha=0.3)
    if validation:
        val_axes.legend(fontsize=8, ncol=2)
    else:
        val_axes.text(0.5, 0.5, "no validation ran", ha="center", transform=val_axes.transAxes)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)

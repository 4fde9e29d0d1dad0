"""Diagnostics plots: tokenizer code usage and collisions, training curves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semrec.cli import main
from semrec.evaluation.diagnostics import plot_tokenizer, plot_training_curves, read_csv_log
from semrec.tokenizers import TOKENIZERS

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_tokenizer_plot_is_drawn_from_the_codes_and_stats(tmp_path):
    tokenizer = TOKENIZERS.get("rqkmeans")(levels=2, codebook_size=4, collision="suffix")
    tokenizer.fit(torch.randn(60, 8), seed=0)
    path = plot_tokenizer(tokenizer.codes, tokenizer.stats(), tmp_path / "d.png", "unit")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    with pytest.raises(KeyError):
        plot_tokenizer(tokenizer.codes, {"codebook_sizes": [4, 4, 8]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()  # nothing half-written


def test_training_curves_read_the_newest_csv_log(tmp_path):
    old = tmp_path / "version_0"
    new = tmp_path / "version_1"
    old.mkdir()
    new.mkdir()
    (old / "metrics.csv").write_text("epoch,step,train/loss\n0,1,9.0\n")
    rows = ["epoch,step,train/loss,val/hr@10,val/ndcg@10"]
    rows += [f"0,{s},{3 - s / 100},," for s in range(0, 60, 5)]
    rows += ["0,59,,0.25,0.1", "1,119,,0.5,nan"]
    (new / "metrics.csv").write_text("\n".join(rows) + "\n")
    series = read_csv_log(tmp_path)
    assert series["val/hr@10"] == [(59, 0.25), (119, 0.5)]
    assert series["val/ndcg@10"] == [(59, 0.1)]  # non-finite values are dropped
    assert series["train/loss"][0] == (0, 3.0)
    path = plot_training_curves(tmp_path, tmp_path / "curves.png", "unit")
    assert path is not None and path.read_bytes()[:8] == PNG
    with pytest.raises(FileNotFoundError, match="no version_"):
        read_csv_log(tmp_path / "missing")


def test_semrec_tokenize_plot_writes_the_diagnostics(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["tokenize", "--config", str(TINY), "--run-dir", str(run_dir), "--plot"]) == 0
    png = run_dir / "tokenizer" / "diagnostics.png"
    assert png.read_bytes()[:8] == PNG
    assert f"[tokenize] diagnostics: {png}" in capsys.readouterr().out

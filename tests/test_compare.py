"""semrec compare: cells, skipping and resuming, per-user ranks, paired tests, table/CSV/plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semrec.cli import main
from semrec.compare import (
    HitOverlap,
    compare,
    hit_overlap,
    parse_sweep,
    plan_rows,
    run_cells,
    split_values,
)
from semrec.config import ConfigError
from semrec.metrics.per_user import PerUserRanks, per_user_metric
from semrec.metrics.ranking import TopKRankingMetrics, evaluate_ranked, ranking_metrics
from semrec.metrics.significance import paired_bootstrap, paired_t_test, paired_test

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"


# ---------------------------------------------------------------- per-user ranks


def test_per_user_metrics_average_to_the_run_metrics():
    ranks = torch.tensor([0.0, 3.0, math.inf, 9.0, 1.0])
    expected = ranking_metrics(ranks, [1, 5, 10])
    for name in ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr@10"):
        assert per_user_metric(ranks.numpy(), name).mean() == pytest.approx(expected[name])
    with pytest.raises(ValueError, match="hr@k"):
        per_user_metric(ranks.numpy(), "recall")


def test_ordered_ranks_follow_the_rows_not_the_batch_order():
    metric = TopKRankingMetrics([2], num_items=5)
    # rows 2 and 0 come first (sorted by prompt length), then row 1
    metric.update(torch.tensor([[4, 1], [0, 3]]), torch.tensor([1, 2]), torch.tensor([2, 0]))
    metric.update(torch.tensor([[2, 0]]), torch.tensor([2]), torch.tensor([1]))
    assert metric.ordered_ranks().tolist() == [math.inf, 0.0, 1.0]
    _, in_order = evaluate_ranked(torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 0]), [2], 5)
    assert in_order.tolist() == [1.0, math.inf]


def test_per_user_ranks_round_trip_and_refuse_mismatches(tmp_path):
    ranks = PerUserRanks(["u1", "u2"], 10, {"semrec": np.array([0.0, math.inf])})
    ranks.save(tmp_path / "ranks.json")
    assert json.loads((tmp_path / "ranks.json").read_text())["ranks"]["semrec"] == [0, None]
    back = PerUserRanks.load(tmp_path / "ranks.json")
    assert back.users == ["u1", "u2"] and back.metric("semrec", "hr@10").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="top 10 only"):
        back.metric("semrec", "hr@20")
    (tmp_path / "bad.json").write_text('{"k": 10, "users": ["a"], "ranks": {"x": [1, 2]}}')
    with pytest.raises(ValueError, match="bad.json: x has 2 ranks for 1 users"):
        PerUserRanks.load(tmp_path / "bad.json")


# ---------------------------------------------------------------- significance


def test_paired_tests_find_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    better = [rng.normal(0.1, 0.3, 400) for _ in range(3)]
    stat, low, high, p = paired_bootstrap(better, resamples=2000)
    assert low < stat < high and low > 0 and p < 0.01
    assert paired_t_test(better) < 0.01
    null = [rng.choice([-1.0, 0.0, 1.0], 300) for _ in range(2)]
    null = [d - d.mean() for d in null]  # exactly zero mean per seed
    result = paired_test(null, resamples=2000)
    assert result.p_bootstrap > 0.5 and result.p_t_test > 0.5 and not result.significant()
    assert result.n_pairs == 600
    assert paired_t_test([np.zeros(5)]) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([np.array([])])


def test_the_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    diffs = rng.normal(0.05, 1.0, 2000)
    _, low, high, _ = paired_bootstrap([diffs], resamples=4000)
    se = diffs.std(ddof=1) / math.sqrt(diffs.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)


# ---------------------------------------------------------------- hit overlap

INF = math.inf
# five users' 0-based target ranks; at @10: A hits users 0, 1, 4 (rank 9 is the 10th place),
# B hits users 1 and 2 (rank 10 is the 11th place): A only {0, 4}, B only {2}, both {1},
# neither {3}
RANKS_A = np.array([0.0, 3.0, INF, 12.0, 9.0])
RANKS_B = np.array([INF, 2.0, 0.0, INF, 10.0])


def test_hit_overlap_counts_users_hit_by_one_both_or_neither():
    at_10 = hit_overlap(RANKS_A, RANKS_B, 10)
    assert at_10 == HitOverlap(a_only=2, b_only=1, both=1, neither=1)
    assert (at_10.a_hits, at_10.b_hits, at_10.users) == (3, 2, 5)
    assert at_10.oracle_hr == pytest.approx(4 / 5)
    # at @5, user 4 (rank 9) is a miss for A too
    assert hit_overlap(RANKS_A, RANKS_B, 5) == HitOverlap(a_only=1, b_only=1, both=1, neither=2)
    assert hit_overlap(RANKS_B, RANKS_A, 10) == HitOverlap(a_only=1, b_only=2, both=1, neither=1)
    with pytest.raises(ValueError, match="5 ranks for A but 4 for B"):
        hit_overlap(RANKS_A, RANKS_B[:4], 10)


def _overlap_runner(config, directory, resume):
    """Seed 0: row rqkmeans has RANKS_A, row random_ids RANKS_B, popularity hits no one.
    Seed 1: rqkmeans hits everyone, random_ids no one, popularity users 0 and 1."""
    a_row = config.items.tokenizer.name == "rqkmeans"
    if config.seed == 0:
        ranks = RANKS_A if a_row else RANKS_B
        pop = np.full(5, INF)
    else:
        ranks = np.zeros(5) if a_row else np.full(5, INF)
        pop = np.array([0.0, 1.0, INF, INF, INF])
    per_user = PerUserRanks([f"u{u}" for u in range(5)], 10, {"semrec": ranks, "popularity": pop})
    directory.mkdir(parents=True, exist_ok=True)
    per_user.save(directory / "ranks.json")
    metrics = {"test/hr@10": float(np.mean(ranks < 10)), "popularity/test/hr@10": 0.0}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def _overlap_compare(out: Path, overlap_k: int = 10):
    return compare(
        [str(TINY)],
        [0, 1],
        out,
        sweeps=["items.tokenizer.name=rqkmeans,random_ids"],
        metrics=["hr@10"],
        significance_metrics=["hr@10"],
        overlap_k=overlap_k,
        runner=_overlap_runner,
        echo=lambda line: None,
    )


def test_compare_reports_the_hit_overlap_of_every_pair_averaged_over_seeds(tmp_path):
    summary = _overlap_compare(tmp_path)
    a, b = "items.tokenizer.name=rqkmeans", "items.tokenizer.name=random_ids"
    # rows vs rows: seed 0 (2, 1, 1, 1) and seed 1 (5, 0, 0, 0)
    expected = {
        (a, b): HitOverlap(a_only=3.5, b_only=0.5, both=0.5, neither=0.5, seeds=2),
        # seed 0 (3, 0, 0, 2), seed 1 (3, 0, 2, 0)
        (a, "popularity"): HitOverlap(a_only=3.0, b_only=0.0, both=1.0, neither=1.0, seeds=2),
        # seed 0 (2, 0, 0, 3), seed 1 (0, 2, 0, 3)
        (b, "popularity"): HitOverlap(a_only=1.0, b_only=1.0, both=0.0, neither=3.0, seeds=2),
    }
    assert summary.overlap == expected
    with open(tmp_path / "compare_overlap.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert [(line["a"], line["b"]) for line in lines] == list(expected)
    assert lines[0] == {
        "a": a,
        "b": b,
        "k": "10",
        "a_hits": "4",
        "b_hits": "1",
        "a_only": "3.50",
        "b_only": "0.50",
        "both": "0.50",
        "neither": "0.50",
        "users": "5",
        "oracle_hr": "0.900000",
        "seeds": "2",
    }
    table = (tmp_path / "compare.md").read_text()
    assert "Hit overlap at @10: users hit by A only, B only, both, neither" in table
    assert f"| {a} | {b} | 4 | 1 | 3.50 | 0.50 | 0.50 | 0.50 | 5 | 0.9000 | 2 |" in table
    stored = json.loads((tmp_path / "compare.json").read_text())["overlap"]
    assert stored["k"] == 10 and len(stored["pairs"]) == 3
    assert stored["pairs"][2] | {"oracle_hr": None} == {
        "a": b,
        "b": "popularity",
        "a_hits": 1.0,
        "b_hits": 1.0,
        "a_only": 1.0,
        "b_only": 1.0,
        "both": 0.0,
        "neither": 3.0,
        "users": 5.0,
        "oracle_hr": None,
        "seeds": 2,
    }
    # a k beyond the kept ranks: no overlap table, and a note saying why
    short = _overlap_compare(tmp_path, overlap_k=20)
    assert short.overlap == {}
    assert any("fewer than 20 places" in note for note in short.notes)
    assert "Hit overlap" not in (tmp_path / "compare.md").read_text()


# ---------------------------------------------------------------- planning


def test_sweeps_make_the_product_of_rows_and_bad_keys_fail_early():
    assert split_values("a, [1, 2],{x: 1}") == ["a", "[1, 2]", "{x: 1}"]
    assert parse_sweep("train.lr=0.1,0.2") == ("train.lr", ["0.1", "0.2"])
    with pytest.raises(ConfigError, match="key=value1,value2"):
        parse_sweep("train.lr")
    rows = plan_rows(
        [str(TINY)],
        ["items.tokenizer.name=rqkmeans,random_ids", "train.lr=0.1,0.2"],
        ["train.epochs=1"],
    )
    assert [row.label for row in rows][:2] == [
        "items.tokenizer.name=rqkmeans, train.lr=0.1",
        "items.tokenizer.name=rqkmeans, train.lr=0.2",
    ]
    assert len(rows) == 4 and rows[3].config(5).train.lr == 0.2 and rows[3].config(5).seed == 5
    with pytest.raises(ConfigError):
        plan_rows([str(TINY)], ["train.no_such_key=1,2"])


def _fake_runner(calls, fail_at=None):
    """A cell runner writing metrics.json and ranks.json: row 'b' beats row 'a' by design."""

    def run(config, directory, resume):
        calls.append((config.items.tokenizer.name, config.seed, resume))
        if fail_at is not None and len(calls) == fail_at:
            (directory / "checkpoints").mkdir(parents=True, exist_ok=True)
            (directory / "checkpoints" / "last.ckpt").write_text("x")
            raise KeyboardInterrupt
        rng = np.random.default_rng(config.seed)
        n = 200
        good = config.items.tokenizer.name == "random_ids"
        ranks = np.where(rng.random(n) < (0.6 if good else 0.2), 0.0, math.inf)
        pop = np.where(rng.random(n) < 0.1, 1.0, math.inf)
        per_user = PerUserRanks(
            [str(u) for u in range(n)], 10, {"semrec": ranks, "popularity": pop}
        )
        directory.mkdir(parents=True, exist_ok=True)
        per_user.save(directory / "ranks.json")
        metrics = {"test/hr@10": float(np.mean(ranks < 10)), "popularity/test/hr@10": 0.1}
        (directory / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return run


def test_finished_cells_are_skipped_and_a_killed_compare_resumes(tmp_path):
    sweep = ["items.tokenizer.name=rqkmeans,random_ids"]
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        compare([str(TINY)], [0, 1], tmp_path, sweeps=sweep, runner=_fake_runner(calls, 3))
    assert calls == [("rqkmeans", 0, False), ("rqkmeans", 1, False), ("random_ids", 0, False)]
    calls.clear()
    lines: list[str] = []
    summary = compare(
        [str(TINY)],
        [0, 1],
        tmp_path,
        sweeps=sweep,
        metrics=["hr@10"],
        significance_metrics=["hr@10"],
        runner=_fake_runner(calls),
        echo=lines.append,
    )
    assert calls == [("random_ids", 0, True), ("random_ids", 1, False)]
    assert "[compare] 2 of 4 cells already finished" in lines
    assert any("cell 1/2 done in" in line and "ETA" in line for line in lines)
    better = summary.paired["items.tokenizer.name=random_ids"]["hr@10"]
    assert better.difference > 0.3 and better.significant()
    assert summary.paired["popularity"]["hr@10"].difference < 0
    calls.clear()
    compare([str(TINY)], [0, 1], tmp_path, sweeps=sweep, runner=_fake_runner(calls))
    assert calls == []  # everything finished: nothing runs again


def test_compare_on_the_tiny_config_writes_the_table_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--config",
            str(TINY),
            "--sweep",
            "items.tokenizer.name=rqkmeans,random_ids",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "train.epochs=4",
            "train.check_val_every_n_epoch=4",
            "eval.baselines=[popularity]",
        ]
    )
    assert code == 0
    table = (out / "compare.md").read_text()
    assert "| items.tokenizer.name=rqkmeans |" in table and "| popularity |" in table
    assert "Paired differences against **items.tokenizer.name=rqkmeans**" in table
    with open(out / "compare.csv") as fh:
        rows = {row["method"]: row for row in csv.DictReader(fh)}
    assert list(rows) == [  # the rows in sweep order, then the baselines
        "items.tokenizer.name=rqkmeans",
        "items.tokenizer.name=random_ids",
        "popularity",
    ]
    assert rows["popularity"]["hr@10_n"] == "2" and rows["popularity"]["hr@10_diff"] != ""
    for seed in (0, 1):
        cell = out / "cells" / "items.tokenizer.name=rqkmeans" / f"seed-{seed}"
        stored = json.loads((cell / "metrics.json").read_text())
        per_user = PerUserRanks.load(cell / "ranks.json")
        assert per_user.metric("semrec", "hr@10").mean() == pytest.approx(stored["test/hr@10"])
        assert per_user.metric("popularity", "ndcg@10").mean() == pytest.approx(
            stored["popularity/test/ndcg@10"]
        )
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "wrote compare.md" in capsys.readouterr().out


def test_rows_that_differ_only_in_post_training_share_one_sft(tmp_path: Path) -> None:
    """A post-training row's cell starts from the finished SFT of the row before it (same
    seed, same training keys): the SFT is trained once and its adapter copied."""
    rows = plan_rows(
        [str(TINY)],
        ["train.post=null,{method: dpo, lr: 0.001, prompts_per_epoch: 32, batch_size: 16}"],
        ["train.epochs=2", "train.check_val_every_n_epoch=1", "train.progress_bar=false"],
    )
    lines: list[str] = []
    cells = run_cells(rows, [7], tmp_path, echo=lines.append)
    sft, post = (cell.directory for cell in cells)
    assert any("starts from the finished training of train.post=null" in line for line in lines)
    assert (sft / "adapter" / "trainable.safetensors").read_bytes() == (
        post / "adapter" / "trainable.safetensors"
    ).read_bytes()
    stages = json.loads((post / "stages.json").read_text())
    assert stages["train"] == json.loads((sft / "stages.json").read_text())["train"]
    assert "post" in stages and (post / "post_adapter").is_dir()

"""Multi-process training and evaluation through Lightning's strategies (CPU DDP, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semrec.config import load_config
from semrec.data import leave_one_out
from semrec.data.dataset import RecDataset
from semrec.distributed import is_rank_zero, shard, shard_batches
from semrec.factories import training
from semrec.prompts.compact import CompactSequences
from semrec.prompts.datamodule import GenRecDataModule
from semrec.run_directory import RunError

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("sizes", [[8] * 10, [8] * 9 + [1], [8] * 9 + [3], [5, 2, 8, 1]])
def test_shards_of_an_epoch_hold_every_item_once_in_equal_steps(sizes, world) -> None:
    start, batches = 0, []
    for size in sizes:
        batches.append(list(range(start, start + size)))
        start += size
    shares = [shard_batches(batches, rank, world) for rank in range(world)]
    seen = sorted(i for share in shares for batch in share for i in batch)
    assert seen == list(range(start))  # once each, none dropped, none padded
    assert len({len(share) for share in shares}) == 1  # every rank steps together
    assert all(batch for share in shares for batch in share)  # no empty batch
    if world == 1:
        assert shares[0] == batches


def test_shards_refuse_fewer_items_than_processes() -> None:
    with pytest.raises(ValueError, match="cannot give each of 4 processes a batch"):
        shard_batches([[0, 1, 2]], 0, 4)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard([1, 2, 3], 2, 2)


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "3", "LOCAL_RANK": "1"}, False),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher, a child on node 0
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),  # the main process of node 1
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "2"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, False),  # Lightning's child in a SLURM shell
    ],
)
def test_rank_zero_is_read_from_the_launcher(monkeypatch, env, zero) -> None:
    for name in (
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "GROUP_RANK",
        "SLURM_PROCID",
        "JSM_NAMESPACE_RANK",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_rank_zero() is zero


def test_datamodule_shards_training_and_evaluation_across_processes() -> None:
    rng = np.random.default_rng(0)
    lengths = [3, 9, 17, 30, 6, 11, 25]
    dataset = RecDataset(
        name="toy",
        user_ids=[f"u{u}" for u in range(len(lengths))],
        item_ids=[f"i{i}" for i in range(12)],
        users=np.repeat(np.arange(len(lengths)), lengths),
        items=rng.integers(0, 12, sum(lengths)),
        timestamps=np.concatenate([np.arange(n) for n in lengths]),
    )
    split = leave_one_out(dataset, max_history=4)
    codes = [[4 + i % 3, 7 + i // 3 % 4] for i in range(12)]
    source = CompactSequences(split, codes, sep_id=3, pad_id=1, max_history=4, window_items=2)

    def datamodule(rank: int, world: int):
        module = GenRecDataModule(source, split, batch_size=4, eval_batch_size=2)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0)
        return module

    whole = datamodule(0, 1)
    items = len(source.epoch_items(0))
    assert sorted(i for b in whole.epoch_batches(0) for i in b) == list(range(items))
    shares = [datamodule(rank, 2).epoch_batches(0) for rank in range(2)]
    assert len(shares[0]) == len(shares[1])
    assert sorted(i for share in shares for b in share for i in b) == list(range(items))
    rows = [
        [int(r) for batch in datamodule(rank, 2).test_dataloader() for r in batch["rows"]]
        for rank in range(2)
    ]
    assert sorted(rows[0] + rows[1]) == list(range(len(split.test)))
    assert not set(rows[0]) & set(rows[1])


@pytest.mark.parametrize(
    ("strategy", "error", "message"),
    [
        ("fdsp", RunError, "unknown Lightning strategy 'fdsp'"),
        ("ddp_spawn", RunError, "never reach this one"),
        ("fsdp", NotImplementedError, "shards the parameters"),
        ("deepspeed_stage_3", NotImplementedError, "shards the parameters"),
        ("deepspeed_stage_2", NotImplementedError, "not supported by semrec yet"),
    ],
)
def test_unsupported_strategies_are_refused_by_name(strategy, error, message) -> None:
    config = load_config(TINY, [f"train.strategy={strategy}"])
    with pytest.raises(error, match=message):
        training.hardware(config.train)


def test_hardware_passes_straight_through_to_lightning() -> None:
    config = load_config(
        TINY,
        ["train.accelerator=cpu", "train.strategy=ddp", "train.devices=2", "train.num_nodes=1"],
    )
    assert training.hardware(config.train) == {
        "accelerator": "cpu",
        "strategy": "ddp",
        "devices": 2,
        "num_nodes": 1,
        "use_distributed_sampler": False,
    }


def _semrec(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "semrec.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_process_ddp_run_equals_a_one_process_evaluation(tmp_path: Path) -> None:
    """Lightning's launcher starts a second `semrec fit`; the two train on halves of each
    batch and evaluate halves of the users. A 1-process `semrec test` of the saved weights
    must give the same metrics and the same rank for every user."""
    run = tmp_path / "ddp"
    quick = ["train.epochs=10", "train.check_val_every_n_epoch=5", "train.progress_bar=false"]
    fit = _semrec(
        "fit",
        "--config",
        str(TINY),
        "--run-dir",
        str(run),
        *quick,
        "train.accelerator=cpu",
        "train.strategy=ddp",
        "train.devices=2",
        "eval.baselines=[popularity]",
    )
    assert fit.stdout.count("[run] tiny ->") == 1  # the second process says nothing
    # epochs count the examples of both processes: all 240, once each
    assert "[train] epoch 1: 240 examples" in fit.stdout
    distributed = json.loads((run / "metrics.json").read_text())
    distributed_ranks = json.loads((run / "ranks.json").read_text())
    assert distributed["test/users"] == 48 and distributed["test/hr@10"] > 0

    _semrec("test", "--run", str(run), "train.strategy=auto", "train.devices=1")
    single = json.loads((run / "metrics.json").read_text())
    for name, value in distributed.items():
        if name.startswith(("test/", "popularity/")):
            assert single[name] == value, name
    assert json.loads((run / "ranks.json").read_text()) == distributed_ranks


def test_compare_refuses_multi_process_cells(tmp_path: Path) -> None:
    from semrec.compare import compare
    from semrec.config import ConfigError

    with pytest.raises(ConfigError, match="train.devices=2"):
        compare([str(TINY)], [0], tmp_path, overrides=["train.devices=2"], echo=lambda _: None)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_checkpoint_resumes_only_with_the_same_number_of_processes() -> None:
    from semrec.models.module import GenRecModule

    module = GenRecModule.__new__(GenRecModule)  # only the checkpoint hooks are exercised
    torch.nn.Module.__init__(module)
    module._trainer = SimpleNamespace(world_size=1)
    module._trainable_names = lambda: set()
    with pytest.raises(RuntimeError, match="2 process\\(es\\), this one has 1"):
        module.on_load_checkpoint({"state_dict": {}, "world_size": 2})
    module.on_load_checkpoint({"state_dict": {}, "world_size": 1})


def test_fewer_eval_users_than_processes_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    dataset = RecDataset(
        name="toy",
        user_ids=["u0", "u1"],
        item_ids=[f"i{i}" for i in range(6)],
        users=np.repeat([0, 1], 5),
        items=rng.integers(0, 6, 10),
        timestamps=np.concatenate([np.arange(5), np.arange(5)]),
    )
    split = leave_one_out(dataset, max_history=4)
    source = CompactSequences(split, [[4, 7]] * 6, sep_id=3, pad_id=1, max_history=4)
    module = GenRecDataModule(source, split)
    module.trainer = SimpleNamespace(global_rank=0, world_size=4, current_epoch=0)
    with pytest.raises(ValueError, match="2 test users cannot give each of 4 processes one"):
        module.test_dataloader()


def test_fit_seeds_refuses_multi_process_runs(tmp_path: Path, capsys) -> None:
    from semrec.cli import main

    argv = ["fit", "--config", str(TINY), "--run-dir", str(tmp_path / "r"), "--seeds", "0,1"]
    assert main([*argv, "train.devices=2"]) == 1
    assert "one `semrec fit ... seed=N` per seed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

"""Trustworthy runs: the best checkpoint, resume after SIGKILL, read-only `semrec test`, seeds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from semrec.cli import main
from semrec.config import ConfigError, load_config
from semrec.models.checkpoint import WEIGHTS_FILE, BestAdapterCheckpoint
from semrec.pipeline import Run

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
# the tiny setup with TTDS towers trained with the LLM (their codes must resume too)
TTDS_TINY = TINY.with_name("ttds_tiny.yaml")
SCORES = [0.2, 0.5, 0.3, 0.7, 0.6]  # the monitored value at validations 1..5


class PatternModule(L.LightningModule):
    """Its weight is the number of optimizer steps taken; validation k logs SCORES[k-1]
    in ``on_validation_epoch_end``, as GenRecModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.model.weight)
        self.validations = 0
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.weight_at_validation: list[float] = []

    def training_step(self, batch, batch_idx):
        return (self.model.weight * 0 - 1).sum()  # d loss / d w = 0; the step is set below

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.model.weight += 1

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        score = SCORES[self.validations]
        self.validations += 1
        self.weight_at_validation.append(float(self.model.weight))
        self.last_metrics["val"] = {"ndcg@10": score, "validation": float(self.validations)}
        self.log("val/ndcg@10", score)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_best_checkpoint_saves_the_weights_of_the_validation_it_scores(tmp_path: Path) -> None:
    module = PatternModule()
    callback = BestAdapterCheckpoint(tmp_path / "best", monitor="val/ndcg@10")
    data = torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)
    trainer = L.Trainer(
        max_epochs=len(SCORES),
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    best = max(range(len(SCORES)), key=SCORES.__getitem__)  # validation 4 (index 3)
    assert callback.best == pytest.approx(SCORES[best])
    assert callback.best_metrics == {"ndcg@10": SCORES[best], "validation": best + 1.0}
    saved = load_file(str(tmp_path / "best" / WEIGHTS_FILE))["weight"]
    assert float(saved) == module.weight_at_validation[best] == 3.0 * (best + 1)
    info = json.loads((tmp_path / "best" / "info.json").read_text())["metrics"]
    assert info["val/ndcg@10"] == pytest.approx(SCORES[best]) and info["step"] == 3 * (best + 1)


def test_a_single_validation_is_saved(tmp_path: Path) -> None:
    module = PatternModule()
    callback = BestAdapterCheckpoint(tmp_path / "best", monitor="val/ndcg@10")
    data = torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    assert callback.saved and callback.best_metrics == {"ndcg@10": SCORES[0], "validation": 1.0}


# ---------------------------------------------------------------------------- resume

# A short tiny run: 15 batches an epoch, step checkpoints every 4 steps, validation every
# 2 epochs; LoRA with dropout, so the RNG state, the learning-rate schedule, the AdamW
# moments and the data position must all be restored exactly.
RESUME_OVERRIDES = [
    "train.epochs=4",
    "train.check_val_every_n_epoch=2",
    "train.checkpoint_every_n_steps=4",
    "model.lora={enabled: true, r: 4, alpha: 8, dropout: 0.1}",
]
KILL_AT_STEP = 22  # after the step-20 checkpoint: mid-epoch 2 of tiny (15 batches an
# epoch), mid-epoch 1 of ttds_tiny (32): a resume inside the first epoch must work too

STALLING_FIT = """
import sys, time
from pathlib import Path
import lightning as L
import semrec.factories.training as training
from semrec.cli import main

class Stall(L.Callback):
    # blocks one training loop at a step, after that step's checkpoints were written
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if type(module).__name__ == {module!r} and trainer.global_step == {step}:
            Path({ready!r}).write_text("stalled")
            time.sleep(600)

original = training.resume_checkpoints
training.resume_checkpoints = lambda *a: [*original(*a), Stall()]
sys.exit(main(sys.argv[1:]))
"""


def _fit_command(run_dir: Path, *extra: str, config: Path = TINY) -> list[str]:
    return ["fit", "--config", str(config), "--run-dir", str(run_dir), *RESUME_OVERRIDES, *extra]


def _semrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from semrec.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


@contextlib.contextmanager
def _stalled_fit(
    run_dir: Path,
    env: dict[str, str],
    ready: Path,
    config: Path = TINY,
    *extra: str,
    step: int = KILL_AT_STEP,
    module: str = "GenRecModule",
) -> Iterator[subprocess.Popen]:
    """A ``semrec fit`` process blocked at ``step`` of the loop training ``module`` (SFT's
    ``GenRecModule``, or ``PostTrainingModule``), its checkpoints written and its lock held;
    killed on leaving the block if it still runs."""
    script = textwrap.dedent(STALLING_FIT).format(step=step, ready=str(ready), module=module)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *_fit_command(run_dir, *extra, config=config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "training never reached the stall step"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _metrics(run_dir: Path) -> dict[str, float]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


@pytest.mark.parametrize("config", [TINY, TTDS_TINY], ids=["static", "ttds"])
def test_a_killed_training_resumes_to_the_same_result(tmp_path: Path, config: Path) -> None:
    env = {**os.environ, "SEMREC_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _semrec(_fit_command(straight, config=config), env)
    assert done.returncode == 0, done.stderr[-3000:]

    with _stalled_fit(killed, env, tmp_path / "stalled", config) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    step_ckpt = torch.load(killed / "checkpoints" / "step.ckpt", weights_only=False)
    assert step_ckpt["global_step"] == 20  # the newest step checkpoint: mid-epoch
    assert not [p for p in (killed / "checkpoints").iterdir() if p.suffix == ".tmp"]

    resumed = _semrec([*_fit_command(killed, config=config), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert _metrics(killed) == _metrics(straight)
    a = load_file(str(straight / "adapter" / WEIGHTS_FILE))
    b = load_file(str(killed / "adapter" / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("items", "users") if config == TTDS_TINY else ():
        codes = [
            load_file(str(run / "adapter" / name / "state.safetensors"))["codes"]
            for run in (straight, killed)
        ]
        assert torch.equal(*codes)

    # a resumed run whose training config differs is refused, naming the keys
    refused = _semrec([*_fit_command(killed, config=config), "train.lr=0.01", "--resume"], env)
    assert refused.returncode == 2
    assert "train.lr: 0.003 -> 0.01" in refused.stderr


# post-training (train.post) over the run above: 15 prompt batches an epoch; LoRA dropout
# and the popularity negatives draw from the RNG
POST_TRAINING = [
    "train.progress_bar=false",
    "train.post={method: sdpo, negatives: 2, negative_source: popularity, lr: 0.001, "
    "batch_size: 16, epochs: 2, val_check_interval: 0.5}",
]


def test_a_killed_post_training_resumes_to_the_same_result(tmp_path: Path) -> None:
    env = {**os.environ, "SEMREC_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _semrec(_fit_command(straight, *POST_TRAINING), env)
    assert done.returncode == 0, done.stderr[-3000:]

    stalled = _stalled_fit(
        killed,
        env,
        tmp_path / "stalled",
        TINY,
        *POST_TRAINING,
        step=10,
        module="PostTrainingModule",
    )
    with stalled as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (killed / "metrics.json").exists()
    step_ckpt = torch.load(killed / "post_checkpoints" / "step.ckpt", weights_only=False)
    assert step_ckpt["global_step"] == 8  # mid-epoch 1 of post-training

    resumed = _semrec([*_fit_command(killed, *POST_TRAINING), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[post] resuming from" in resumed.stdout and "[train] reused" in resumed.stdout
    assert _metrics(killed) == _metrics(straight)
    a = load_file(str(straight / "post_adapter" / WEIGHTS_FILE))
    b = load_file(str(killed / "post_adapter" / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoints_is_refused(tmp_path: Path, capsys) -> None:
    args = ["fit", "--config", str(TINY), "--run-dir", str(tmp_path / "r"), "--resume"]
    assert main(args) == 2
    assert "no training checkpoint to resume from" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- seeds


def _short_run(run_dir: Path, *overrides: str) -> dict[str, float]:
    config = load_config(TINY, ["train.epochs=10", *overrides])
    return Run(config, run_dir, echo=lambda _: None).fit()


def test_the_same_seed_gives_the_same_sids_and_metrics(tmp_path: Path) -> None:
    first = _short_run(tmp_path / "a")
    second = _short_run(tmp_path / "b")
    index = "tokenizer/index.json"
    assert (tmp_path / "a" / index).read_bytes() == (tmp_path / "b" / index).read_bytes()
    drop = ("time/",)
    assert {k: v for k, v in first.items() if not k.startswith(drop)} == {
        k: v for k, v in second.items() if not k.startswith(drop)
    }


def test_a_tokenizers_own_seed_wins_over_the_run_seed(tmp_path: Path) -> None:
    def sids(*overrides: str) -> list[str]:
        config = load_config(TINY, ["tokenizer.params.kmeans_iters=3", *overrides])
        return Run(
            config, tmp_path / "_".join(overrides), echo=lambda _: None
        ).tokenizer.sid_strings()

    own = sids("seed=1", "tokenizer.params.seed=7")
    assert own == sids("seed=2", "tokenizer.params.seed=7")  # run seed ignored
    assert own == sids("seed=7")  # the same as the run seed 7
    assert own != sids("seed=1")


# ---------------------------------------------------------------------------- eval.task


def test_an_eval_task_whose_prompt_holds_the_target_is_refused() -> None:
    with pytest.raises(ConfigError, match="eval.task: 'ite_intention' cannot be evaluated"):
        load_config(TINY, ["eval.task=ite_intention"])


# ---------------------------------------------------------------------------- mask_history


def test_seen_items_are_the_uncapped_history_before_each_target() -> None:
    from semrec.data import leave_one_out
    from semrec.data.synthetic import load_synthetic

    dataset = load_synthetic()
    split = leave_one_out(dataset, max_history=2)
    sequence = dataset.sequences()[0].tolist()
    valid = next(ex for ex in split.valid if ex.user == 0)
    test = next(ex for ex in split.test if ex.user == 0)
    assert len(valid.history) == 2 < len(sequence) - 2  # the prompt history is capped
    assert split.seen_items(valid, "valid") == sequence[:-2]
    assert split.seen_items(test, "test") == sequence[:-1]


def test_popularity_with_masking_skips_each_users_items() -> None:
    import numpy as np

    from semrec.data.split import Example, Split
    from semrec.metrics.popularity import evaluate_popularity

    # item 0 is the most popular, then 1, 2, 3; the user already has item 0
    sequences = [np.array([0, 0, 0, 1, 1, 2])]
    split = Split([], [], [], num_items=4, num_users=1, train_sequences=sequences)
    examples = [Example(0, (0,), 1)]
    plain = evaluate_popularity(split, examples, [1])
    masked = evaluate_popularity(split, examples, [1], exclude=[[0]])
    assert plain["hr@1"] == 0.0 and masked["hr@1"] == 1.0


def test_infinite_numbers_in_the_config_are_refused_naming_the_key() -> None:
    for override, key in (("train.lr=.inf", "train.lr"), ("train.joint.alpha=.nan", "alpha")):
        with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
            load_config(TINY, [override])


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path, monkeypatch) -> None:
    import semrec.models.module as module

    real = module.response_loss
    calls = {"n": 0}

    def poisoned(model, batch, output_ids=None):
        calls["n"] += 1
        loss = real(model, batch, output_ids)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(module, "response_loss", poisoned)
    run_dir = tmp_path / "run"
    config = load_config(TINY, ["train.epochs=2", "eval.baselines=[]"])
    with pytest.raises(module.NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 1"):
        Run(config, run_dir, echo=lambda _: None).fit()
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "adapter").exists()  # no validation ran: nothing saved as best


def _hold_lock_in_another_process(directory: Path) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import time
        from semrec.run_lock import directory_lock
        with directory_lock({str(directory)!r}, "semrec fit --config other.yaml"):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_a_locked_run_directory_is_refused(tmp_path, capsys) -> None:
    """Two commands on one run directory cannot both proceed; the refusal names the holder,
    and a lock left by a killed process is taken over."""
    run_dir = tmp_path / "run"
    holder = _hold_lock_in_another_process(run_dir)
    try:
        args = ["tokenize", "--config", str(TINY), "--run-dir", str(run_dir)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "semrec fit --config other.yaml" in err
        assert not run_dir.exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the killed holder's lock is free again
    out = capsys.readouterr().out
    assert f"took over the lock of pid {holder.pid}" in out
    assert (run_dir / "tokenizer").is_dir()
    from semrec.run_lock import lock_path

    assert not lock_path(run_dir).exists()  # a finished command leaves no lock file


def test_two_fits_on_one_run_directory_cannot_both_proceed(tmp_path, capsys) -> None:
    """A real ``semrec fit``, stalled mid-training while it holds its run directory; a
    second ``fit`` there is refused naming the first, and touches none of its files."""
    env = {**os.environ, "SEMREC_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    with _stalled_fit(run_dir, env, tmp_path / "stalled") as first:
        files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert main(_fit_command(run_dir)) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "fit" in err
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files


def test_a_conversion_into_a_locked_output_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "converted"
    holder = _hold_lock_in_another_process(out)
    try:
        args = ["convert", "--from", "recbole", "--path", str(tmp_path), "--name", "ds"]
        assert main([*args, "--to", "lcrec_json", "--out", str(out)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_is_not_taken_twice_by_one_command_and_its_children(tmp_path) -> None:
    from semrec.run_lock import HELD_ENV, directory_lock, lock_path

    with directory_lock(tmp_path / "x", echo=lambda _: None):
        assert str(lock_path(tmp_path / "x")) in os.environ[HELD_ENV]
        with directory_lock(tmp_path / "x"):  # e.g. a worker process it started
            pass
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from semrec.run_lock import directory_lock\n"
                f"with directory_lock({str(tmp_path / 'x')!r}): print('ok')",
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ),
        )
        assert child.stdout.strip() == "ok", child.stderr
    assert HELD_ENV not in os.environ


def test_fit_refuses_to_replace_a_model_trained_with_another_config(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["fit", "--config", str(TINY), "--run-dir", str(run_dir), "train.epochs=1"]
    quick = ["eval.baselines=[]", "eval.max_test_users=8"]
    assert main([*args, *quick]) == 0
    weights = (run_dir / "adapter" / WEIGHTS_FILE).read_bytes()
    metrics = (run_dir / "metrics.json").read_text()
    capsys.readouterr()
    assert main([*args, *quick, "train.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.003 -> 0.01" in err and "--overwrite" in err
    assert (run_dir / "adapter" / WEIGHTS_FILE).read_bytes() == weights  # nothing replaced
    assert (run_dir / "metrics.json").read_text() == metrics
    assert main([*args, "eval.baselines=[]", "eval.max_test_users=4"]) == 0  # eval only: fine
    assert (run_dir / "adapter" / WEIGHTS_FILE).read_bytes() == weights
    assert main([*args, *quick, "train.lr=0.01", "--overwrite"]) == 0
    assert (run_dir / "adapter" / WEIGHTS_FILE).read_bytes() != weights


@pytest.mark.parametrize("name", ["../../elsewhere", "a/b", "..", ""])
def test_a_run_name_cannot_place_the_run_outside_runs(name) -> None:
    with pytest.raises(ConfigError, match=r"name: .*must be a plain name"):
        load_config(TINY, [f"name='{name}'"])


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_written_atomically_follow_the_umask(tmp_path, umask, file_mode, dir_mode) -> None:
    from semrec.artifacts import atomic_dir, atomic_write
    from semrec.models.checkpoint import AtomicCheckpointIO

    before = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.json") as fh:
            fh.write("{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "c.ckpt")
    finally:
        os.umask(before)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode


@pytest.mark.parametrize(
    "command", [["test"], ["predict"], ["add-items", "--items", "i.json"], ["export", "--out", "o"]]
)
def test_commands_of_a_finished_run_do_not_accept_a_run_dir_they_would_ignore(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--run", "runs/x", "--run-dir", "runs/y"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --run-dir" in capsys.readouterr().err

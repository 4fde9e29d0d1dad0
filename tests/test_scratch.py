"""The from-scratch SID backbone end to end, CF embedders and baselines in a run, --seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semrec.cli import main
from semrec.config import ConfigError, load_config
from semrec.pipeline import Run

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
SCRATCH = [
    "model.backbone=scratch",
    "model.prompt_format=compact",
    "model.lora.enabled=false",
    "model.scratch={layers: 2, hidden_size: 32, heads: 4, intermediate_size: 64, dropout: 0.0}",
    "model.compact_window=8",
    "embedder={name: cooccurrence, params: {dim: 8, window: 2}}",
    "train.epochs=30",
    "train.batch_size=4",
    "train.check_val_every_n_epoch=10",
    "eval.baselines=[popularity, sasrec, gru4rec]",
    # small batches: RecBole's 2048 would be one step per epoch on 240 examples
    "eval.baseline_params={sasrec: {max_epochs: 20, batch_size: 16, num_threads: 1}, "
    "gru4rec: {max_epochs: 20, batch_size: 16, num_threads: 1}}",
]


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "scratch"
    lines: list[str] = []
    run = Run(load_config(TINY, SCRATCH), run_dir, echo=lines.append)
    return run_dir, run.fit(), lines


def test_scratch_backbone_learns_the_synthetic_rule(scratch_run) -> None:
    run_dir, metrics, lines = scratch_run
    # the next item is a fixed function of the last one; popularity cannot know it
    assert metrics["test/hr@1"] >= 0.9
    assert metrics["popularity/test/hr@1"] < 0.2
    assert metrics["test/invalid_rate"] == 0.0
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["test/hr@1"] == metrics["test/hr@1"]
    assert any(line.startswith("[embed] cooccurrence: (24, 8)") for line in lines)
    speed = [line for line in lines if line.startswith("[train] epoch 1:")]
    assert speed and "examples/s" in speed[0]


def test_cf_baselines_learn_the_rule_in_the_same_table(scratch_run) -> None:
    run_dir, metrics, lines = scratch_run
    for name in ("sasrec", "gru4rec"):
        assert metrics[f"{name}/test/hr@1"] >= 0.9, name
        assert metrics[f"{name}/valid/hr@1"] >= 0.9, name
        assert metrics[f"{name}/fit/epochs"] >= 1
    table = (run_dir / "metrics.md").read_text()
    assert "| sasrec (test) |" in table and "| gru4rec (test) |" in table
    assert any(line.startswith("[baselines] sasrec:") for line in lines)


def test_a_second_run_reuses_the_fitted_baselines(scratch_run, tmp_path) -> None:
    _, metrics, _ = scratch_run
    lines: list[str] = []
    config = load_config(TINY, [*SCRATCH, "train.epochs=0"])
    again = Run(config, tmp_path / "again", echo=lines.append).fit()
    assert again["sasrec/test/hr@10"] == metrics["sasrec/test/hr@10"]
    assert any("sasrec" in line and "reused from the cache" in line for line in lines)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["model.backbone=scratch"], "model.prompt_format"),
        (["model.compact_instruction=hi"], "only the compact format"),
        ([*SCRATCH[:3], "model.compact_title_tokens=4"], "reads no text"),
        ([*SCRATCH[:3], "model.keep_layers=1"], "model.scratch.layers"),
        (["model.prompt_format=compact", "tasks=[{name: item2index}]"], "'seq'"),
        ([*SCRATCH[:3], "model.lora.enabled=true"], "model.lora.enabled"),
        ([*SCRATCH[:3], "tasks=[{name: seq}, {name: item2index}]"], "'seq'"),
        (["eval.baselines=[popularity, sasrek]"], "sasrec"),
        (["eval.baseline_params={gru4rec: {hidden_size: 8}}"], "not in eval.baselines"),
        (["eval.baselines=[sasrec]", "eval.baseline_params={sasrec: {hiden: 8}}"], "hiden"),
        (["embedder={name: text, params: {dim: 3}}"], "encoder: section"),
        (["embedder={name: coocurrence}"], "cooccurrence"),
        (["embedder={name: sasrec, params: {hiden_size: 8}}"], "hidden_size"),
    ],
)
def test_bad_scratch_and_baseline_configs_are_refused(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, override)


def test_fit_over_seeds_reports_mean_and_std(tmp_path, capsys) -> None:
    run_dir = tmp_path / "seeds"
    args = ["fit", "--config", str(TINY), "--run-dir", str(run_dir), "--seeds", "3,4"]
    assert main([*args, "train.epochs=1", "eval.max_test_users=8"]) == 0
    summary = json.loads((run_dir / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4]
    entry = summary["metrics"]["test/hr@10"]
    values = [
        json.loads((run_dir / f"seed-{s}" / "metrics.json").read_text())["test/hr@10"]
        for s in (3, 4)
    ]
    assert entry["values"] == values
    assert entry["mean"] == pytest.approx(sum(values) / 2)
    assert entry["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    for seed in (3, 4):
        assert load_config(run_dir / f"seed-{seed}" / "config.yaml").seed == seed
    assert "± " in (run_dir / "seeds.md").read_text()
    # --resume over seeds: seed 5 never started, 3 and 4 finished; none is refused
    assert main([*args[:-1], "3,4,5", "--resume", "train.epochs=1", "eval.max_test_users=8"]) == 0
    assert json.loads((run_dir / "seeds.json").read_text())["seeds"] == [3, 4, 5]


def test_repeated_seeds_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(TINY), "--seeds", "1,1"])
    assert "distinct integers" in capsys.readouterr().err


def test_reused_weights_are_refused_when_the_vocabulary_changed(scratch_run, monkeypatch) -> None:
    """Trained weights index rows by token id: a renumbered vocabulary must not load silently."""
    import semrec.models.backbone as backbone
    from semrec.pipeline import RunError

    run_dir, metrics, _ = scratch_run
    reread = Run(load_config(run_dir / "config.yaml"), run_dir, read_only=True).test()
    assert reread["test/hr@1"] == metrics["test/hr@1"]
    monkeypatch.setattr(backbone, "word_level_tokenizer", _older_specials)
    with pytest.raises(RunError, match="another vocabulary"):
        Run(load_config(run_dir / "config.yaml"), run_dir, read_only=True).test()


def _older_specials(words, **specials):
    """The scratch tokenizer's specials in another order (what an earlier semrec built)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    order = ["<pad>", "<sep>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(order)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        sep_token="<sep>",
    )

"""`semrec export` and `semrec.load_recommender`: the exported directory serves alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import semrec
from semrec.cli import main
from semrec.config import load_config
from semrec.pipeline import Run, TrainedRun
from semrec.serving import read_predictions
from semrec.serving.export import check_exportable, export_run
from semrec.serving.predict import predict_top_k
from semrec.serving.recommender import UnknownItemsError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = EXPERIMENTS / "tiny.yaml"
QUICK = ["train.epochs=3", "train.check_val_every_n_epoch=3", "eval.baselines=[]"]
RUNS = {
    "full": (TINY, QUICK),  # the tiny config trains every weight (LoRA disabled)
    "lora": (TINY, [*QUICK, "model.lora.enabled=true"]),
    "scratch": (
        TINY,
        [
            *QUICK,
            "model.backbone=scratch",
            "model.prompt_format=compact",
            # dropout > 0: the residual-dropout wrappers must not reach the saved weights
            "model.scratch={layers: 1, hidden_size: 32, heads: 4, intermediate_size: 64, "
            "dropout: 0.1}",
        ],
    ),
    # a pretrained-style LLM on windows: separator, instruction, first layer only, SID softmax
    "llm_windows": (
        TINY,
        [
            *QUICK,
            "model.lora.enabled=true",
            "model.prompt_format=compact",
            "model.compact_instruction='recommend the next item :'",
            "model.keep_layers=1",
            "train.softmax=sid_tokens",
            "eval.score_mode=renormalized",
        ],
    ),
    "ttds": (
        EXPERIMENTS / "ttds_tiny.yaml",
        ["users.tokenizer=null", "tasks=[{name: seq}]", "train.epochs=2"],
    ),
}


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[str], Path]:
    """Each run of RUNS trained once (lazily) for the whole module."""
    root = tmp_path_factory.mktemp("export_runs")
    trained: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in trained:
            config, overrides = RUNS[name]
            Run(load_config(config, overrides), root / name, echo=quiet).fit()
            trained[name] = root / name
        return trained[name]

    return get


def stored(run_dir: Path) -> TrainedRun:
    return TrainedRun.load(run_dir, echo=quiet)


def histories(run_dir: Path) -> dict[str, list[str]]:
    """Every user's whole interaction history as item ids (what `semrec predict` prompts with)."""
    dataset = stored(run_dir).data.dataset
    return {
        dataset.user_ids[u]: [dataset.item_ids[i] for i in sequence]
        for u, sequence in enumerate(dataset.sequences())
    }


def run_logits(run_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    model = stored(run_dir).model
    with torch.no_grad():
        return model(input_ids=input_ids).logits


PROMPT = torch.tensor([[3, 10, 40, 104, 112, 105, 113]])  # words and SID tokens of the tiny vocab


@pytest.mark.parametrize(
    ("name", "merge", "kind"),
    [
        ("full", False, "full"),
        ("lora", False, "adapter"),
        ("lora", True, "merged"),
        ("scratch", False, "full"),
        ("llm_windows", False, "adapter"),
        ("llm_windows", True, "merged"),
        ("ttds", False, "full"),
    ],
)
def test_the_exported_recommender_gives_semrec_predicts_top_k_without_the_run(
    runs, name, merge, kind, tmp_path, capsys
):
    run_dir = runs(name)
    out = tmp_path / "export"
    assert main(["export", "--run", str(run_dir), "--out", str(out), *(["--merge"] * merge)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "semrec.json").read_text())
    assert manifest["weights"]["kind"] == kind
    if kind == "full":
        assert "LoRA is disabled in this run" in printed
    predicted = predict_top_k(
        stored(run_dir), k=5, output=tmp_path / "top5.jsonl", batch_size=16, echo=quiet
    )
    expected = {r["user"]: r for r in read_predictions(predicted.path)}
    users = histories(run_dir)

    away = run_dir.with_name(run_dir.name + "-away")  # the export must not read the run
    run_dir.rename(away)
    try:
        recommender = semrec.load_recommender(out)
        served = {user: recommender.recommend(users[user], 5) for user in expected}
        batched = recommender.recommend_batch([users[u] for u in list(expected)[:6]], 5)
    finally:
        away.rename(run_dir)
    assert len(expected) == 48
    for user, record in expected.items():
        assert [r.item_id for r in served[user]] == record["items"], user
        scores = [r.score for r in served[user]]
        assert scores == pytest.approx(record["scores"], abs=1e-4), user
        assert not set(record["items"]) & set(users[user])
    for user, result in zip(expected, batched):
        assert [r.item_id for r in result] == expected[user]["items"]


@pytest.mark.parametrize("name", ["full", "scratch"])
def test_a_full_export_loads_with_plain_transformers(runs, name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = runs(name)
    export_run(stored(run_dir), tmp_path / "x", echo=quiet)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "x" / "model")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "x" / "tokenizer"))
    catalogue = json.loads((tmp_path / "x" / "catalogue.json").read_text())["items"]
    assert tokenizer.convert_tokens_to_ids(catalogue[0]["sid"]) == catalogue[0]["token_ids"]
    prompt = torch.tensor([[i % len(tokenizer) for i in PROMPT[0].tolist()]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits
    assert torch.allclose(logits, run_logits(run_dir, prompt), atol=1e-5)


def test_an_adapter_export_loads_with_peft_and_a_merged_one_with_transformers(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from semrec.known_warnings import hide_known_warnings
    from semrec.models.backbone import load_backbone

    run_dir = runs("lora")
    expected = run_logits(run_dir, PROMPT)
    export_run(stored(run_dir), tmp_path / "adapter", echo=quiet)
    rows = json.loads((tmp_path / "adapter" / "semrec.json").read_text())["backbone"][
        "embedding_rows"
    ]
    base, _ = load_backbone("tiny", seed=42, tiny_hidden_size=64)  # the run's backbone
    base.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():  # whatever the base's new rows hold, the adapter's rows win
        base.get_input_embeddings().weight[-16:] = 3.0
    with hide_known_warnings():
        peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter" / "adapter"))
    peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=PROMPT).logits, expected, atol=1e-5)

    export_run(stored(run_dir), tmp_path / "merged", merge=True, echo=quiet)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged" / "model")).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=PROMPT).logits, expected, atol=1e-4)


@pytest.fixture(scope="module")
def recommender(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "full"
    export_run(stored(runs("full")), out, echo=quiet)
    return semrec.load_recommender(out)


def test_bad_requests_are_refused_by_name(recommender):
    first, second = recommender.item_ids[:2]
    with pytest.raises(UnknownItemsError, match=r"'nope', 'i_999'.*24 items"):
        recommender.recommend([first, "nope", second, "i_999", "nope"], 5)
    with pytest.raises(ValueError, match="k=25 is more than the 24 items"):
        recommender.recommend([first], 25)
    with pytest.raises(ValueError, match="at least one item"):
        recommender.recommend([], 5)
    with pytest.raises(TypeError, match="not one string"):
        recommender.recommend(first, 5)
    assert len(recommender.recommend([first])) == 10  # default k: the run's largest eval.ks


def test_history_items_are_excluded_unless_kept(recommender):
    everything = set(recommender.item_ids)
    history = recommender.item_ids[3:8]
    kept = recommender.recommend(history, len(everything), exclude_history=False)
    assert {r.item_id for r in kept} == everything
    excluded = recommender.recommend(history, len(everything))
    assert {r.item_id for r in excluded} == everything - set(history)
    scores = [r.score for r in excluded]
    assert scores == sorted(scores, reverse=True)


def test_a_foreign_non_empty_out_is_refused_and_left_untouched(runs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(["export", "--run", str(runs("full")), "--out", str(out)])
    assert code != 0
    assert "not empty and holds no previous export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp directory left


def test_an_earlier_export_is_replaced_only_when_asked_keeping_the_users_files(
    runs, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "x"
    export_run(stored(runs("full")), out, echo=quiet)
    (out / "notes.txt").write_text("mine")
    (out / "catalogue.json").write_text("{}")  # an export's own file: it is replaced
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["export", "--run", str(runs("full")), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "holds an earlier export" in err and "--overwrite" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code = main(["export", "--run", str(runs("full")), "--out", str(out), "--overwrite"])
    assert code == 0
    assert (out / "notes.txt").read_text() == "mine"  # never deleted: semrec did not write it
    assert (out / "catalogue.json").read_text() != "{}" and (out / "semrec.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging or lock left
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fails(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("semrec.serving.export._check_prompts", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(stored(runs("full")), out, overwrite=True, echo=quiet)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(stored(runs("full")), tmp_path / "new", echo=quiet)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no half-written "new"


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (
            TINY,
            ["tasks=[{name: candidate_ranking}]", "eval.task=candidate_ranking"],
            "candidate_ranking.*verbalizer",
        ),
        (EXPERIMENTS / "ttds_tiny.yaml", [], "user_sid_in_prompt"),
        (TINY, ["model.lora.enabled=true", "model.quantization=nf4"], "--merge of a QLoRA run"),
    ],
)
def test_runs_an_export_cannot_serve_are_refused_by_name(config, overrides, message):
    with pytest.raises(NotImplementedError, match=message):
        check_exportable(load_config(config, overrides), merge=True)


def test_load_recommender_refuses_a_directory_that_is_no_export(tmp_path):
    with pytest.raises(ValueError, match="not a semrec export"):
        semrec.load_recommender(tmp_path)
    (tmp_path / "semrec.json").write_text(json.dumps({"format": "semrec-export"}))
    with pytest.raises(ValueError, match="format version None"):
        semrec.load_recommender(tmp_path)


def test_import_semrec_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, semrec; assert 'torch' not in sys.modules; print(semrec.__all__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "load_recommender" in result.stdout

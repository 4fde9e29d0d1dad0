"""TS-Rec through the pipeline: SA-Init + TS-Align + the SID comprehension check on the tiny run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semrec.cli import main
from semrec.config import load_config
from semrec.pipeline import Run, RunError

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
TSREC = [
    "model.semantic_init.enabled=true",
    "annotate.annotator.name=field_statistics",
    "annotate.token_semantics.min_keywords=1",
    "eval.token_understanding.enabled=true",
    "eval.token_understanding.max_items=8",
    "train.epochs=2",
    "train.check_val_every_n_epoch=1",
]
TASKS = [
    "tasks=[{name: seq}, {name: ts_align_semantic_to_token}, {name: ts_align_token_to_semantic}]"
]


def tsrec_config(*extra: str):
    return load_config(TINY, [*TSREC, *TASKS, *extra])


@pytest.fixture(scope="module")
def tsrec_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tsrec"
    lines: list[str] = []
    run = Run(tsrec_config(), run_dir, echo=lines.append)
    metrics = run.fit()
    return run, run_dir, metrics, lines


def test_tsrec_run_reports_sid_comprehension(tsrec_run):
    _, run_dir, metrics, lines = tsrec_run
    for key in ("title2sid_acc", "title2sid_hit@5", "sid2title_acc"):
        assert 0.0 <= metrics[f"understanding/{key}"] <= 1.0
    assert metrics["understanding/items"] == 8
    assert metrics["understanding/title2sid_acc"] <= metrics["understanding/title2sid_hit@5"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["understanding/sid2title_acc"] == metrics["understanding/sid2title_acc"]
    examples = json.loads((run_dir / "token_understanding.json").read_text())["examples"]
    assert {e["task"] for e in examples} == {"title2sid", "sid2title"}
    assert "SID comprehension" in (run_dir / "metrics.md").read_text()
    assert any("SA-Init set" in line for line in lines)


def test_tsrec_run_trains_on_token_alignment_pairs(tsrec_run):
    run, run_dir, _, _ = tsrec_run
    semantics = json.loads((run_dir / "token_semantics.json").read_text())
    used = {t for i in range(run.tokenizer.n_items) for t in run.tokenizer.item_tokens(i)}
    assert set(semantics) == used
    _, hf_tokenizer, _ = run.build_model()
    samples = run.model_stage.datamodule(hf_tokenizer).training.epoch_samples(0)
    by_task = {}
    for sample in samples:
        by_task.setdefault(sample.task, []).append(sample)
    assert len(by_task["ts_align_semantic_to_token"]) == len(used)
    for sample in by_task["ts_align_token_to_semantic"]:
        (token,) = re.findall(r"<[a-z]_\d+>", sample.prompt)
        assert sample.response == semantics[token]["description"]
    for sample in by_task["ts_align_semantic_to_token"]:
        assert semantics[sample.response]["description"] in sample.prompt


def test_semrec_test_reproduces_the_comprehension_metrics(tsrec_run):
    _, run_dir, metrics, _ = tsrec_run
    assert main(["test", "--run", str(run_dir)]) == 0
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["understanding/title2sid_acc"] == metrics["understanding/title2sid_acc"]


def test_changed_token_semantics_retrain(tsrec_run, tmp_path):
    run, _, _, _ = tsrec_run
    other = Run(tsrec_config("annotate.token_semantics.items_per_token=1"), tmp_path / "x")
    assert other.train_fingerprint() != run.train_fingerprint()


def test_missing_token_semantics_name_the_annotate_command(tmp_path):
    config = load_config(
        TINY,
        [
            "model.semantic_init.enabled=true",
            "annotate.annotator.name=hf_local",
            f"annotate.store_dir={tmp_path / 'store'}",
        ],
    )
    run = Run(config, tmp_path / "run", echo=lambda _: None)
    with pytest.raises(RunError, match="semrec annotate --config .* --kind token_semantics"):
        run.token_semantics  # noqa: B018


ANSWER = "Description: items of the {group}\nKeywords: {group}, shared, traits"


class GroupAnnotator:
    """Answers extraction prompts with the first item's group; counts prompts."""

    calls = 0

    def cache_key(self) -> dict:
        return {"annotator": "test_groups"}

    def complete(self, prompts: list[str]) -> list[str]:
        GroupAnnotator.calls += len(prompts)
        return [
            ANSWER.format(group=re.search(r"1\. .*Categories: (\w+)", p).group(1)) for p in prompts
        ]


def test_annotate_token_semantics_with_an_llm_annotator(tmp_path):
    from semrec.annotate import ANNOTATORS

    if "test_groups" not in ANNOTATORS.names():
        ANNOTATORS.register("test_groups")(GroupAnnotator)
    overrides = [
        "model.semantic_init.enabled=true",
        "annotate.annotator.name=test_groups",
        "annotate.token_semantics.min_keywords=3",
        f"annotate.store_dir={tmp_path / 'store'}",
    ]
    lines: list[str] = []
    run = Run(load_config(TINY, overrides), tmp_path / "run", echo=lines.append)
    tokens_in_use = {t for i in range(run.tokenizer.n_items) for t in run.tokenizer.item_tokens(i)}
    GroupAnnotator.calls = 0
    assert run.annotate("token_semantics") == len(tokens_in_use)
    assert GroupAnnotator.calls == len(tokens_in_use)
    # a second run reads the cache and never asks again
    again = Run(load_config(TINY, overrides), tmp_path / "run", echo=lines.append)
    assert set(again.token_semantics) == tokens_in_use
    assert GroupAnnotator.calls == len(tokens_in_use)
    assert again.token_semantics["<a_0>"].keywords[1:] == ("shared", "traits")


def test_token_semantics_from_a_jsonl_file(tmp_path):
    path = tmp_path / "semantics.jsonl"
    record = {"kind": "token_semantics", "key": "<a_0>", "text": ANSWER.format(group="x")}
    path.write_text(json.dumps(record) + "\n")
    overrides = [
        "model.semantic_init.enabled=true",
        "annotate.annotator.name=jsonl",
        f"annotate.annotator.params={{path: {path}}}",
        "annotate.token_semantics.min_keywords=3",
    ]
    run = Run(load_config(TINY, overrides), tmp_path / "run", echo=lambda _: None)
    assert run.token_semantics["<a_0>"].keywords == ("x", "shared", "traits")
    assert set(run.token_semantics) == {"<a_0>"}
    record["key"] = "<z_99>"
    path.write_text(json.dumps(record) + "\n")
    from semrec.annotate import AnnotationError

    with pytest.raises(AnnotationError, match="'<z_99>'"):
        _ = Run(
            load_config(TINY, overrides), tmp_path / "run2", echo=lambda _: None
        ).token_semantics

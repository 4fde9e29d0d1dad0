"""Serving: `semrec predict` (pre-cached top-K, resumable), TopKCache, `semrec add-items`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semrec.cli import main
from semrec.config import load_config
from semrec.data.dataset import DataError
from semrec.decoding import ConstrainedBeamSearch
from semrec.pipeline import Run, RunError, TrainedRun
from semrec.serving import PredictionError, TopKCache, read_predictions
from semrec.serving.new_items import add_items, added_items
from semrec.serving.predict import merge_predictions, predict_top_k

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
QUICK = ["train.epochs=3", "train.check_val_every_n_epoch=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("serving") / "run"
    Run(load_config(TINY, QUICK), run_dir, echo=lambda _: None).fit()
    return run_dir


def stored(run_dir: Path) -> TrainedRun:
    return TrainedRun.load(run_dir, echo=lambda _: None)


#: The training stage: serving must work without importing any of it.
TRAINING_MODULES = (
    "semrec.pipeline.run",
    "semrec.pipeline.train",
    "semrec.pipeline.test",
    "semrec.factories.training",
    "semrec.models.module",
)


def test_serving_loads_and_predicts_without_importing_the_training_stage(trained, tmp_path):
    script = f"""
import sys
from semrec.pipeline import TrainedRun
from semrec.serving.export import export_run
from semrec.serving.new_items import add_items
from semrec.serving.predict import predict_top_k
run = TrainedRun.load({str(trained)!r}, echo=lambda _: None)
summary = predict_top_k(run, k=3, output={str(tmp_path / "top3.jsonl")!r}, echo=lambda _: None)
assert summary.written == summary.users > 0
print("loaded:", sorted(m for m in {TRAINING_MODULES!r} if m in sys.modules))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: []" in done.stdout, done.stdout


def test_a_run_passed_to_serving_still_works_with_a_deprecation_warning(trained, tmp_path):
    old_style = Run(load_config(trained / "config.yaml"), trained, read_only=True, echo=print)
    with pytest.warns(DeprecationWarning, match="TrainedRun"):
        old = predict_top_k(old_style, k=3, output=tmp_path / "old.jsonl", echo=lambda _: None)
    new = predict_top_k(stored(trained), k=3, output=tmp_path / "new.jsonl", echo=lambda _: None)
    assert read_predictions(old.path) == read_predictions(new.path)


def test_a_trained_run_is_refused_when_its_training_does_not_match(trained):
    with pytest.raises(RunError, match="only evaluates or serves") as caught:
        TrainedRun.load(trained, ["train.lr=0.5"], echo=lambda _: None)
    assert "train.lr: 0.003 -> 0.5" in str(caught.value)
    unfinished = trained.parent / "unfinished"
    shutil.copytree(trained, unfinished)
    shutil.rmtree(unfinished / "adapter")
    with pytest.raises(RunError, match="trained adapter does not match"):
        _ = TrainedRun.load(unfinished, echo=lambda _: None).model
    with pytest.raises(RunError, match="no config.yaml"):
        TrainedRun.load(trained / "adapter")


def test_predict_writes_every_user_once_and_a_killed_predict_resumes(
    trained, tmp_path, monkeypatch
):
    reference = predict_top_k(
        stored(trained), k=5, output=tmp_path / "full.jsonl", batch_size=4, echo=lambda _: None
    )
    full = read_predictions(reference.path)
    assert reference.written == 48 and len({r["user"] for r in full}) == 48
    for record in full:
        assert len(record["items"]) == 5 and record["scores"] == sorted(record["scores"])[::-1]

    calls = {"n": 0}
    original = ConstrainedBeamSearch.search

    def dies_on_the_third_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConstrainedBeamSearch, "search", dies_on_the_third_batch)
    path = tmp_path / "resumed.jsonl"
    with pytest.raises(KeyboardInterrupt):
        predict_top_k(stored(trained), k=5, output=path, batch_size=4, echo=lambda _: None)
    written_before_the_kill = len(read_predictions(path))
    assert 0 < written_before_the_kill < 48
    with open(path, "a") as fh:  # a kill in the middle of a write
        fh.write('{"user": "u40", "items": ["i1"')
    monkeypatch.setattr(ConstrainedBeamSearch, "search", original)
    resumed = predict_top_k(stored(trained), k=5, output=path, batch_size=4, echo=lambda _: None)
    assert resumed.written == 48 - written_before_the_kill
    records = read_predictions(path)
    assert [r["user"] for r in records] == [r["user"] for r in full]  # no duplicate, none missing
    assert records == full

    with pytest.raises(PredictionError, match="k: 5 -> 3"):
        predict_top_k(stored(trained), k=3, output=path, echo=lambda _: None)


def test_sharded_predict_merges_into_the_file_one_process_writes(trained, tmp_path):
    quiet = {"batch_size": 4, "echo": lambda _: None}
    whole = predict_top_k(stored(trained), k=5, output=tmp_path / "whole.jsonl", **quiet)
    path = tmp_path / "sharded.jsonl"
    predict_top_k(stored(trained), k=5, output=path, shard_of=(0, 3), **quiet)
    request = {"k": 5, "users": None, "output": path, "exclude_seen": True}
    with pytest.raises(PredictionError, match="shard 1 of 3 was not written"):
        merge_predictions(stored(trained), 3, **request)
    for shard in (1, 2):
        predict_top_k(stored(trained), k=5, output=path, shard_of=(shard, 3), **quiet)
    parts = sorted(p.name for p in tmp_path.glob("sharded.shard-*.jsonl"))
    assert parts == [f"sharded.shard-{i}-of-3.jsonl" for i in range(3)]
    sizes = [len(read_predictions(tmp_path / name)) for name in parts]
    assert sizes == [16, 16, 16]  # every third user each
    merge_predictions(stored(trained), 3, **request)
    assert_same_lists(read_predictions(path), read_predictions(whole.path))
    assert not list(tmp_path.glob("sharded.shard-*"))  # the shards are gone
    assert len(TopKCache(path)) == 48


def assert_same_lists(records: list[dict], reference: list[dict]) -> None:
    """The same users in the same order with the same items; scores up to float rounding
    (other batches pad prompts differently)."""
    assert [(r["user"], r["items"]) for r in records] == [
        (r["user"], r["items"]) for r in reference
    ]
    for record, expected in zip(records, reference):
        assert record["scores"] == pytest.approx(expected["scores"], abs=1e-5)


def test_predict_workers_run_processes_and_merge(trained, tmp_path):
    path = tmp_path / "workers.jsonl"
    assert main(["predict", "--run", str(trained), "--k", "4", "--output", str(path),
                 "--users", "u1,u2,u3,u5,u8", "--workers", "2"]) == 0  # fmt: skip
    one = tmp_path / "one.jsonl"
    predict_top_k(stored(trained), k=4, users=["u1", "u2", "u3", "u5", "u8"], output=one,
                  echo=lambda _: None)  # fmt: skip
    assert_same_lists(read_predictions(path), read_predictions(one))
    assert json.loads(path.with_suffix(".meta.json").read_text())["k"] == 4


def test_shards_add_to_a_file_that_already_holds_users(trained, tmp_path):
    """As an unsharded predict appends: users already in the file stay, shards skip them."""
    path = tmp_path / "grow.jsonl"
    quiet = {"batch_size": 8, "echo": lambda _: None}
    predict_top_k(stored(trained), k=5, users=["u3", "u1"], output=path, **quiet)
    before = read_predictions(path)
    for shard in (0, 1):
        written = predict_top_k(stored(trained), k=5, output=path, shard_of=(shard, 2), **quiet)
        assert written.written == 23  # 46 users the file lacks, half each
    assert main(["predict", "--run", str(trained), "--k", "5", "--output", str(path),
                 "--merge-shards", "2"]) == 0  # fmt: skip
    records = read_predictions(path)
    assert records[:2] == before and len(records) == 48
    assert len({r["user"] for r in records}) == 48


def test_a_shard_of_another_request_is_not_merged(trained, tmp_path):
    path = tmp_path / "mixed.jsonl"
    quiet = {"batch_size": 8, "echo": lambda _: None}
    predict_top_k(stored(trained), k=5, output=path, shard_of=(0, 2), **quiet)
    predict_top_k(stored(trained), k=5, output=path, shard_of=(1, 2), exclude_seen=False, **quiet)
    request = {"k": 5, "users": None, "output": path, "exclude_seen": True}
    with pytest.raises(PredictionError, match="written for another request"):
        merge_predictions(stored(trained), 2, **request)
    assert not path.exists()


def test_topk_cache_serves_the_predictions(trained, tmp_path):
    path = tmp_path / "top.jsonl"
    predict_top_k(stored(trained), k=4, users=["u3", "u7"], output=path, echo=lambda _: None)
    cache = TopKCache(path)
    assert len(cache) == 2 and "u3" in cache and "u0" not in cache and cache.k == 4
    record = next(r for r in read_predictions(path) if r["user"] == "u7")
    assert cache.recommend("u7", 2) == list(zip(record["items"][:2], record["scores"][:2]))
    with pytest.raises(KeyError, match="u0"):
        cache.recommend("u0")
    with pytest.raises(ValueError, match="only 4 items"):
        cache.recommend("u3", 5)
    with pytest.raises(ValueError, match="unknown user id"):
        predict_top_k(stored(trained), k=4, users=["nobody"], output=tmp_path / "x.jsonl")


def test_seen_items_are_excluded_unless_kept(trained, tmp_path):
    run = stored(trained)
    sequences = run.data.dataset.sequences()
    ids = run.data.dataset.item_ids
    path = tmp_path / "all.jsonl"
    predict_top_k(run, k=16, output=path, echo=lambda _: None)  # all 16 unseen items
    for record in read_predictions(path):
        user = int(record["user"][1:])
        assert not {ids[i] for i in sequences[user]} & set(record["items"])
        assert len(record["items"]) == 16


def test_added_items_are_generated_without_retraining_and_old_sids_stay(trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = stored(run_dir).tokenizer.index()
    adapter = {p.name: p.read_bytes() for p in (run_dir / "adapter").iterdir()}
    new_items = tmp_path / "new.json"
    # the same text as item 0: the same codes, so it must move to a free last-level code
    new_items.write_text(
        json.dumps([{"id": "fresh", "title": "item 0", "categories": "red group"}])
    )
    assert main(["add-items", "--run", str(run_dir), "--items", str(new_items)]) == 0
    assert "1 items added (1 moved" in capsys.readouterr().out
    run = stored(run_dir)
    assert run.tokenizer.index() == before  # no existing SID changed
    assert {p.name: p.read_bytes() for p in (run_dir / "adapter").iterdir()} == adapter
    (added,) = added_items(run.run_dir)
    assert added["sid"] not in {"".join(tokens) for tokens in before.values()}
    ids, codes = run.catalogue()
    assert ids[-1] == "fresh" and codes.shape[0] == 25

    # the whole catalogue for every user: the new item is among what the model generates
    out = tmp_path / "all.jsonl"
    predict_top_k(run, k=25, output=out, exclude_seen=False, echo=lambda _: None)
    records = read_predictions(out)
    assert all("fresh" in r["items"] and len(r["items"]) == 25 for r in records)


def test_add_items_refuses_bad_records_by_name_and_writes_nothing(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    cases = {
        "existing.json": ([{"id": "i3", "title": "x"}], "'i3'"),
        "duplicate.json": ([{"id": "n", "title": "x"}, {"id": "n", "title": "y"}], "duplicate"),
        "no_id.json": ([{"title": "x"}], "item #0"),
        "bad_vector.json": ([{"id": "v", "embedding": ["a"]}], "embedding"),
    }
    for name, (records, message) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(records))
        with pytest.raises(DataError, match=message) as caught:
            add_items(stored(run_dir), path, echo=lambda _: None)
        assert name in str(caught.value)
    assert not (run_dir / "added_items.json").exists()


def test_an_item_with_only_an_embedding_is_added_and_a_textless_one_is_named(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    run = stored(run_dir)
    vector = run.vectors.item_embeddings()[3].tolist()  # item 3's own vector: its SID prefix
    new_items = tmp_path / "vectors.json"
    new_items.write_text(json.dumps([{"id": "vec", "embedding": vector}]))
    (added,) = add_items(run, new_items, echo=lambda _: None)
    assert added["text"] is None
    assert added["codes"][:-1] == run.tokenizer.codes[3].tolist()[:-1]
    assert added["codes"] != run.tokenizer.codes[3].tolist()  # moved off item 3's code

    textless = tmp_path / "textless.json"
    textless.write_text(json.dumps([{"id": "bare"}]))
    with pytest.raises(DataError, match="item 'bare' has no text") as caught:
        add_items(stored(run_dir), textless, echo=lambda _: None)
    assert "textless.json" in str(caught.value) and "synthetic" not in str(caught.value)
    assert [record["id"] for record in added_items(run_dir)] == ["vec"]


def test_a_cf_run_adds_text_only_items_through_the_cold_start_regressor(tmp_path):
    # tokenizer stage only: add-items needs the SID table, not a trained model
    lines: list[str] = []
    overrides = [
        "embedder.name=lightgcn",
        "embedder.params={dim: 8, epochs: 2, batch_size: 64}",
        "embedder.cold_start=text",
        "tokenizer.name=behavior_codebook",
        "tokenizer.params={levels: 2, codebook_size: 8, epochs: 3}",
    ]
    run = Run(load_config(TINY, overrides), tmp_path / "run", echo=lines.append)
    before = run.tokenizer.index()
    assert any("LLM alignment targets: mean input embeddings of tiny" in line for line in lines)
    new_items = tmp_path / "new.json"
    new_items.write_text(json.dumps({"items": [{"id": "n1", "title": "item 5"}]}))
    (added,) = add_items(run, new_items, echo=lines.append)
    assert stored(tmp_path / "run").tokenizer.index() == before
    assert len(added["codes"]) == 2 and added["sid"].startswith("<a_")
    assert run.vectors.cold_start_regressor.validation_r2 is not None

    without = Run(
        load_config(
            TINY,
            [
                *overrides[:2],
                "tokenizer.name=behavior_codebook",
                "tokenizer.params={levels: 2, codebook_size: 8, epochs: 1, llm_alignment: false}",
            ],
        ),
        tmp_path / "cf_only",
        echo=lambda _: None,
    )
    with pytest.raises(RunError, match="cold_start: text"):
        add_items(without, new_items, echo=lambda _: None)


def test_the_parquet_copy_holds_the_same_records(tmp_path):
    pytest.importorskip("pyarrow")  # optional: not in the lock
    from semrec.serving.precache import write_parquet

    path = tmp_path / "top.jsonl"
    rows = [{"user": "u1", "items": ["a", "b"], "scores": [-1.0, -2.5]}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    parquet = write_parquet(path)
    assert read_predictions(parquet) == rows
    assert TopKCache(parquet).recommend("u1", 1) == [("a", -1.0)]


def test_users_left_short_by_excluded_items_are_searched_again_with_more_beams():
    import torch

    from semrec.decoding.beam_search import DecodeResult
    from semrec.serving.predict import top_k_with_retries

    calls = []

    def search(beams, inputs, exclude):
        # a user with many seen items (row 0) gets beams // 4 items, the other k
        rows = inputs["input_ids"][:, 0].tolist()
        calls.append((beams, rows))
        k = 10
        found = [min(k, beams // 4) if row == 0 else k for row in rows]
        items = torch.tensor([[i if i < n else -1 for i in range(k)] for n in found])
        valid = items >= 0
        scores = torch.where(valid, -items.float(), torch.tensor(float("-inf")))
        return DecodeResult(items, scores, valid)

    inputs = {"input_ids": torch.tensor([[0], [1]]), "attention_mask": torch.ones(2, 1)}
    items, scores, valid = top_k_with_retries(search, 20, 1682, inputs, None, 10)
    assert valid.sum(dim=1).tolist() == [10, 10]
    assert calls == [(20, [0, 1]), (40, [0])]  # only the short user again, twice the beams
    calls.clear()
    _, _, valid = top_k_with_retries(search, 20, 30, inputs, None, 10)  # capped at the catalogue
    assert calls == [(20, [0, 1]), (30, [0])] and valid.sum(dim=1).tolist() == [7, 10]

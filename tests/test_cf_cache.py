"""Saving, loading and caching fitted CF models (semrec.cf.cache), on the synthetic dataset."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from semrec.cf import GRU4Rec, SASRec, fit_cached, fit_key
from semrec.cf.base import RESULT_NEUTRAL, SequentialRecommender
from semrec.data import leave_one_out, load_synthetic

MODELS = [SASRec, GRU4Rec]
TINY = {
    SASRec: dict(hidden_size=8, num_layers=1, num_heads=1, inner_size=16),
    GRU4Rec: dict(embedding_size=8, hidden_size=8),
}
QUICK = dict(batch_size=64, max_epochs=2, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def split():
    return leave_one_out(load_synthetic())


def tiny(cls: type[SequentialRecommender], **changes) -> SequentialRecommender:
    return cls(**{**TINY[cls], **QUICK, **changes})


def refuse_fit(monkeypatch, cls) -> None:
    def fit(self, split):
        raise AssertionError("expected the stored fit to be loaded")

    monkeypatch.setattr(cls, "fit", fit)


@pytest.mark.parametrize("cls", MODELS, ids=lambda cls: cls.__name__)
def test_hyperparameters_are_every_result_changing_argument(cls):
    model = tiny(cls, learning_rate=0.01, echo=print)
    params = model.hyperparameters()
    assert set(params) == set(cls.parameter_names()) - RESULT_NEUTRAL
    assert params["learning_rate"] == 0.01 and params["seed"] == 0
    assert params["hidden_size"] == 8 and "max_epochs" in params and "patience" in params
    assert not {"echo", "num_threads", "eval_batch_size"} & set(params)


@pytest.mark.parametrize("cls", MODELS, ids=lambda cls: cls.__name__)
def test_fit_cached_stores_a_fit_that_loads_back_identical(cls, split, tmp_path, monkeypatch):
    fitted = fit_cached(tiny(cls), split, tmp_path)
    (stored,) = tmp_path.iterdir()
    assert stored.name == f"{cls.__name__}-{fit_key(fitted, split)}"
    assert sorted(p.name for p in stored.iterdir()) == ["fit.json", "network.pt"]

    refuse_fit(monkeypatch, cls)
    rng = torch.get_rng_state()
    loaded = fit_cached(tiny(cls), split, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng)
    histories = [ex.history for ex in split.test]
    assert torch.equal(loaded.score(histories), fitted.score(histories))
    assert torch.equal(loaded.item_embeddings(), fitted.item_embeddings())
    for name in ("history_length", "num_items", "best_epoch", "epochs_run", "fit_seconds"):
        assert getattr(loaded, name) == getattr(fitted, name)
    assert loaded.validations == fitted.validations and len(loaded.validations) == 2
    assert not loaded.network.training


def test_fit_key_covers_what_the_fit_reads_and_nothing_else(split):
    key = fit_key(tiny(SASRec), split)
    # speed / logging only
    assert fit_key(tiny(SASRec, num_threads=2, eval_batch_size=7, echo=print), split) == key
    # test targets are never read (only the histories' lengths, unchanged here)
    moved_test = [dataclasses.replace(ex, target=(ex.target + 1) % 24) for ex in split.test]
    assert fit_key(tiny(SASRec), dataclasses.replace(split, test=moved_test)) == key
    changed = [
        fit_key(tiny(SASRec, learning_rate=0.01), split),
        fit_key(tiny(SASRec, seed=1), split),
        fit_key(tiny(SASRec, hidden_dropout=0.1), split),
        fit_key(tiny(GRU4Rec), split),
        fit_key(tiny(SASRec), dataclasses.replace(split, train=split.train[1:])),
        # valid targets steer early stopping
        fit_key(tiny(SASRec), dataclasses.replace(split, valid=split.valid[1:])),
        fit_key(tiny(SASRec), dataclasses.replace(split, num_items=25)),
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_load_refuses_another_model_or_other_hyperparameters(split, tmp_path):
    tiny(SASRec).fit(split).save(tmp_path / "fit")
    with pytest.raises(ValueError, match=r"other hyper-parameters \(learning_rate: 0.001 != 0.01"):
        tiny(SASRec, learning_rate=0.01).load(tmp_path / "fit")
    with pytest.raises(ValueError, match="holds a SASRec, not a GRU4Rec"):
        tiny(GRU4Rec).load(tmp_path / "fit")


def test_an_unreadable_stored_fit_is_fitted_again(split, tmp_path, caplog):
    fitted = fit_cached(tiny(GRU4Rec), split, tmp_path)
    (stored,) = tmp_path.iterdir()
    (stored / "network.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="semrec.cf.cache"):
        again = fit_cached(tiny(GRU4Rec), split, tmp_path)
    assert "fitting again" in caplog.text
    assert torch.equal(again.item_embeddings(), fitted.item_embeddings())
    assert torch.load(stored / "network.pt", weights_only=True)  # replaced by a good one

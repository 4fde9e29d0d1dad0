"""Saving / restoring the trainable weights: round trip, mismatches, corruption, atomicity."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import semrec.models.checkpoint as checkpoint
from semrec.artifacts import read_json
from semrec.models.adapters import apply_lora
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.checkpoint import (
    WEIGHTS_FILE,
    BestAdapterCheckpoint,
    CheckpointMismatchError,
    load_trained_weights,
    save_trained_weights,
)
from semrec.models.vocabulary import add_sid_tokens

SIDS = [f"<{level}_{code}>" for level in "ab" for code in range(4)]


def build(r: int = 4, sids: list[str] = SIDS, new_tokens: str = "token_indices"):
    """The same tiny LoRA model every time for the same arguments (fixed seeds)."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=32, seed=0)
    ids = add_sid_tokens(model, tok, sids, seed=0)
    peft_model = apply_lora(model, ids, r=r, alpha=8, dropout=0.0, new_tokens=new_tokens)
    return peft_model.eval()


def pretend_training(model, seed: int = 1) -> None:
    """Move every trainable tensor (LoRA B starts at zero, so an untouched model is trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def logits(model) -> torch.Tensor:
    """Logits on the last 16 token ids: the 8 SID tokens and 8 ordinary words."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=torch.arange(vocab - 16, vocab).unsqueeze(0)).logits


@pytest.fixture
def trained(tmp_path: Path):
    model = build()
    pretend_training(model)
    directory = tmp_path / "best"
    save_trained_weights(model, directory, metrics={"val/ndcg@10": 0.5})
    return model, directory


def test_round_trip_gives_identical_logits(trained) -> None:
    model, directory = trained
    fresh = build()
    assert not torch.allclose(logits(fresh), logits(model))  # the load has work to do
    load_trained_weights(fresh, directory)
    assert torch.equal(logits(fresh), logits(model))


def test_saved_files_hold_only_trainable_tensors(trained) -> None:
    model, directory = trained
    assert sorted(p.name for p in directory.iterdir()) == ["info.json", WEIGHTS_FILE]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    info = read_json(directory / "info.json")
    assert info == {"parameters": len(trainable), "metrics": {"val/ndcg@10": 0.5}}
    assert any("lora_" in n for n in trainable)
    assert any("trainable_tokens_delta" in n for n in trainable)


def mismatch_message(model, directory: Path) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        load_trained_weights(model, directory)
    return str(info.value)


def test_different_lora_rank_names_file_and_tensor(trained) -> None:
    _, directory = trained
    message = mismatch_message(build(r=8), directory)
    assert str(directory / WEIGHTS_FILE) in message
    assert "lora_" in message and "shape" in message


def test_different_vocabulary_names_file_and_tensor(trained) -> None:
    _, directory = trained
    message = mismatch_message(build(sids=SIDS + ["<c_0>", "<c_1>"]), directory)
    assert str(directory / WEIGHTS_FILE) in message
    assert "trainable_tokens_delta" in message and "(8, 32)" in message and "(10, 32)" in message


def test_failed_load_leaves_the_model_untouched(trained) -> None:
    _, directory = trained
    model = build(r=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CheckpointMismatchError):
        load_trained_weights(model, directory)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == []


def test_saved_tensors_the_model_lacks_are_named(trained) -> None:
    _, directory = trained
    message = mismatch_message(build(new_tokens="frozen"), directory)
    assert str(directory / WEIGHTS_FILE) in message
    assert "trainable_tokens_delta" in message and "no counterpart" in message


def test_trainable_tensors_the_file_lacks_are_named(tmp_path: Path) -> None:
    directory = tmp_path / "frozen"
    save_trained_weights(build(new_tokens="frozen"), directory)
    message = mismatch_message(build(), directory)
    assert "no saved values" in message and "trainable_tokens_delta" in message


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    message = mismatch_message(build(), tmp_path / "nothing")
    assert str(tmp_path / "nothing" / WEIGHTS_FILE) in message and "does not exist" in message


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file_gives_a_clear_error(trained, damage: str) -> None:
    _, directory = trained
    path = directory / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(b"this is not safetensors" if damage == "garbage" else data[:-64])
    message = mismatch_message(build(), directory)
    assert str(path) in message and "not a readable safetensors file" in message


def test_failing_save_leaves_the_previous_checkpoint_intact(trained, monkeypatch) -> None:
    model, directory = trained
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    pretend_training(model, seed=2)
    with pytest.raises(OSError, match="disk full"):
        save_trained_weights(model, directory, metrics={"val/ndcg@10": 0.9})
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert [p.name for p in directory.parent.iterdir()] == ["best"]  # no temp leftovers
    load_trained_weights(build(), directory)


def fake_trainer(value: float | None, sanity_checking: bool = False) -> SimpleNamespace:
    metrics = {} if value is None else {"val/ndcg@10": torch.tensor(value)}
    return SimpleNamespace(
        callback_metrics=metrics,
        sanity_checking=sanity_checking,
        global_step=7,
        is_global_zero=True,
    )


def test_best_adapter_checkpoint_saves_only_on_improvement(tmp_path: Path) -> None:
    model = build()
    module = SimpleNamespace(model=model, last_metrics={"val": {"hr@10": 0.25}})
    callback = BestAdapterCheckpoint(tmp_path / "best", monitor="val/ndcg@10")

    callback.on_validation_end(fake_trainer(0.9, sanity_checking=True), module)
    with pytest.raises(KeyError, match="validation logged no 'val/ndcg@10'"):
        callback.on_validation_end(fake_trainer(None), module)
    assert not callback.saved and not (tmp_path / "best").exists()

    callback.on_validation_end(fake_trainer(0.5), module)
    assert callback.saved and callback.best == pytest.approx(0.5)
    assert callback.best_metrics == {"hr@10": 0.25}
    reference = logits(model)

    pretend_training(model)  # a worse epoch must not overwrite the best weights
    module.last_metrics = {"val": {"hr@10": 0.1}}
    callback.on_validation_end(fake_trainer(0.4), module)
    assert callback.best == pytest.approx(0.5) and callback.best_metrics == {"hr@10": 0.25}
    restored = build()
    load_trained_weights(restored, tmp_path / "best")
    assert torch.equal(logits(restored), reference)

    callback.on_validation_end(fake_trainer(0.6), module)
    assert callback.best == pytest.approx(0.6)
    saved = read_json(tmp_path / "best" / "info.json")["metrics"]
    assert saved == {"val/ndcg@10": pytest.approx(0.6), "step": 7}

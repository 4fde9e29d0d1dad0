"""Slow: the real embedded defaults (SmolLM2-135M GGUF, ml-100k, MiniLM). Run with -m slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semrec.config import load_config
from semrec.pipeline import Run

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
SMOKE = [
    "train.max_train_samples=16",
    "train.batch_size=4",
    "eval.max_valid_users=4",
    "eval.max_test_users=8",
    "eval.batch_size=8",
]


@pytest.mark.parametrize("quantization", [None, "nf4"], ids=["lora", "qlora"])
def test_quickstart_pipeline_runs_on_the_embedded_defaults(tmp_path, quantization):
    overrides = SMOKE + ([f"model.quantization={quantization}"] if quantization else [])
    run = Run(load_config(QUICKSTART, overrides), tmp_path / "run", echo=lambda _: None)
    metrics = run.fit()
    assert metrics["test/users"] == 8
    assert metrics["test/invalid_rate"] == 0.0
    assert 0.0 <= metrics["test/hr@10"] <= 1.0
    assert "popularity/test/hr@10" in metrics
    stats = run.tokenizer.stats()
    assert stats["n_items"] == 1682
    assert stats["collision_rate_after"] == 0.0


def test_embedded_backbone_generates_text():
    from semrec.models.backbone import load_backbone

    model, tokenizer = load_backbone("embedded")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == 49152
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

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
    assert metrics["sasrec/fit/epochs"] == 8  # the quickstart's cap on SASRec
    assert 0.0 <= metrics["sasrec/test/hr@10"] <= 1.0
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


TSREC = QUICKSTART.with_name("tsrec_ml100k.yaml")


@pytest.mark.parametrize("quantization", [None, "nf4"], ids=["lora", "qlora"])
def test_sa_init_rows_are_keyword_means_of_the_embedded_backbone(tmp_path, quantization):
    from semrec.models.backbone import load_backbone
    from semrec.models.semantic_init import keyword_subtokens

    overrides = [f"model.quantization={quantization}"] if quantization else []
    run = Run(load_config(TSREC, overrides), tmp_path / "run", echo=lambda _: None)
    model, hf_tokenizer, _ = run.build_model()  # SID tokens, SA-Init, then (Q)LoRA
    pretrained, base_tokenizer = load_backbone("embedded")
    table = pretrained.get_input_embeddings().weight
    embed = model.get_input_embeddings()
    for token in ("<a_0>", "<b_7>", "<c_42>"):
        keywords = run.token_semantics[token].keywords
        expected = table[keyword_subtokens(base_tokenizer, keywords)].float().mean(0)
        row = torch.tensor([[hf_tokenizer.convert_tokens_to_ids(token)]])
        torch.testing.assert_close(embed(row)[0, 0].float(), expected)


def test_tsrec_pipeline_runs_on_the_embedded_defaults(tmp_path):
    overrides = [*SMOKE, "eval.token_understanding.max_items=8"]
    metrics = Run(load_config(TSREC, overrides), tmp_path / "run", echo=lambda _: None).fit()
    assert metrics["understanding/items"] == 8
    assert 0.0 <= metrics["understanding/title2sid_acc"] <= 1.0
    assert metrics["test/invalid_rate"] == 0.0

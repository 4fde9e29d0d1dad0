"""The output layer only at labelled positions gives the loss of full logits."""

from __future__ import annotations

import pytest
import torch

from semrec.models.adapters import apply_lora
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.loss import response_loss
from semrec.models.prompting import PromptFormatter
from semrec.models.vocabulary import add_sid_tokens

SIDS = ["<a_1>", "<a_2>", "<b_1>", "<b_2>"]


def _batch(tokenizer):
    formatter = PromptFormatter(tokenizer, use_chat_template=False)
    pairs = [
        ("the user liked <a_1> <b_1> and <a_2> <b_2>", "<a_2><b_1>"),
        ("the user liked <a_2> <b_2>", "<a_1><b_2>"),
        ("what next will the user watch", "<a_1><b_1>"),
    ]
    return formatter.collate_pairs([formatter.encode_pair(p, r) for p, r in pairs])


@pytest.mark.parametrize("lora", [None, "token_indices", "full_embeddings"])
@pytest.mark.parametrize("tied", [True, False])
def test_response_loss_equals_the_full_logits_loss(lora, tied) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=32, seed=0, tie_word_embeddings=tied)
    sid_ids = add_sid_tokens(model, tokenizer, SIDS, init="random")
    if lora is not None:
        model = apply_lora(model, sid_ids, r=4, alpha=8, dropout=0.0, new_tokens=lora)
        with torch.no_grad():  # LoRA B starts at zero: make the adapter matter
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn_like(param))
    batch = _batch(tokenizer)
    assert (batch["attention_mask"] == 0).any()  # right padding is present
    full = model(**batch).loss
    fast = response_loss(model, batch)
    assert abs(full.item() - fast.item()) < 1e-5
    grads_full = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    grads_fast = torch.autograd.grad(fast, [p for p in model.parameters() if p.requires_grad])
    for a, b in zip(grads_full, grads_fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

"""SID vocabulary extension and LoRA wrapping: the new token rows must actually learn."""

from __future__ import annotations

import pytest
import torch
from test_posttrain import TINY
from transformers import LlamaConfig, LlamaForCausalLM

from semrec.config import ConfigError, load_config
from semrec.models.adapters import apply_lora, count_parameters
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.vocabulary import add_sid_tokens

SIDS = [f"<{level}_{code}>" for level in "ab" for code in range(4)]
HIDDEN = 32


def tiny_with_sids(init: str = "mean_resizing", seed: int = 0):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=HIDDEN, seed=0)
    ids = add_sid_tokens(model, tok, SIDS, init=init, seed=seed)
    return model, tok, ids


# ---------------------------------------------------------------- vocabulary


def test_sid_tokens_get_fresh_ids_and_tokenize_atomically() -> None:
    tok = tiny_tokenizer()
    old_size = len(tok)
    model = tiny_llama(old_size, hidden_size=HIDDEN)
    ids = add_sid_tokens(model, tok, SIDS)
    assert ids == list(range(old_size, old_size + len(SIDS)))
    assert model.get_input_embeddings().weight.shape == (old_size + len(SIDS), HIDDEN)
    assert tok.tokenize("<a_1><b_2>") == ["<a_1>", "<b_2>"]
    assert tok("the user <a_3><b_0>", add_special_tokens=False).input_ids == [
        tok.convert_tokens_to_ids("the"),
        tok.convert_tokens_to_ids("user"),
        ids[3],
        ids[4],
    ]
    assert tok.convert_ids_to_tokens([ids[1], ids[6]]) == ["<a_1>", "<b_2>"]


def test_adding_existing_tokens_is_a_no_op() -> None:
    model, tok, ids = tiny_with_sids()
    weight = model.get_input_embeddings().weight.detach().clone()
    assert add_sid_tokens(model, tok, SIDS[:3]) == ids[:3]
    assert torch.equal(model.get_input_embeddings().weight, weight)
    assert len(tok) == weight.shape[0]


def test_duplicate_tokens_are_rejected() -> None:
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="duplicates"):
        add_sid_tokens(tiny_llama(len(tok), hidden_size=HIDDEN), tok, ["<a_1>", "<a_1>"])


@pytest.mark.parametrize("init", ["mean_resizing", "mean", "random"])
def test_old_rows_untouched_and_embeddings_stay_tied(init: str) -> None:
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=HIDDEN)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_sid_tokens(model, tok, SIDS, init=init)
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight[: len(old)], old)
    assert model.get_output_embeddings().weight is weight
    assert torch.isfinite(weight[ids]).all()


def test_mean_init_is_exactly_the_old_mean() -> None:
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=HIDDEN)
    mean = model.get_input_embeddings().weight.detach().mean(0)
    ids = add_sid_tokens(model, tok, SIDS, init="mean")
    new_rows = model.get_input_embeddings().weight[ids]
    assert torch.equal(new_rows, mean.expand_as(new_rows))


def test_mean_init_also_sets_an_untied_output_layer() -> None:
    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(3.0, 1.0)  # far from the input rows
    input_mean = model.get_input_embeddings().weight.detach().mean(0)
    output_mean = model.get_output_embeddings().weight.detach().mean(0)
    ids = add_sid_tokens(model, tok, SIDS, init="mean")
    out_rows = model.get_output_embeddings().weight[ids]
    assert torch.equal(model.get_input_embeddings().weight[ids][0], input_mean)
    assert torch.equal(out_rows, output_mean.expand_as(out_rows))


def test_mean_init_applies_to_spare_rows_of_a_padded_vocabulary() -> None:
    tok = tiny_tokenizer()
    real_vocab = len(tok)
    model = tiny_llama(real_vocab + 10, hidden_size=HIDDEN)  # 10 spare rows, as in padded models
    ids = add_sid_tokens(model, tok, SIDS[:3], init="mean")
    assert ids == [real_vocab, real_vocab + 1, real_vocab + 2]  # they land on the spare rows
    rows = model.get_input_embeddings().weight[ids]
    # "mean" gives every new token the same row
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[1], rows[2])


def test_random_init_matches_initializer_range() -> None:
    model, _, ids = tiny_with_sids(init="random")
    rows = model.get_input_embeddings().weight[ids].detach()
    # 8 x 32 = 256 draws from N(0, 0.02): the sample std is within 0.02 +- 20%
    assert 0.016 < rows.std().item() < 0.024
    assert abs(rows.mean().item()) < 0.006
    assert len({tuple(r.tolist()) for r in rows}) == len(ids)


@pytest.mark.parametrize("init", ["mean_resizing", "random"])
def test_sampled_inits_are_reproducible_by_seed(init: str) -> None:
    first = tiny_with_sids(init=init, seed=1)
    again = tiny_with_sids(init=init, seed=1)
    other = tiny_with_sids(init=init, seed=2)

    def rows(built) -> torch.Tensor:
        model, _, ids = built
        return model.get_input_embeddings().weight[ids]

    assert torch.equal(rows(first), rows(again))
    assert not torch.equal(rows(first), rows(other))


# ---------------------------------------------------------------- LoRA and the SID rows


def first_layer_inputs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the model actually feeds its first decoder layer (its embeddings)."""
    captured = {}
    layer = model.get_base_model().model.layers[0]

    def hook(module, args, kwargs):
        captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        handle.remove()
    return captured["hidden"][0]


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_output_embeddings()(hidden).detach().clone()


def one_step_on_sid_targets(mode: str):
    """Wrap the tiny model, take one AdamW step on a loss over SID targets.

    Returns the SID mask over the vocabulary, then (embeddings of every token as fed to the
    first layer, logits of a fixed probe hidden state) before and after the step.
    """
    model, tok, ids = tiny_with_sids(init="mean")
    peft_model = apply_lora(model, ids, r=4, alpha=8, dropout=0.0, new_tokens=mode)
    vocab = len(tok)
    every_token = torch.arange(vocab).unsqueeze(0)
    probe = torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(0))
    before = first_layer_inputs(peft_model, every_token), output_logits(peft_model, probe)

    prompt = tok("the user liked", add_special_tokens=False).input_ids
    input_ids = torch.tensor([prompt + [ids[1], ids[6], ids[0], ids[5]]])
    labels = input_ids.clone()
    labels[0, : len(prompt)] = -100  # loss only on the SID targets
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    peft_model.train()
    peft_model(input_ids=input_ids, labels=labels).loss.backward()
    optimizer.step()
    peft_model.eval()

    after = first_layer_inputs(peft_model, every_token), output_logits(peft_model, probe)
    sid = torch.zeros(vocab, dtype=torch.bool)
    sid[ids] = True
    return sid, before, after


def test_token_indices_train_sid_rows_and_nothing_else_of_the_vocabulary() -> None:
    sid, (emb0, logits0), (emb1, logits1) = one_step_on_sid_targets("token_indices")
    # every SID input row moved (the tied output layer gives all of them a gradient) ...
    assert (emb1[sid] != emb0[sid]).any(dim=1).all()
    # ... and so did every SID logit for a fixed hidden state
    assert (logits1[:, sid] != logits0[:, sid]).any(dim=0).all()
    # the rest of the vocabulary is bit-identical, as input and as output
    assert torch.equal(emb1[~sid], emb0[~sid])
    assert torch.equal(logits1[:, ~sid], logits0[:, ~sid])


def test_frozen_mode_leaves_sid_rows_unchanged() -> None:
    sid, (emb0, logits0), (emb1, logits1) = one_step_on_sid_targets("frozen")
    assert torch.equal(emb1, emb0)
    assert torch.equal(logits1, logits0)
    assert sid.sum() == len(SIDS)


def test_full_embeddings_train_sid_rows() -> None:
    sid, (emb0, logits0), (emb1, logits1) = one_step_on_sid_targets("full_embeddings")
    assert (emb1[sid] != emb0[sid]).any(dim=1).all()
    assert (logits1[:, sid] != logits0[:, sid]).any(dim=0).all()


def test_token_indices_train_far_fewer_parameters_than_full_embeddings() -> None:
    counts = {}
    for mode in ["token_indices", "full_embeddings", "frozen"]:
        model, tok, ids = tiny_with_sids()
        peft_model = apply_lora(model, ids, r=4, new_tokens=mode)
        trainable, _ = count_parameters(peft_model)
        non_lora = sum(
            p.numel()
            for name, p in peft_model.named_parameters()
            if p.requires_grad and "lora_" not in name
        )
        counts[mode] = (trainable, non_lora, len(tok))
    vocab = counts["frozen"][2]
    # LoRA matrices are the same in every mode; only the embedding part differs
    assert counts["frozen"][1] == 0
    assert counts["token_indices"][1] == len(SIDS) * HIDDEN  # one shared delta, tied head
    # one trained copy of the tied embed_tokens / lm_head pair (peft's ensure_weight_tying)
    assert counts["full_embeddings"][1] == vocab * HIDDEN
    lora = counts["frozen"][0]
    assert counts["token_indices"][0] == lora + len(SIDS) * HIDDEN
    assert counts["full_embeddings"][0] - lora > 10 * (counts["token_indices"][0] - lora)


def test_unknown_new_tokens_mode_is_rejected() -> None:
    model, _, ids = tiny_with_sids()
    with pytest.raises(ValueError, match="new_tokens"):
        apply_lora(model, ids, new_tokens="everything")  # type: ignore[arg-type]


def test_lora_in_upper_layers_only_stops_the_backward_pass_below_them() -> None:
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden_size=HIDDEN, layers=3, seed=0)
    ids = add_sid_tokens(model, tok, SIDS)
    peft_model = apply_lora(model, ids, r=4, alpha=8, dropout=0.0, new_tokens="frozen", layers=[2])
    adapted = {
        name.split(".layers.")[1].split(".")[0]
        for name, p in peft_model.named_parameters()
        if p.requires_grad
    }
    assert adapted == {"2"}  # every trainable tensor sits in layer 2
    layers = peft_model.get_base_model().model.layers
    outputs = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, layer in enumerate(layers)
    ]
    input_ids = torch.tensor([[5, ids[0], ids[4], 6]])
    peft_model(input_ids=input_ids, labels=input_ids).loss.backward()
    for hook in hooks:
        hook.remove()

    def state(out):
        return out[0] if isinstance(out, tuple) else out

    # below the adapted layer nothing needs a gradient, so autograd never goes there
    assert not state(outputs[0]).requires_grad and not state(outputs[1]).requires_grad
    assert state(outputs[2]).requires_grad
    grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
    # every adapter gets a gradient (lora_A's is zero at the start: lora_B starts at zero)
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="outside the model's layers"):
        apply_lora(tiny_llama(len(tok), hidden_size=HIDDEN, layers=2), ids, layers=[2])


def test_lora_layers_must_exist_after_keep_layers() -> None:
    quickstart = TINY.parent / "quickstart.yaml"
    assert load_config(quickstart, ["model.lora.layers=[2, 3]"]).model.lora.layers == [2, 3]
    with pytest.raises(ConfigError, match="keep_layers: 4 keeps layers 0-3"):
        load_config(quickstart, ["model.lora.layers=[3, 4]"])
    with pytest.raises(ConfigError, match="distinct layer indices"):
        load_config(quickstart, ["model.lora.layers=[2, 2]"])


def test_frozen_sid_rows_must_start_apart() -> None:
    quickstart = TINY.parent / "quickstart.yaml"
    with pytest.raises(ConfigError, match="all \\(almost\\) equal"):
        load_config(quickstart, ["model.lora.new_tokens=frozen"])
    text_rows = ["model.lora.new_tokens=frozen", "model.semantic_init.enabled=true"]
    text_rows.append("model.semantic_init.source=item_texts")
    assert load_config(quickstart, text_rows).model.lora.new_tokens == "frozen"

"""Windows for pretrained backbones: a prefix and titles around the SIDs, a truncated LLM.

The compact format (one pass scores every training prefix of a window) is no longer the
scratch backbone's alone: a text LLM gets an item separator token, an instruction opening
every window and prompt, and optionally the first tokens of each item's text after its
SID. Evaluation prompts must be exactly what training scored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semrec.config import load_config
from semrec.models.backbone import keep_first_layers, tiny_llama
from semrec.pipeline import Run
from semrec.prompts.batching import IGNORE_INDEX
from semrec.prompts.compact import PREFIX_POSITION

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
INSTRUCTION = "recommend the next item :"
WINDOWS = [
    "model.prompt_format=compact",
    f"model.compact_instruction='{INSTRUCTION}'",
    "model.compact_title_tokens=3",
]


def _built(tmp_path, overrides):
    run = Run(load_config(TINY, overrides), tmp_path / "run", echo=lambda _: None)
    model, hf_tokenizer, sid_ids = run.build_model()
    return (
        run,
        model.eval(),
        hf_tokenizer,
        sid_ids,
        run.model_stage.datamodule(hf_tokenizer).training,
    )


def _target_log_probs(model, batch) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs).logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)


def test_a_text_llm_gets_a_separator_and_an_instruction_around_the_sids(tmp_path) -> None:
    run, _, hf_tokenizer, sid_ids, sequences = _built(tmp_path, WINDOWS)
    sep = hf_tokenizer.sep_token_id
    assert sep is not None and sep not in sid_ids
    assert hf_tokenizer.convert_ids_to_tokens(sep) == "<sep>"
    instruction = hf_tokenizer(INSTRUCTION, add_special_tokens=True).input_ids
    assert sequences.prefix == instruction and len(instruction) == 5
    example = run.data.split.test[0]
    prompt = sequences.eval_prompts([example])[0]
    assert prompt[: len(instruction)] == instruction and prompt[-1] == sep
    item = example.history[-1]
    title = hf_tokenizer(" " + run.data.item_texts[item], add_special_tokens=False).input_ids
    sid = hf_tokenizer.convert_tokens_to_ids(run.tokenizer.item_tokens(item))
    assert prompt[-1 - 3 - len(sid) - 1 : -1] == [sep, *sid, *title[:3]]


def test_every_token_of_a_window_attends_to_the_prefix(tmp_path) -> None:
    *_, sequences = _built(tmp_path, [*WINDOWS, "model.compact_window=6"])
    windows = sequences.windows[:4]
    batch = sequences.collate(windows)
    mask = batch["attention_mask"][:, 0]
    prefix = len(sequences.prefix)
    for row, window in enumerate(windows):
        n = len(window.input_ids)
        assert (window.item_position[:prefix] == PREFIX_POSITION).all()
        assert mask[row, :n, :prefix].tril().sum() == sum(min(i + 1, prefix) for i in range(n))
        # and to no item further back than max_history
        positions = window.item_position
        far = (positions[:n, None] - positions[None, :n] > sequences.max_history) & (
            positions[None, :n] >= 0
        )
        assert not (mask[row, :n, :n] & far).any()


@pytest.mark.parametrize("titles", [0, 3])
def test_windows_of_one_target_score_as_the_evaluation_prompts(tmp_path, titles) -> None:
    """What training scores is what evaluation decodes from: the run's own eval prompts
    (instruction, separator, titles) followed by the target's SID, one at a time."""
    overrides = [*WINDOWS[:2], f"model.compact_title_tokens={titles}", "model.compact_window=1"]
    run, model, hf_tokenizer, _, sequences = _built(tmp_path, overrides)
    examples = run.data.split.train[:40]
    windows = sequences.windows[:40]
    table = sequences.item_tokens
    with torch.no_grad():
        joint = _target_log_probs(model, sequences.collate(windows))
        alone = []
        for example in examples:
            prompt = sequences.eval_prompts([example])[0]
            target = table[example.target][1:]  # without its separator
            ids = torch.tensor([prompt + target])
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[0, len(prompt) :] = torch.tensor(target)
            alone.append(_target_log_probs(model, {"input_ids": ids, "labels": labels}))
    torch.testing.assert_close(joint, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_the_separator_trains_with_the_sid_rows_under_lora(tmp_path) -> None:
    overrides = [*WINDOWS, "model.lora.enabled=true", "model.lora.target_modules=[q_proj]"]
    _, model, hf_tokenizer, sid_ids, _ = _built(tmp_path, overrides)
    config = model.peft_config["default"]
    (rows,) = config.trainable_token_indices.values()
    assert sorted(rows) == sorted([*sid_ids, hf_tokenizer.sep_token_id])


def test_keep_first_layers_computes_the_first_layers_of_the_full_model() -> None:
    full = tiny_llama(50, layers=4, seed=1).eval()
    truncated = keep_first_layers(tiny_llama(50, layers=4, seed=1), 2).eval()
    assert len(truncated.model.layers) == 2 and truncated.config.num_hidden_layers == 2
    ids = torch.randint(4, 50, (2, 9))
    with torch.no_grad():
        states = full.model(ids, output_hidden_states=True).hidden_states
        expected = full.model.norm(states[2])  # after layer 2, through the final norm
        got = truncated.model(ids).last_hidden_state
    torch.testing.assert_close(got, expected)
    with pytest.raises(Exception, match="keep_layers"):
        keep_first_layers(tiny_llama(50, layers=2), 3)


def test_a_tiny_llm_in_windows_learns_the_synthetic_rule(tmp_path) -> None:
    overrides = [
        *WINDOWS,
        "model.compact_window=8",
        "train.epochs=30",
        "train.batch_size=4",
        "train.report_every_n_steps=50",
    ]
    lines: list[str] = []
    run = Run(load_config(TINY, overrides), tmp_path / "learn", echo=lines.append)
    metrics = run.fit()
    assert metrics["test/hr@1"] >= 0.9
    assert metrics["popularity/test/hr@1"] < 0.2
    assert metrics["test/invalid_rate"] == 0.0
    # the log shows the run learning: step lines with the loss, a line per validation
    steps = [line for line in lines if line.startswith("[train] step ")]
    assert steps and "loss" in steps[0] and "examples/s" in steps[0]
    valid = [line for line in lines if line.startswith("[valid] epoch ")]
    assert len(valid) == 3  # epochs 10, 20 and 30 (check_val_every_n_epoch: 10)
    assert valid[-1].index("hr@1 ") < valid[-1].index("hr@5 ") < valid[-1].index("hr@10 ")


def test_new_window_keys_leave_older_fingerprints_alone_while_at_their_default() -> None:
    from semrec.config import LATE_KEYS, TRAINING_KEYS, config_section

    default = config_section(load_config(TINY), TRAINING_KEYS)
    assert not set(LATE_KEYS) & set(default)
    changed = config_section(load_config(TINY, ["model.keep_layers=1"]), TRAINING_KEYS)
    assert changed["model.keep_layers"] == 1
    assert {k: v for k, v in changed.items() if k != "model.keep_layers"} == default


def test_the_sid_softmax_is_the_full_head_sliced_to_the_sid_rows(tmp_path) -> None:
    import torch.nn.functional as F

    from semrec.models.loss import response_loss

    overrides = [*WINDOWS, "model.lora.enabled=true", "model.lora.target_modules=[q_proj]"]
    _, model, _, sid_ids, sequences = _built(tmp_path, overrides)
    batch = sequences.collate(sequences.windows[:3])
    output_ids = torch.tensor(sorted(sid_ids))
    loss = response_loss(model, batch, output_ids)
    logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits[
        :, :-1
    ]
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    columns = torch.searchsorted(output_ids, labels[keep])
    expected = F.cross_entropy(logits[keep][:, output_ids], columns)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    deltas = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
    assert deltas and all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas)
    with pytest.raises(ValueError, match="not SID tokens"):
        response_loss(model, batch, output_ids[1:])


def test_the_sid_softmax_needs_the_renormalised_decoding() -> None:
    from semrec.config import ConfigError

    with pytest.raises(ConfigError, match="eval.score_mode: renormalized"):
        load_config(TINY, ["train.softmax=sid_tokens"])
    load_config(TINY, ["train.softmax=sid_tokens", "eval.score_mode=renormalized"])


def test_sid_rows_can_start_from_the_texts_of_their_items(tmp_path) -> None:
    """``semantic_init.source: item_texts``: a SID token's row is the mean input embedding of
    the sub-tokens of the texts of the items that carry it (SA-Init without keywords)."""
    from semrec.models.semantic_init import item_text_keywords, keyword_subtokens

    overrides = [*WINDOWS, "model.semantic_init={enabled: true, source: item_texts}"]
    run, model, hf_tokenizer, _, _ = _built(tmp_path, overrides)
    plain = Run(load_config(TINY, WINDOWS), tmp_path / "plain", echo=lambda _: None)
    base, *_ = plain.build_model()  # the same seed: the same pretrained rows
    texts, codes = run.data.item_texts, run.tokenizer.codes
    level_tokens = run.tokenizer.level_token_strings()
    keywords = item_text_keywords(codes, level_tokens, texts)
    token = level_tokens[0][int(codes[0, 0])]
    carriers = [i for i in range(len(texts)) if int(codes[i, 0]) == int(codes[0, 0])]
    assert keywords[token] == [texts[i] for i in carriers]
    rows = base.get_input_embeddings().weight[keyword_subtokens(hf_tokenizer, keywords[token])]
    got = model.get_input_embeddings().weight[hf_tokenizer.convert_tokens_to_ids(token)]
    torch.testing.assert_close(got, rows.mean(0))


def test_max_train_samples_draws_whole_windows_anew_each_epoch(tmp_path) -> None:
    *_, sequences = _built(tmp_path, [*WINDOWS, "model.compact_window=4"])
    *_, capped = _built(
        tmp_path, [*WINDOWS, "model.compact_window=4", "train.max_train_samples=50"]
    )
    first, second = capped.epoch_items(0), capped.epoch_items(1)
    assert 50 <= capped.examples_per_epoch(0) < 50 + 4
    assert sum(w.examples for w in first) == capped.examples_per_epoch(0)
    assert {id(w) for w in first} <= {id(w) for w in capped.windows}
    assert [id(w) for w in first] != [id(w) for w in second]
    assert [id(w) for w in first] == [id(w) for w in capped.epoch_items(0)]
    assert sequences.examples_per_epoch(0) == sequences.num_examples

"""Title2SID / SID2Title comprehension probes (TS-Rec RQ4)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from semrec.decoding import SIDTrie
from semrec.decoding.model_calls import installed_cache_argument
from semrec.evaluation.token_understanding import (
    DEFAULT_SID2TITLE,
    DEFAULT_TITLE2SID,
    UnderstandingResult,
    evaluate_token_understanding,
    normalize_title,
    sample_items,
)
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.prompting import PromptFormatter
from semrec.models.vocabulary import add_sid_tokens

N_ITEMS = 8
# Item i has the SID <a_i><b_i><c_i>: the first token decides the item.
SID_TOKENS = [[f"<a_{i}>", f"<b_{i}>", f"<c_{i}>"] for i in range(N_ITEMS)]
SIDS = ["".join(tokens) for tokens in SID_TOKENS]
TITLE_WORDS = ["red", "apple", "green", "pear", "blue", "plum", "gold", "kiwi"]
TITLES = ["Red  Apple", "green pear", "", "blue plum", "gold kiwi", "red pear", "", "blue kiwi"]


def build(model_class: type = LlamaForCausalLM):
    """(model, formatter, trie) over the 8-item catalog; the tiny tokenizer has no chat template."""
    tokenizer = tiny_tokenizer(TITLE_WORDS)
    model = model_class(tiny_llama(len(tokenizer), hidden_size=32, layers=1).config)
    flat = [token for tokens in SID_TOKENS for token in tokens]
    add_sid_tokens(model, tokenizer, flat, init="random")
    trie = SIDTrie.from_sequences(
        [tokenizer.convert_tokens_to_ids(tokens) for tokens in SID_TOKENS],
        vocab_size=len(tokenizer),
    )
    formatter = PromptFormatter(tokenizer, use_chat_template=False)
    return model, formatter, trie


class RiggedLlama(LlamaForCausalLM):
    """A LLaMA whose logits are fixed: ``sid_bias`` plus a huge logit on ``forced[t]``.

    ``t`` counts generated tokens (0 at the prompt's last position). So generation always
    emits ``forced`` then EOS whatever the prompt, and constrained search always ranks
    items by the summed ``sid_bias`` of their tokens (the forced token is a word, not a SID).
    """

    sid_bias: torch.Tensor
    forced: list[int]
    modes_seen: set[bool]

    def forward(self, input_ids=None, cache=None, past_key_values=None, **kwargs):
        """Takes the cache as ``cache`` (transformers 5) or ``past_key_values`` (4.x)."""
        self.modes_seen.add(self.training)
        kv_cache = cache if cache is not None else past_key_values
        past = 0 if kv_cache is None else kv_cache.get_seq_length()
        if past == 0:
            self.prompt_width = input_ids.shape[1]
        step = past + input_ids.shape[1] - self.prompt_width
        kwargs[installed_cache_argument()] = kv_cache
        out = super().forward(input_ids=input_ids, **kwargs)
        logits = self.sid_bias.clone()
        logits[self.forced[step] if step < len(self.forced) else self.config.eos_token_id] = 100.0
        out.logits = logits.expand_as(out.logits).clone()
        return out


def rig(model: RiggedLlama, formatter: PromptFormatter, top: int, next_four: list[int]):
    """Title2SID answers ``top`` then ``next_four``; SID2Title answers 'red apple .'."""
    tokenizer = formatter.tokenizer
    model.sid_bias = torch.zeros(len(tokenizer))
    first = tokenizer.convert_tokens_to_ids([tokens[0] for tokens in SID_TOKENS])
    model.sid_bias[first] = -10.0
    model.sid_bias[first[top]] = 20.0
    for rank, item in enumerate(next_four):
        model.sid_bias[first[item]] = 10.0 - rank
    model.forced = tokenizer.convert_tokens_to_ids(["red", "apple", "."])
    model.modes_seen = set()


# ---------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Red   Apple ", "red apple"),
        ('"Red Apple."', "red apple"),
        ("'red apple'", "red apple"),
        ("RED\tAPPLE\n", "red apple"),
        ("Straße", "strasse"),
        ("Toy Story (1995)", "toy story (1995)"),
        ("Mr. Smith Goes", "mr. smith goes"),
        ("", ""),
    ],
)
def test_normalize_title(raw, expected):
    assert normalize_title(raw) == expected


def test_normalize_title_keeps_inner_differences():
    assert normalize_title("red apple") != normalize_title("red apples")
    assert normalize_title("red apple") != normalize_title("redapple")


def test_sample_items_skips_empty_titles_and_is_deterministic():
    titles = ["a", "", "b", "  ", "c", "d", "e", "f"]
    titled = [0, 2, 4, 5, 6, 7]
    assert sample_items(titles, None, seed=0) == titled
    assert sample_items(titles, 100, seed=0) == titled
    picked = sample_items(titles, 3, seed=1)
    assert picked == sorted(picked) and len(set(picked)) == 3
    assert set(picked) <= set(titled)
    assert sample_items(titles, 3, seed=1) == picked
    samples = {tuple(sample_items(titles, 3, seed=seed)) for seed in range(20)}
    assert len(samples) > 1, "the seed must change the sample"


def test_sample_items_rejects_bad_input():
    with pytest.raises(ValueError, match="max_items"):
        sample_items(["a"], 0, seed=0)
    with pytest.raises(ValueError, match="non-empty title"):
        sample_items(["", " "], None, seed=0)


def test_metrics_keys():
    result = UnderstandingResult(0.5, 0.75, 0.25, 4, [])
    assert result.metrics() == {
        "understanding/title2sid_acc": 0.5,
        "understanding/title2sid_hit@5": 0.75,
        "understanding/sid2title_acc": 0.25,
        "understanding/items": 4,
    }
    assert "eval/sid2title_acc" in result.metrics(prefix="eval/")


# ---------------------------------------------------------------------------- accuracy


@pytest.fixture(scope="module")
def rigged():
    model, formatter, trie = build(RiggedLlama)
    return model, formatter, trie


def test_accuracies_on_a_rigged_model(rigged):
    model, formatter, trie = rigged
    # Title2SID answers item 0 first, then 3, 1, 5, 7 (item 4 is outside the top 5).
    rig(model, formatter, top=0, next_four=[3, 1, 5, 7])
    model.train()
    items = [0, 1, 3, 4]
    result = evaluate_token_understanding(model, formatter, trie, items, TITLES, SIDS, batch_size=3)
    assert result.n_items == 4
    assert result.title2sid_acc == pytest.approx(1 / 4)  # only item 0
    assert result.title2sid_hit5 == pytest.approx(3 / 4)  # 0, 1, 3; not 4
    # Generation always says "red apple ." which matches "Red  Apple" (item 0) only.
    assert result.sid2title_acc == pytest.approx(1 / 4)
    assert model.training, "the model's training mode must be restored"
    assert model.modes_seen == {False}, "the model must run in eval mode"

    by_task = {
        task: [e for e in result.examples if e["task"] == task]
        for task in ("title2sid", "sid2title")
    }
    assert [e["item"] for e in by_task["title2sid"]] == items
    assert by_task["title2sid"][1] == {
        "task": "title2sid",
        "item": 1,
        "prompt": DEFAULT_TITLE2SID.format(title="green pear"),
        "expected": SIDS[1],
        "predicted": SIDS[0],
    }
    assert by_task["sid2title"][0]["prompt"] == DEFAULT_SID2TITLE.format(sid=SIDS[0])
    assert by_task["sid2title"][0]["expected"] == "Red Apple"
    assert {e["predicted"] for e in by_task["sid2title"]} == {"red apple ."}


def test_other_top_item_and_custom_templates(rigged):
    model, formatter, trie = rigged
    rig(model, formatter, top=4, next_four=[0, 1, 3, 5])
    model.eval()
    result = evaluate_token_understanding(
        model,
        formatter,
        trie,
        [0, 1, 3, 4, 5],
        TITLES,
        SIDS,
        num_beams=3,
        batch_size=16,
        title2sid_template="title {title} ?",
        sid2title_template="{sid} title ?",
    )
    assert result.title2sid_acc == pytest.approx(1 / 5)  # item 4
    assert result.title2sid_hit5 == pytest.approx(3 / 5)  # 3 beams: 4, 0, 1
    assert result.sid2title_acc == pytest.approx(1 / 5)
    assert not model.training
    assert result.examples[0]["prompt"] == "title Red Apple ?"


def test_bad_inputs_are_named(rigged):
    model, formatter, trie = rigged

    def run(items=(0,), titles=TITLES, sids=SIDS, **templates):
        return evaluate_token_understanding(
            model, formatter, trie, list(items), titles, sids, **templates
        )

    with pytest.raises(ValueError, match="items is empty"):
        run(items=[])
    with pytest.raises(ValueError, match="8 titles and 7 sids"):
        run(sids=SIDS[:7])
    with pytest.raises(ValueError, match=r"trie has 8 items but sids has 7"):
        run(sids=SIDS[:7], titles=TITLES[:7])
    with pytest.raises(ValueError, match=r"items \[2\] have an empty title"):
        run(items=[0, 2])
    with pytest.raises(ValueError, match=r"outside the catalog"):
        run(items=[8])
    with pytest.raises(
        ValueError, match=r"title2sid_template must contain the placeholder \{title\}"
    ):
        run(title2sid_template="Which item is it?")
    with pytest.raises(
        ValueError, match=r"sid2title_template must contain the placeholder \{sid\}"
    ):
        run(sid2title_template="Title of {title}?")
    with pytest.raises(ValueError, match="may only use the placeholder"):
        run(sid2title_template="{sid} is {other}")


# ---------------------------------------------------------------------------- smoke


# peft 0.21 (PeftModel.__init__) reads transformers 5.x's deprecated is_gradient_checkpointing.
@pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning:transformers"
)
@pytest.mark.parametrize("wrap_lora", [False, True])
def test_runs_end_to_end_on_a_tiny_llama(wrap_lora):
    model, formatter, trie = build()
    if wrap_lora:
        from semrec.models.adapters import apply_lora

        sid_ids = trie.sid_token_ids.tolist()
        model = apply_lora(model, sid_ids, r=2, alpha=4, dropout=0.0)
    model.train()
    items = sample_items(TITLES, 4, seed=0)
    result = evaluate_token_understanding(model, formatter, trie, items, TITLES, SIDS, batch_size=3)
    assert result.n_items == 4
    for value in (result.title2sid_acc, result.title2sid_hit5, result.sid2title_acc):
        assert 0.0 <= value <= 1.0
    assert result.title2sid_acc <= result.title2sid_hit5
    assert len(result.examples) == 8
    assert all(e["predicted"] in SIDS for e in result.examples if e["task"] == "title2sid")
    assert model.training

"""PromptFormatter: templates, loss masks, padding sides, length limit, chat template."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.prompting import IGNORE_INDEX, PLAIN_TEMPLATE, PromptFormatter
from semrec.models.vocabulary import add_sid_tokens

SIDS = ["<a_1>", "<a_2>", "<b_1>", "<b_2>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s> assistant :{% endif %}"
)


@pytest.fixture
def tokenizer():
    tok = tiny_tokenizer()
    add_sid_tokens(tiny_llama(len(tok), hidden_size=16, layers=1), tok, SIDS)
    return tok


def ids_of(tok, tokens: list[str]) -> list[int]:
    return tok.convert_tokens_to_ids(tokens)


def test_plain_template_text_and_ids(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer)
    assert not formatter.chat  # the tiny tokenizer has no chat template
    text = formatter.prompt_text("the user liked <a_1><b_2>")
    assert text == "### Instruction:\nthe user liked <a_1><b_2>\n\n### Response:\n"
    assert text == PLAIN_TEMPLATE.format(instruction="the user liked <a_1><b_2>")
    tokens = ["<unk>", "<unk>", ":", "the", "user", "liked", "<a_1>", "<b_2>"]
    tokens += ["<unk>", "<unk>", ":"]  # "###" and unknown words map to <unk>
    assert formatter.prompt_ids("the user liked <a_1><b_2>") == ids_of(tokenizer, tokens)


def test_response_is_sid_tokens_then_eos(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer)
    assert formatter.response_ids("<a_2><b_1>") == ids_of(tokenizer, ["<a_2>", "<b_1>", "</s>"])
    assert formatter.response_ids("<a_2><b_1>")[-1] == tokenizer.eos_token_id


def test_labels_mask_exactly_the_prompt(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer)
    prompt = formatter.prompt_ids("the user liked <a_1>")
    input_ids, labels = formatter.encode_pair("the user liked <a_1>", "<a_2><b_1>")
    answer = ids_of(tokenizer, ["<a_2>", "<b_1>", "</s>"])
    assert input_ids == prompt + answer
    assert labels == [IGNORE_INDEX] * len(prompt) + answer


def test_collate_pairs_right_pads_and_masks_padding(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer)
    short = formatter.encode_pair("the user", "<a_1><b_1>")
    long = formatter.encode_pair("the user liked this and that", "<a_2><b_2>")
    batch = formatter.collate_pairs([short, long])
    n_short, n_long = len(short[0]), len(long[0])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, n_long)
    pad = tokenizer.pad_token_id
    expected_ids = torch.tensor([short[0] + [pad] * (n_long - n_short), long[0]])
    expected_labels = torch.tensor([short[1] + [IGNORE_INDEX] * (n_long - n_short), long[1]])
    expected_mask = torch.tensor([[1] * n_short + [0] * (n_long - n_short), [1] * n_long])
    assert torch.equal(batch["input_ids"], expected_ids)
    assert torch.equal(batch["labels"], expected_labels)
    assert torch.equal(batch["attention_mask"], expected_mask)
    # loss positions: the 3 response tokens of each row, nothing else
    assert (batch["labels"] != IGNORE_INDEX).sum(1).tolist() == [3, 3]


def test_collate_prompts_left_pads(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer)
    a = formatter.prompt_ids("the user")
    b = formatter.prompt_ids("the user liked this item")
    batch = formatter.collate_prompts([a, b])
    gap = len(b) - len(a)
    assert gap > 0
    pad = tokenizer.pad_token_id
    assert batch["input_ids"][0].tolist() == [pad] * gap + a
    assert batch["input_ids"][1].tolist() == b
    assert batch["attention_mask"].tolist() == [[0] * gap + [1] * len(a), [1] * len(b)]
    # the last position holds every prompt's last token, ready for generation
    assert batch["input_ids"][:, -1].tolist() == [a[-1], b[-1]]


def test_too_long_prompt_is_an_error(tokenizer) -> None:
    formatter = PromptFormatter(tokenizer, max_prompt_tokens=10)
    # the plain template adds 6 tokens ("###", "Instruction", ":", "###", "Response", ":")
    assert len(formatter.prompt_ids("the user liked this")) == 10  # at the limit: fine
    with pytest.raises(ValueError, match=r"prompt of 11 tokens exceeds model.max_prompt_tokens=10"):
        formatter.prompt_ids("the user liked <a_1> <b_1>")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        formatter.encode_pair("the user liked <a_1> <b_1>", "<a_1><b_1>")


def test_chat_template_includes_system_prompt(tokenizer) -> None:
    tokenizer.chat_template = CHAT_TEMPLATE
    formatter = PromptFormatter(tokenizer, system_prompt="you are a recommender")
    assert formatter.chat
    text = formatter.prompt_text("the user liked <a_1><b_2>")
    assert text == (
        "<s> system : you are a recommender\n<s> user : the user liked <a_1><b_2>\n<s> assistant :"
    )
    ids = formatter.prompt_ids("the user liked <a_1><b_2>")
    assert ids[:5] == ids_of(tokenizer, ["<s>", "<unk>", ":", "you", "are"])
    assert ids[-2:] == ids_of(tokenizer, ["<unk>", ":"])  # "assistant" is not in the vocab


def test_chat_template_without_system_prompt(tokenizer) -> None:
    tokenizer.chat_template = CHAT_TEMPLATE
    text = PromptFormatter(tokenizer, system_prompt=None).prompt_text("the user")
    assert text == "<s> user : the user\n<s> assistant :"


def test_chat_template_can_be_switched_off(tokenizer) -> None:
    tokenizer.chat_template = CHAT_TEMPLATE
    formatter = PromptFormatter(tokenizer, use_chat_template=False, system_prompt="ignored")
    assert not formatter.chat
    assert formatter.prompt_text("the user") == PLAIN_TEMPLATE.format(instruction="the user")


def test_special_tokens_added_once(tokenizer) -> None:
    # a tokenizer that prepends BOS: the plain template gets it from the tokenizer, the chat
    # template already writes it, so it must not be added a second time
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    bos = tokenizer.bos_token_id
    plain = PromptFormatter(tokenizer).prompt_ids("the user")
    assert plain[0] == bos and plain[1] != bos
    tokenizer.chat_template = CHAT_TEMPLATE
    chat = PromptFormatter(tokenizer, system_prompt=None).prompt_ids("the user")
    assert chat[0] == bos and chat[1] != bos
    assert chat.count(bos) == 2  # one per message in the template: user, assistant

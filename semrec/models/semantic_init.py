"""TS-Rec SA-Init (section 4.1, Eq. 8-9): SID token rows from the embeddings of their keywords.

For SID token ``s`` with keywords ``W_s``, the keywords are joined and tokenized with the
backbone's own tokenizer, ``T_s = Tok(Concat(W_s))``, and the row of ``s`` becomes the mean of
the pretrained rows of those sub-tokens, ``e_s = mean_{v in T_s} E[v]``. With untied input and
output embeddings both tables get the same treatment, each from its own rows. Call it after
:func:`~semrec.models.vocabulary.add_sid_tokens` and before LoRA is applied (peft copies the
SID rows it trains when it wraps the model).

Without an extraction LLM, :func:`item_text_keywords` gives each SID token the texts of the
items that carry it as its "keywords" (``model.semantic_init.source: item_texts``): the row
becomes the mean embedding of the sub-tokens of those items' texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

KEYWORD_SEPARATOR = ", "


@dataclass
class SemanticInitReport:
    """What :func:`semantic_init` did: which token rows it set and why others were left alone."""

    initialised: dict[str, list[int]] = field(default_factory=dict)  # token -> sub-token ids
    too_deep: list[str] = field(default_factory=list)  # level beyond ``depth``
    without_keywords: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"SA-Init set {len(self.initialised)} SID token rows from keyword embeddings; "
            f"{len(self.too_deep)} deeper-level and {len(self.without_keywords)} tokens "
            "without usable keywords keep the default init"
        )


def keyword_subtokens(tokenizer: PreTrainedTokenizerBase, keywords: Sequence[str]) -> list[int]:
    """``T_s``: the backbone token ids of the concatenated keywords (no special tokens).

    Keywords are joined with ``", "`` (Eq. 8's Concat) and tokenized once, so each keyword is
    split exactly as it would be inside a sentence; the separators' own tokens are dropped so
    the mean covers the keywords alone.
    """
    text = KEYWORD_SEPARATOR.join(keywords)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    separator = set(tokenizer(KEYWORD_SEPARATOR.strip(), add_special_tokens=False).input_ids)
    kept = [i for i in ids if i not in separator]
    return kept or ids


def item_text_keywords(
    codes: torch.Tensor, level_tokens: Sequence[Sequence[str]], texts: Sequence[str]
) -> dict[str, list[str]]:
    """Per SID token, the texts of the items carrying it (``codes[i, l]`` is item ``i``'s
    code at level ``l``, its token ``level_tokens[l][code]``; negative codes are padding)."""
    if codes.shape[0] != len(texts):
        raise ValueError(f"{codes.shape[0]} items have codes but {len(texts)} have texts")
    keywords: dict[str, list[str]] = {}
    for item, row in enumerate(codes.tolist()):
        if not texts[item].strip():
            continue
        for level, code in enumerate(row):
            if code >= 0:
                keywords.setdefault(level_tokens[level][code], []).append(texts[item])
    return keywords


def semantic_init(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    level_tokens: Sequence[Sequence[str]],
    keywords: Mapping[str, Sequence[str]],
    *,
    depth: int | None = None,
) -> SemanticInitReport:
    """Set the rows of SID tokens of the first ``depth`` levels to their keyword means.

    ``level_tokens[l]`` lists the SID token strings of level ``l`` (already in ``tokenizer``);
    ``keywords`` maps a token string to its keywords. ``depth=None`` covers every level.
    Sub-tokens are looked up among the rows that existed before the SID tokens were added;
    any SID or padding row in ``T_s`` is an error. Every other row is left untouched.
    """
    if depth is not None and depth < 1:
        raise ValueError(f"SA-Init depth must be >= 1 or None, got {depth}")
    report = SemanticInitReport()
    plan: dict[int, list[int]] = {}  # SID row -> sub-token rows
    sid_ids = set()
    for level, tokens in enumerate(level_tokens):
        for token in tokens:
            row = tokenizer.convert_tokens_to_ids(token)
            if row is None or row == tokenizer.unk_token_id:
                raise ValueError(f"SA-Init: SID token {token!r} is not in the tokenizer")
            sid_ids.add(row)
            if depth is not None and level >= depth:
                report.too_deep.append(token)
            elif not keywords.get(token):
                report.without_keywords.append(token)
            else:
                subtokens = keyword_subtokens(tokenizer, keywords[token])
                report.initialised[token] = subtokens
                plan[row] = subtokens
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    with torch.no_grad():
        for weight in tables:
            for token, subtokens in report.initialised.items():
                bad = [i for i in subtokens if i in sid_ids or i >= weight.shape[0]]
                if bad:
                    raise ValueError(
                        f"SA-Init: keywords of {token!r} map to SID or out-of-range rows {bad}"
                    )
            # read every source row before writing any target row
            means = {
                row: weight[torch.tensor(subtokens)].float().mean(0)
                for row, subtokens in plan.items()
            }
            for row, mean in means.items():
                weight[row] = mean.to(weight.dtype)
    return report

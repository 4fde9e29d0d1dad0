"""Adding SID tokens to an LLM's vocabulary and initialising their embedding rows."""

from __future__ import annotations

from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

EmbeddingInit = Literal["mean_resizing", "mean", "random"]


def add_sid_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: list[str],
    *,
    init: EmbeddingInit = "mean_resizing",
    seed: int = 0,
) -> list[int]:
    """Add ``tokens`` (e.g. ``<a_12>``) as atomic tokens and return their ids, in order.

    ``init`` sets the new input (and untied output) rows:

    - ``mean_resizing``: sampled from a Gaussian with the mean and covariance of the existing
      rows (transformers' default; TS-Rec section 3.2.2 describes this as the usual init);
    - ``mean``: exactly the mean of the existing rows;
    - ``random``: N(0, initializer_range), the model's own init.

    Tokens already in the vocabulary keep their ids and rows.
    """
    if len(set(tokens)) != len(tokens):
        raise ValueError("SID token list has duplicates")
    old_rows = model.get_input_embeddings().weight.shape[0]
    old_vocab = len(tokenizer)  # may be < old_rows: some models pad the embedding matrix
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    new_ids = [i for i in ids if i >= old_vocab]
    if not new_ids:
        return list(ids)
    resize = len(tokenizer) > old_rows
    if resize:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=(init == "mean_resizing"))
    if init != "mean_resizing" or not resize:
        # rows that already existed as padding get no init from resizing: set them here
        rows = new_ids if init != "mean_resizing" else [i for i in new_ids if i < old_rows]
        _init_rows(model, rows, old_vocab, init, seed)
    return list(ids)


def add_item_separator(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    separator: str,
    *,
    init: EmbeddingInit = "mean_resizing",
    seed: int = 0,
) -> int:
    """The id of the token that opens each item in the compact format.

    The tokenizer's own ``sep_token`` is used when it has one; otherwise ``separator`` is
    added (its row initialised like the SID rows) and becomes the tokenizer's
    ``sep_token``, so a saved tokenizer keeps it.
    """
    if tokenizer.sep_token is None:
        add_sid_tokens(model, tokenizer, [separator], init=init, seed=seed)
        tokenizer.add_special_tokens({"sep_token": separator})
    return tokenizer.sep_token_id


def _init_rows(
    model: PreTrainedModel, rows: list[int], old_size: int, init: str, seed: int
) -> None:
    index = torch.tensor(rows)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in tables:
            if init == "mean":
                weight[index] = weight[:old_size].mean(0, keepdim=True).to(weight.dtype)
            elif init == "mean_resizing":
                old = weight[:old_size].double()
                mean = old.mean(0)
                cov = torch.cov(old.T) + 1e-9 * torch.eye(old.shape[1], dtype=old.dtype)
                dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=1e-5 * cov)
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    weight[index] = dist.sample((len(rows),)).to(weight.dtype)
            elif init == "random":
                std = getattr(model.config, "initializer_range", 0.02)
                noise = torch.randn(len(rows), weight.shape[1], generator=generator) * std
                weight[index] = noise.to(weight.dtype)
            else:
                raise ValueError(f"unknown embedding init {init!r}")

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
    old_size = model.get_input_embeddings().weight.shape[0]
    added = tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if added:
        new_size = max(len(tokenizer), old_size)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.resize_token_embeddings(new_size, mean_resizing=(init == "mean_resizing"))
        new_rows = [i for i in ids if i >= old_size]
        if new_rows and init != "mean_resizing":
            _init_rows(model, new_rows, old_size, init, seed)
    return list(ids)


def _init_rows(model: PreTrainedModel, rows: list[int], old_size: int, init: str, seed: int) -> None:
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
            elif init == "random":
                std = getattr(model.config, "initializer_range", 0.02)
                noise = torch.randn(len(rows), weight.shape[1], generator=generator) * std
                weight[index] = noise.to(weight.dtype)
            else:
                raise ValueError(f"unknown embedding init {init!r}")

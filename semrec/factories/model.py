"""The LLM of a run: backbone, SID tokens, optional SA-Init and LoRA/QLoRA; its prompt formatter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from semrec.config import ModelConfig
from semrec.errors import RunError
from semrec.models.prompting import PromptFormatter
from semrec.tokenizers import ItemTokenizer


def build_model(
    cfg: ModelConfig,
    tokenizer: ItemTokenizer,
    *,
    seed: int,
    user_tokenizer: ItemTokenizer | None = None,
    token_semantics: dict[str, Any] | None = None,
    item_texts: list[str] | None = None,
    echo: Callable[[str], None] = print,
):
    """Backbone + SID tokens (+ SA-Init) + LoRA; returns (model, hf_tokenizer, sid_token_ids).

    The SID tokens are the items' and, with ``user_tokenizer``, the users' after them.
    """
    from semrec.models.adapters import apply_lora, count_parameters
    from semrec.models.backbone import (
        SEPARATOR,
        keep_first_layers,
        load_backbone,
        scratch_backbone,
    )
    from semrec.models.vocabulary import add_item_separator, add_sid_tokens

    tokens = tokenizer.token_strings()
    if user_tokenizer is not None:
        tokens += user_tokenizer.token_strings()
    if cfg.backbone == "scratch":
        model, hf_tokenizer = scratch_backbone(tokens, **cfg.scratch.model_dump(), seed=seed)
    else:
        model, hf_tokenizer = load_backbone(
            cfg.backbone,
            quantization=cfg.quantization,
            tiny_hidden_size=cfg.tiny_hidden_size,
            seed=seed,
        )
        if cfg.keep_layers is not None:
            kept = keep_first_layers(model, cfg.keep_layers)
            echo(f"[model] kept the first {kept.config.num_hidden_layers} decoder layers")
    sid_ids = add_sid_tokens(model, hf_tokenizer, tokens, init=cfg.embedding_init, seed=seed)
    trainable_ids = list(sid_ids)
    if cfg.prompt_format == "compact" and cfg.backbone != "scratch":
        # the item separator is new to the LLM too: it trains with the SID rows
        separator = add_item_separator(
            model, hf_tokenizer, SEPARATOR, init=cfg.embedding_init, seed=seed
        )
        trainable_ids.append(separator)
    if cfg.semantic_init.enabled:
        from semrec.models.semantic_init import item_text_keywords, semantic_init

        if cfg.semantic_init.source == "item_texts":
            if not item_texts:
                raise RunError("model.semantic_init.source: item_texts needs the items' texts")
            keywords = item_text_keywords(
                tokenizer.codes, tokenizer.level_token_strings(), item_texts
            )
        else:
            keywords = {token: sem.keywords for token, sem in (token_semantics or {}).items()}
        report = semantic_init(
            model,
            hf_tokenizer,
            tokenizer.level_token_strings(),
            keywords,
            depth=cfg.semantic_init.depth,
        )
        echo(f"[model] {report.summary()}")
    if cfg.lora.enabled:
        lora = cfg.lora
        model = apply_lora(
            model,
            trainable_ids,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=lora.target_modules,
            new_tokens=lora.new_tokens,
            quantized=cfg.quantization is not None,
            layers=lora.layers,
        )
    elif cfg.quantization is not None:
        raise RunError("model.quantization needs model.lora.enabled: true (QLoRA)")
    trainable, total = count_parameters(model)
    echo(
        f"[model] {cfg.backbone}: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M "
        f"trainable ({100 * trainable / total:.2f}%), {len(sid_ids)} SID tokens added"
    )
    return model, hf_tokenizer, sid_ids


def prompt_formatter(cfg: ModelConfig, hf_tokenizer) -> PromptFormatter:
    return PromptFormatter(
        hf_tokenizer,
        use_chat_template=cfg.use_chat_template,
        system_prompt=cfg.system_prompt,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )

"""LoRA / QLoRA wrapping with the new SID token rows kept trainable."""

from __future__ import annotations

from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from semrec.known_warnings import hide_known_warnings

NewTokenTraining = Literal["token_indices", "full_embeddings", "frozen"]


def apply_lora(
    model: PreTrainedModel,
    sid_token_ids: list[int],
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | str = "all-linear",
    new_tokens: NewTokenTraining = "token_indices",
    quantized: bool = False,
    layers: list[int] | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; make the SID embedding rows trainable.

    ``new_tokens`` chooses how the SID rows learn (a frozen random row can never become a
    meaningful item token, a silent failure seen in several peer repositories):

    - ``token_indices``: PEFT's ``trainable_token_indices`` trains only the SID rows of the
      input embedding (and of a tied output layer), ~0.3% of SmolLM2's parameters;
    - ``full_embeddings``: trainable full copies of ``embed_tokens`` and ``lm_head``;
    - ``frozen``: leave them frozen (an ablation, not a sensible default).

    ``layers`` (decoder layer indices; None: every layer) puts LoRA in those layers only
    (PEFT's ``layers_to_transform``). With LoRA only in the upper layers and the SID rows
    ``frozen``, nothing below the lowest adapted layer trains, so the backward pass stops
    there.
    """
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    extra: dict = {}
    embed_name = _embedding_module_name(model)
    if new_tokens == "token_indices":
        extra["trainable_token_indices"] = {embed_name: list(sid_token_ids)}
    elif new_tokens == "full_embeddings":
        extra["modules_to_save"] = [embed_name, "lm_head"]
        if model.config.get_text_config().tie_word_embeddings and _supports_weight_tying():
            # keep one trained copy for both tied layers (peft >= 0.18 asks for this)
            extra["ensure_weight_tying"] = True
    elif new_tokens != "frozen":
        raise ValueError(f"unknown new_tokens mode {new_tokens!r}")
    if layers is not None:
        depth = model.config.get_text_config().num_hidden_layers
        if not all(0 <= layer < depth for layer in layers):
            raise ValueError(
                f"model.lora.layers: {layers} outside the model's layers 0-{depth - 1}"
            )
        target_modules = _named_targets(model, target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
        layers_to_transform=None if layers is None else sorted(layers),
        **extra,
    )
    with hide_known_warnings():
        return get_peft_model(model, config)


def _named_targets(model: PreTrainedModel, target_modules: list[str] | str) -> list[str]:
    """``target_modules`` as module names (PEFT's ``layers_to_transform`` takes no pattern):
    ``all-linear`` becomes the names of the linear layers other than the output layer, as
    PEFT resolves it (``layers_to_transform`` then keeps them to the chosen layers)."""
    if isinstance(target_modules, list):
        return target_modules
    if target_modules != "all-linear":
        raise ValueError(
            f"model.lora.layers needs model.lora.target_modules as a list of module names "
            f"or 'all-linear', got the pattern {target_modules!r}"
        )
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head
        }
    )


def _supports_weight_tying() -> bool:
    return "ensure_weight_tying" in LoraConfig.__dataclass_fields__


def _embedding_module_name(model: PreTrainedModel) -> str:
    embedding = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embedding:
            return name.rsplit(".", 1)[-1]
    raise ValueError("model has no input embedding module")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

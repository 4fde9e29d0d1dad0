"""LC-Rec's item tokenizer and the item-indexing ablations of its Figure 2.

* ``rqvae_usm``: an :class:`~semrec.tokenizers.rqvae.RQVAE` over item text embeddings, then
  index construction by argmin codes followed by uniform semantic mapping of the colliding
  items (:func:`~semrec.tokenizers.sinkhorn.resolve_by_uniform_mapping`). ``usm=False`` is
  "LC-Rec w/o USM": no Sinkhorn in training, and each item of a collision group gets a
  distinct extra suffix token instead.
* ``random_ids``: random codes per level, redrawn until every SID is unique.
* ``vanilla_id``: one token per item, ``<i_0>`` ... ``<i_{n-1}>``.

Every tokenizer refuses, before any training, codebook sizes whose product is smaller than
the number of items (the catalogue could not get distinct SIDs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from semrec.seeding import seeded
from semrec.tokenizers.base import DEFAULT_LEVEL_PREFIXES, TOKENIZERS, FittedCodes, ItemTokenizer
from semrec.tokenizers.collisions import PAD, append_suffix_level, collision_groups
from semrec.tokenizers.quantizer import codebook_sizes_per_level
from semrec.tokenizers.rqvae import LCREC_HIDDEN_LAYERS, RQVAE, train_rqvae
from semrec.tokenizers.sinkhorn import (
    DEFAULT_EPSILON,
    DEFAULT_ITERATIONS,
    resolve_by_uniform_mapping,
)


@TOKENIZERS.register("rqvae_usm")
class RQVAEUSMTokenizer(ItemTokenizer):
    """LC-Rec: RQ-VAE semantic IDs with uniform semantic mapping (see the module docstring).

    Defaults follow LC-Rec: 4 levels x 256 codes of dimension 32, encoder widths
    2048-1024-512-256 (decoder mirrored), beta 0.25, AdamW lr 1e-3 / weight decay 1e-4,
    batch 1024, Sinkhorn epsilon 0.003 with 50 iterations. ``epochs`` defaults to 200
    (enough for a catalogue of a few thousand items on CPU; LC-Rec trains far longer).
    ``standardize`` (default on, not in LC-Rec) z-scores each embedding dimension first; see
    :func:`~semrec.tokenizers.rqvae.train_rqvae` for why unit-norm embeddings need it.
    """

    def __init__(
        self,
        levels: int = 4,
        codebook_size: int | Sequence[int] = 256,
        *,
        code_dim: int = 32,
        hidden_layers: Sequence[int] = LCREC_HIDDEN_LAYERS,
        beta: float = 0.25,
        epochs: int = 200,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        usm: bool = True,
        standardize: bool = True,
        sinkhorn_epsilon: float = DEFAULT_EPSILON,
        sinkhorn_iterations: int = DEFAULT_ITERATIONS,
        max_rounds: int = 20,
        seed: int = 0,
        log_dir: str | None = None,
        level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES,
    ) -> None:
        super().__init__(level_prefixes)
        self.codebook_sizes_config = codebook_sizes_per_level(levels, codebook_size)
        for name, value in (
            ("code_dim", code_dim),
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("sinkhorn_iterations", sinkhorn_iterations),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(hidden_layers, (str, bytes)) or not isinstance(hidden_layers, Sequence):
            raise ValueError(
                f"hidden_layers must be a list of positive ints, got {hidden_layers!r}"
            )
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in hidden_layers):
            raise ValueError(f"hidden_layers must be positive ints, got {list(hidden_layers)}")
        for name, value in (
            ("beta", beta),
            ("lr", lr),
            ("weight_decay", weight_decay),
            ("sinkhorn_epsilon", sinkhorn_epsilon),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if beta < 0 or lr <= 0 or sinkhorn_epsilon <= 0:
            raise ValueError("beta must be >= 0, lr and sinkhorn_epsilon > 0")
        self.levels_config = levels
        self.code_dim = code_dim
        self.hidden_layers = list(hidden_layers)
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.usm = usm
        self.standardize = standardize
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.max_rounds = max_rounds
        self.seed = seed
        self.log_dir = log_dir
        self.model: RQVAE | None = None

    def config(self) -> dict[str, Any]:
        sizes = self.codebook_sizes_config
        return {
            "levels": self.levels_config,
            "codebook_size": sizes[0] if len(set(sizes)) == 1 else list(sizes),
            "code_dim": self.code_dim,
            "hidden_layers": list(self.hidden_layers),
            "beta": self.beta,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "usm": self.usm,
            "standardize": self.standardize,
            "sinkhorn_epsilon": self.sinkhorn_epsilon,
            "sinkhorn_iterations": self.sinkhorn_iterations,
            "max_rounds": self.max_rounds,
            "seed": self.seed,
            "log_dir": self.log_dir,
            "level_prefixes": self.level_prefixes,
        }

    def _new_model(self, input_dim: int) -> RQVAE:
        return RQVAE(
            input_dim,
            self.codebook_sizes_config,
            code_dim=self.code_dim,
            hidden_layers=self.hidden_layers,
            beta=self.beta,
            sinkhorn_epsilon=self.sinkhorn_epsilon,
            sinkhorn_iterations=self.sinkhorn_iterations,
        )

    # ------------------------------------------------------------------------ fit
    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        sizes = list(self.codebook_sizes_config)
        check_capacity(sizes, embeddings.shape[0], "rqvae_usm")
        with seeded(seed):
            self.model = self._new_model(embeddings.shape[1])
        history = train_rqvae(
            self.model,
            embeddings,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            usm=self.usm,
            standardize=self.standardize,
            seed=seed,
            log_dir=self.log_dir,
        )
        raw, last_distances = self.model.argmin_codes(embeddings)
        if self.usm:
            codes, resolution = resolve_by_uniform_mapping(
                raw,
                last_distances,
                epsilon=self.sinkhorn_epsilon,
                iterations=self.sinkhorn_iterations,
                max_rounds=self.max_rounds,
            )
        else:
            codes = append_suffix_level(raw, priority=last_distances.min(dim=1).values)
            resolution = {
                "strategy": "suffix",
                "items_with_suffix": int((codes[:, -1] != PAD).sum()),
            }
        if codes.shape[1] > raw.shape[1]:
            sizes.append(max(int(codes[:, -1].max()) + 1, 1))
        final = history[-1]
        return FittedCodes(
            codes=codes,
            codebook_sizes=sizes,
            codes_before_resolution=raw,
            resolution=resolution,
            info={
                "seed": seed,
                "input_dim": embeddings.shape[1],
                "epochs": self.epochs,
                "final_reconstruction_loss": final["reconstruction_loss"],
                "history": history,
            },
        )

    # ---------------------------------------------------------------- new items
    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        return model.argmin_codes(embeddings)[0]

    # -------------------------------------------------------------- persistence
    def _model_state(self) -> dict[str, torch.Tensor]:
        model = self._require_model()
        return {key: value.contiguous() for key, value in model.state_dict().items()}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        key = "encoder.0.weight"
        if key not in state:
            raise KeyError(f"RQ-VAE state has no {key!r}")
        model = self._new_model(state[key].shape[1])
        model.load_state_dict(state)  # raises on missing/unexpected keys or shape mismatch
        model.eval()
        self.model = model

    def _require_model(self) -> RQVAE:
        if self.model is None:
            raise RuntimeError("RQVAEUSMTokenizer is not fitted; call fit(...) or load it")
        return self.model


@TOKENIZERS.register("random_ids")
class RandomIDTokenizer(ItemTokenizer):
    """LC-Rec's "random indices" ablation: uniformly random, collision-free codes per level."""

    def __init__(
        self,
        levels: int = 4,
        codebook_size: int | Sequence[int] = 256,
        *,
        seed: int = 0,
        level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES,
    ) -> None:
        super().__init__(level_prefixes)
        self.codebook_sizes_config = codebook_sizes_per_level(levels, codebook_size)
        self.levels_config = levels
        self.seed = seed

    def config(self) -> dict[str, Any]:
        sizes = self.codebook_sizes_config
        return {
            "levels": self.levels_config,
            "codebook_size": sizes[0] if len(set(sizes)) == 1 else list(sizes),
            "seed": self.seed,
            "level_prefixes": self.level_prefixes,
        }

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        sizes = self.codebook_sizes_config
        n = embeddings.shape[0]
        check_capacity(sizes, n, "random_ids")
        generator = torch.Generator().manual_seed(seed)
        if math.prod(sizes) <= 4 * n:  # dense: a random subset of the whole code space
            flat = torch.randperm(math.prod(sizes), generator=generator)[:n]
            codes = _unflatten(flat, sizes)
        else:  # sparse: draw, then redraw the duplicates until none is left
            codes = _random_codes(n, sizes, generator)
            while groups := collision_groups(codes):
                movers = torch.cat([group[1:] for group in groups])
                codes[movers] = _random_codes(movers.numel(), sizes, generator)
        return FittedCodes(
            codes=codes,
            codebook_sizes=list(sizes),
            resolution={"strategy": "none", "note": "random codes are drawn unique"},
            info={"seed": seed},
        )

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "random_ids assigns codes only to the items seen in fit; refit it to add items"
        )

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


@TOKENIZERS.register("vanilla_id")
class VanillaIDTokenizer(ItemTokenizer):
    """LC-Rec's "vanilla ID" ablation: item ``i`` is the single token ``<i_{i}>``."""

    def __init__(self, *, level_prefixes: str | Sequence[str] = "i") -> None:
        super().__init__(level_prefixes)

    def config(self) -> dict[str, Any]:
        return {"level_prefixes": self.level_prefixes}

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        n = embeddings.shape[0]
        return FittedCodes(
            codes=torch.arange(n).unsqueeze(1),
            codebook_sizes=[n],
            resolution={"strategy": "none", "note": "one token per item"},
        )

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "vanilla_id has one token per item seen in fit; new items need new tokens (refit)"
        )

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


def check_capacity(codebook_sizes: Sequence[int], n_items: int, tokenizer: str) -> None:
    """Raise ValueError if the codebooks cannot give ``n_items`` distinct SIDs."""
    capacity = math.prod(codebook_sizes)
    if capacity < n_items:
        raise ValueError(
            f"{tokenizer}: codebook sizes {list(codebook_sizes)} allow only {capacity} distinct "
            f"SIDs but there are {n_items} items; increase codebook_size or levels "
            "(checked before training)"
        )


def _random_codes(n: int, sizes: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    columns = [torch.randint(size, (n,), generator=generator) for size in sizes]
    return torch.stack(columns, dim=1)


def _unflatten(flat: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Mixed-radix digits of ``flat`` (most significant level first)."""
    digits = []
    for size in reversed(sizes):
        digits.append(flat % size)
        flat = flat // size
    return torch.stack(digits[::-1], dim=1)

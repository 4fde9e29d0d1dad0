"""Locality-sensitive hashing SIDs: random hyperplanes, ``bits`` sign bits per level.

Level ``l``'s code is the integer whose bits are the signs of the centred vector's
projections on that level's ``bits`` random hyperplanes (SimHash), so the codebook of each
level has ``2**bits`` codes and nearby vectors share codes with high probability. Nothing
is learned; the hyperplanes come from ``seed``.

* ``lsh``: a static tokenizer (fitted once on the item vectors), collisions resolved by
  the suffix level;
* ``lsh_dynamic``: the same hash as a :class:`~semrec.tokenizers.dynamic.DynamicTokenizer`
  over the LLM's representations, which change as the LLM trains (TTDS Table 3's TT-DLSH);
  with ``train.joint.enabled: false`` it is TT-SLSH, on exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from semrec.tokenizers.base import DEFAULT_LEVEL_PREFIXES, TOKENIZERS, FittedCodes, ItemTokenizer
from semrec.tokenizers.collisions import append_suffix_level
from semrec.tokenizers.dynamic import DynamicTokenizer, SIDReader
from semrec.tokenizers.ttds import DEFAULT_TTDS_PREFIXES


def hyperplanes(dim: int, levels: int, bits: int, seed: int) -> torch.Tensor:
    """[levels, dim, bits] Gaussian hyperplane normals, deterministic in ``seed``."""
    return torch.randn(levels, dim, bits, generator=torch.Generator().manual_seed(seed))


def lsh_codes(x: torch.Tensor, planes: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Codes [n, levels]: per level, the sign bits of ``(x - center) @ planes[l]`` as an int."""
    signs = torch.einsum("nd,ldb->nlb", x.float() - center, planes) > 0
    weights = 2 ** torch.arange(planes.shape[2])
    return (signs.long() * weights).sum(dim=2)


def _check(levels: int, bits: int) -> None:
    if levels < 1 or not 1 <= bits <= 16:
        raise ValueError(f"lsh: levels must be >= 1 and bits in 1..16, got {levels}, {bits}")


@TOKENIZERS.register("lsh")
class LSHTokenizer(ItemTokenizer):
    """Static LSH SIDs (see the module docstring); a collision gets a suffix token."""

    def __init__(
        self,
        levels: int = 4,
        bits: int = 8,
        *,
        seed: int = 0,
        level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES,
    ) -> None:
        _check(levels, bits)
        super().__init__(level_prefixes)
        self.n_levels = levels
        self.bits = bits
        self.seed = seed
        self._planes: torch.Tensor | None = None
        self._center: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        prefixes = self.level_prefixes
        return {
            "levels": self.n_levels,
            "bits": self.bits,
            "seed": self.seed,
            "level_prefixes": prefixes if isinstance(prefixes, str) else list(prefixes),
        }

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        self._planes = hyperplanes(embeddings.shape[1], self.n_levels, self.bits, seed)
        self._center = embeddings.mean(dim=0)
        base = lsh_codes(embeddings, self._planes, self._center)
        codes = append_suffix_level(base)
        size = 2**self.bits
        return FittedCodes(
            codes=codes,
            codebook_sizes=[size] * self.n_levels + [max(1, int(codes[:, -1].max()) + 1)],
            codes_before_resolution=torch.cat([base, torch.full_like(base[:, :1], -1)], 1),
            resolution={"strategy": "suffix"},
            info={"input_dim": embeddings.shape[1], "seed": seed},
        )

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        assert self._planes is not None and self._center is not None
        return lsh_codes(embeddings, self._planes, self._center)

    def _model_state(self) -> dict[str, torch.Tensor]:
        assert self._planes is not None and self._center is not None
        return {"planes": self._planes, "center": self._center}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self._planes, self._center = state["planes"], state["center"]


@TOKENIZERS.register("lsh_dynamic")
class DynamicLSHTokenizer(DynamicTokenizer):
    """LSH over inputs that change during training (TT-DLSH); it has no parameters, so its
    codes move only when the inputs are recomputed by the changing LLM."""

    def __init__(
        self,
        levels: int = 4,
        bits: int = 8,
        *,
        suffix_size: int = 32,
        level_prefixes: str | Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        _check(levels, bits)
        self._given_prefixes = level_prefixes
        if level_prefixes is None:
            level_prefixes = (*DEFAULT_TTDS_PREFIXES[:levels], "p")
        super().__init__([2**bits] * levels, level_prefixes, suffix_size=suffix_size, seed=seed)
        self.n_levels = levels
        self.bits = bits

    def config(self) -> dict[str, Any]:
        prefixes = self._given_prefixes
        return {
            "levels": self.n_levels,
            "bits": self.bits,
            "suffix_size": self.suffix_size,
            "level_prefixes": None if prefixes is None else list(prefixes),
            "seed": self.seed,
        }

    def _build(self, input_dim: int, reader_dim: int | None = None) -> None:
        self.register_buffer("planes", hyperplanes(input_dim, self.n_levels, self.bits, self.seed))
        self.register_buffer("center", torch.zeros(input_dim))

    def _initialize(self) -> None:
        self.center = self.inputs.mean(dim=0)

    def assign(self, inputs: torch.Tensor) -> torch.Tensor:
        return lsh_codes(inputs, self.planes, self.center)

    def loss(self, rows: torch.Tensor, reader: SIDReader | None) -> dict[str, torch.Tensor]:
        zero = self.inputs.new_zeros(())
        return {"total": zero, "id": zero, "token": zero}

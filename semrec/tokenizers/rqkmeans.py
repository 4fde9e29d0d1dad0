"""TS-Rec's item tokenizer: residual k-means (RQ-KMeans) over item text embeddings.

Pipeline: optional L2 normalisation -> optional PCA to ``reduce_dim`` -> one k-means
codebook per level on the residuals (TS-Rec Eq. 1-3) -> collision handling:

* ``"reassign"`` (TS-Rec): colliding items move to random unused last-level codes under
  their prefix; SIDs keep ``levels`` tokens. If a prefix holds more items than the last
  codebook has codes this fails, unless ``on_overflow="suffix"``, which then gives the
  remaining colliders an extra suffix level;
* ``"suffix"``: one extra level numbering the members of each collision group (see
  :func:`~semrec.tokenizers.collisions.append_suffix_level`; ``suffix_all`` for fixed length);
* ``"none"``: keep collisions (stats report them).

The item that keeps its code (or gets suffix 0) is the one best reconstructed by the
codebooks. ``encode_new`` applies the same normalisation, PCA and codebooks to unseen items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from semrec.tokenizers.base import DEFAULT_LEVEL_PREFIXES, TOKENIZERS, FittedCodes, ItemTokenizer
from semrec.tokenizers.collisions import (
    COLLISION_STRATEGIES,
    OVERFLOW_POLICIES,
)
from semrec.tokenizers.quantizer import ResidualQuantizer, codebook_sizes_per_level


class ResidualKMeans:
    """Residual k-means (TS-Rec Eq. 1-3; OneRec's "RQ-KMeans"): a
    :class:`~semrec.tokenizers.quantizer.ResidualQuantizer` fitted by k-means alone.

    ``codebook_size`` is one int for all levels or a list with one size per level. After
    :meth:`fit`, :meth:`encode` maps vectors to codes [n, levels] and :meth:`decode` maps
    codes (a prefix of the levels, or -1 for an absent level) back to vectors. The saved
    state is ``codebook.<level>`` per level.
    """

    def __init__(
        self, levels: int, codebook_size: int | Sequence[int], *, max_iter: int = 100
    ) -> None:
        sizes = codebook_sizes_per_level(levels, codebook_size)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter (kmeans_iters) must be an int >= 1, got {max_iter!r}")
        self.levels = levels
        self.codebook_sizes = sizes
        self.max_iter = max_iter
        self.quantizer: ResidualQuantizer | None = None

    @property
    def is_fitted(self) -> bool:
        return self.quantizer is not None

    @property
    def codebooks(self) -> list[torch.Tensor]:
        return [codebook.detach() for codebook in self._require_fitted().codebooks]

    @property
    def dim(self) -> int:
        return self._require_fitted().dim

    def fit(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Fit one codebook per level on the residuals; returns the codes of ``x``."""
        self.quantizer = ResidualQuantizer(self.codebook_sizes, x.shape[1]).requires_grad_(False)
        return self.quantizer.init_kmeans(x.float(), seed, max_iter=self.max_iter)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [n, levels]: at each level the nearest centroid to the current residual."""
        quantizer = self._require_fitted()
        if x.ndim != 2 or x.shape[1] != quantizer.dim:
            raise ValueError(
                f"expected vectors of shape [n, {quantizer.dim}], got {tuple(x.shape)}"
            )
        return quantizer.encode(x.float())[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen centroids per row; a code of -1 means "level absent" (adds 0)."""
        quantizer = self._require_fitted()
        if codes.ndim != 2 or codes.shape[1] > self.levels:
            raise ValueError(
                f"expected codes of shape [n, <= {self.levels}], got {tuple(codes.shape)}"
            )
        out = torch.zeros(codes.shape[0], quantizer.dim)
        for level in range(codes.shape[1]):
            column = codes[:, level]
            size = self.codebook_sizes[level]
            if bool(((column < -1) | (column >= size)).any()):
                raise ValueError(f"level {level} codes must lie in [-1, {size - 1}]")
            present = column >= 0
            out[present] += quantizer.codebooks[level].detach()[column[present]]
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"codebook.{level}": codebook.contiguous()
            for level, codebook in enumerate(self.codebooks)
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        codebooks = []
        for level, size in enumerate(self.codebook_sizes):
            key = f"codebook.{level}"
            if key not in state:
                raise KeyError(f"residual k-means state has no {key!r}")
            codebook = state[key].float()
            if codebook.ndim != 2 or codebook.shape[0] != size:
                raise ValueError(f"{key} has shape {tuple(codebook.shape)}, expected [{size}, dim]")
            codebooks.append(codebook)
        if len({cb.shape[1] for cb in codebooks}) != 1:
            raise ValueError("residual k-means codebooks disagree on the vector dimension")
        quantizer = ResidualQuantizer(self.codebook_sizes, codebooks[0].shape[1])
        with torch.no_grad():
            for target, codebook in zip(quantizer.codebooks, codebooks):
                target.copy_(codebook)
        self.quantizer = quantizer.requires_grad_(False)

    def _require_fitted(self) -> ResidualQuantizer:
        if self.quantizer is None:
            raise RuntimeError("ResidualKMeans is not fitted; call fit() or load_state_dict()")
        return self.quantizer


@TOKENIZERS.register("rqkmeans")
class RQKMeansTokenizer(ItemTokenizer):
    """Residual k-means item tokenizer (TS-Rec). See the module docstring for the options."""

    def __init__(
        self,
        levels: int = 3,
        codebook_size: int | Sequence[int] = 256,
        *,
        reduce_dim: int | None = None,
        normalize: bool = False,
        collision: str = "reassign",
        on_overflow: str = "error",
        suffix_all: bool = False,
        kmeans_iters: int = 100,
        seed: int = 0,
        level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES,
    ) -> None:
        super().__init__(level_prefixes)
        if collision not in COLLISION_STRATEGIES:
            raise ValueError(f"collision must be one of {COLLISION_STRATEGIES}, got {collision!r}")
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
        if reduce_dim is not None and (
            isinstance(reduce_dim, bool) or not isinstance(reduce_dim, int) or reduce_dim < 1
        ):
            raise ValueError(f"reduce_dim must be a positive int or None, got {reduce_dim!r}")
        for name, flag in (("normalize", normalize), ("suffix_all", suffix_all)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.quantizer = ResidualKMeans(levels, codebook_size, max_iter=kmeans_iters)
        self.reduce_dim = reduce_dim
        self.normalize = normalize
        self.collision = collision
        self.on_overflow = on_overflow
        self.suffix_all = suffix_all
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self._pca_mean: torch.Tensor | None = None  # [input_dim]
        self._pca_components: torch.Tensor | None = None  # [reduce_dim, input_dim]

    def config(self) -> dict[str, Any]:
        sizes = self.quantizer.codebook_sizes
        return {
            "levels": self.quantizer.levels,
            "codebook_size": sizes[0] if len(set(sizes)) == 1 else list(sizes),
            "reduce_dim": self.reduce_dim,
            "normalize": self.normalize,
            "collision": self.collision,
            "on_overflow": self.on_overflow,
            "suffix_all": self.suffix_all,
            "kmeans_iters": self.kmeans_iters,
            "seed": self.seed,
            "level_prefixes": self.level_prefixes,
        }

    # ------------------------------------------------------------------------ fit
    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        self._check_capacity(embeddings.shape[0])
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        if self.reduce_dim is not None:
            self._fit_pca(embeddings)
        x = self._project(embeddings)
        raw = self.quantizer.fit(x, seed=seed)
        # How well each item is reconstructed decides who keeps a contested code.
        error = (x - self.quantizer.decode(raw)).norm(dim=1)
        mse_per_level = [
            float((x - self.quantizer.decode(raw[:, : level + 1])).pow(2).sum(dim=1).mean())
            for level in range(self.quantizer.levels)
        ]
        try:
            return self._resolved(
                raw,
                self.quantizer.codebook_sizes,
                seed=seed,
                priority=error,
                suffix_all=self.suffix_all,
                info={
                    "seed": seed,
                    "input_dim": embeddings.shape[1],
                    "quantized_dim": x.shape[1],
                    "mean_squared_norm": float(x.pow(2).sum(dim=1).mean()),
                    "mse_per_level": mse_per_level,
                },
            )
        except ValueError as err:
            raise ValueError(
                f"rqkmeans (codebook_size={self.config()['codebook_size']}): {err}; "
                "with rqkmeans, on_overflow='suffix' gives the remaining colliders an extra "
                "suffix level"
            ) from None

    def _check_capacity(self, n_items: int) -> None:
        """Fail before k-means when reassignment cannot give every item its own SID."""
        if self.collision != "reassign" or self.on_overflow != "error":
            return
        sizes = list(self.quantizer.codebook_sizes)
        capacity = math.prod(sizes)
        if capacity < n_items:
            raise ValueError(
                f"rqkmeans: codebook sizes {sizes} (levels={len(sizes)}) allow only {capacity} "
                f"distinct SIDs but there are {n_items} items, so collision='reassign' cannot "
                "resolve the collisions; use a bigger last-level codebook or the 'suffix' "
                "strategy: raise codebook_size or levels, or set on_overflow='suffix' (extra "
                "suffix level for the remaining colliders) or collision='suffix' (checked "
                "before k-means)"
            )

    # ---------------------------------------------------------------- new items
    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        return self.quantizer.encode(self._project(embeddings))

    # -------------------------------------------------------------------- PCA
    def _fit_pca(self, x: torch.Tensor) -> None:
        assert self.reduce_dim is not None
        if self.reduce_dim > min(x.shape):
            raise ValueError(
                f"reduce_dim={self.reduce_dim} needs at least that many items and input "
                f"dimensions; got embeddings of shape {tuple(x.shape)}"
            )
        mean = x.mean(dim=0)
        # Exact SVD (deterministic, unlike randomised pca_lowrank).
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        components = vh[: self.reduce_dim]
        # Fix each component's sign (largest-magnitude entry positive) for reproducibility.
        signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
        self._pca_mean = mean
        self._pca_components = (components * signs).contiguous()

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce_dim is None:
            return x
        assert self._pca_mean is not None and self._pca_components is not None
        return (x - self._pca_mean) @ self._pca_components.T

    # -------------------------------------------------------------- persistence
    def _model_state(self) -> dict[str, torch.Tensor]:
        state = {f"quantizer.{k}": v for k, v in self.quantizer.state_dict().items()}
        if self.reduce_dim is not None:
            assert self._pca_mean is not None and self._pca_components is not None
            state["pca.mean"] = self._pca_mean
            state["pca.components"] = self._pca_components
        return state

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "quantizer."
        self.quantizer.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        if self.reduce_dim is not None:
            if "pca.mean" not in state or "pca.components" not in state:
                raise KeyError("reduce_dim is set but the PCA tensors are missing")
            self._pca_mean = state["pca.mean"].float()
            self._pca_components = state["pca.components"].float()

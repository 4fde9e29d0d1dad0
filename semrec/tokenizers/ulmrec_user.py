"""ULMRec's personalised user indexing (Eq. 1-6): ``ulmrec_user``.

Each user's review embeddings ``e_w`` are pooled by an attention on the embedding of the
user's original id string ``e_o`` (Eq. 1)::

    alpha_i = softmax_i(e_{w_i}^T A e_o),   x_u = sum_i alpha_i e_{w_i}

and ``x_u`` is quantised by an RQ-VAE (Eq. 2-6, the same core as LC-Rec's:
:class:`~semrec.tokenizers.rqvae.RQVAE`). The input is 3-D ``[n_users, 1 + R, d]``: row 0
is ``e_o``, rows 1.. the reviews, all-zero rows are padding (the ``review_attention`` user
embedder makes it). Given 2-D vectors (one per user, e.g. ``history_text``) the attention
is skipped and this is a plain RQ-VAE.

Choices the paper leaves open, made here:

* ``A`` is one matrix shared by the reviews (the paper writes ``A_i``; a matrix per
  review position would tie the weights to review order), initialised to the identity
  (dot-product attention);
* ``A`` is trained jointly with the RQ-VAE on its loss (Eq. 6): the reconstruction target is
  the pooled ``x_u`` itself, so the gradient reaches ``A`` through both the encoder input
  and the target; the inputs are z-scored with the statistics of ``x_u`` at initialisation;
* remaining collisions are resolved by the existing collision handling (default: last-level
  reassignment, a suffix level when a prefix overflows), so user SIDs keep 4 tokens.

Defaults follow ULMRec where it says: 4 levels x 256 codes of dimension 32; the rest as
LC-Rec's RQ-VAE (encoder 2048-1024-512-256, beta 0.25, AdamW lr 1e-3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from semrec.seeding import seeded
from semrec.tokenizers.base import DEFAULT_USER_PREFIXES, TOKENIZERS, FittedCodes
from semrec.tokenizers.collisions import COLLISION_STRATEGIES, OVERFLOW_POLICIES
from semrec.tokenizers.rqvae import LCREC_HIDDEN_LAYERS, RQVAE, train_rqvae
from semrec.tokenizers.rqvae_usm import RQVAEUSMTokenizer, check_capacity


class ReviewAttentionRQVAE(RQVAE):
    """An :class:`RQVAE` whose input is pooled from a set of vectors by ULMRec Eq. 1."""

    def __init__(self, input_dim: int, codebook_sizes: Sequence[int], **rqvae: Any) -> None:
        super().__init__(input_dim, codebook_sizes, **rqvae)
        self.attention = nn.Parameter(torch.eye(input_dim))  # A

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``x_u`` [n, d] from ``[n, 1 + R, d]`` (row 0: ``e_o``); 2-D input passes through."""
        if x.ndim == 2:
            return x
        return torch.einsum("nr,nrd->nd", self.attention_weights(x), x[:, 1:])

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The ``alpha`` of Eq. 1 [n, R] (0 at padding) for ``x`` [n, 1 + R, d]."""
        owner, reviews = x[:, 0], x[:, 1:]
        present = reviews.abs().sum(dim=-1) > 0
        scores = torch.einsum("nrd,de,ne->nr", reviews, self.attention, owner)
        return torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return super().standardize(self.pool(x))

    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor) -> None:
        super().fit_standardization(self.pool(x))


@TOKENIZERS.register("ulmrec_user")
class ULMRecUserTokenizer(RQVAEUSMTokenizer):
    """ULMRec user indices: review attention + RQ-VAE (see the module docstring)."""

    input_ndims = (2, 3)

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
        standardize: bool = True,
        collision: str = "reassign",
        on_overflow: str = "suffix",
        seed: int = 0,
        log_dir: str | None = None,
        level_prefixes: str | Sequence[str] = DEFAULT_USER_PREFIXES,
    ) -> None:
        super().__init__(
            levels,
            codebook_size,
            code_dim=code_dim,
            hidden_layers=hidden_layers,
            beta=beta,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            usm=False,
            standardize=standardize,
            seed=seed,
            log_dir=log_dir,
            level_prefixes=level_prefixes,
        )
        if collision not in COLLISION_STRATEGIES:
            raise ValueError(f"collision must be one of {COLLISION_STRATEGIES}, got {collision!r}")
        if on_overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
        self.collision = collision
        self.on_overflow = on_overflow

    def config(self) -> dict[str, Any]:
        unused = ("usm", "sinkhorn_epsilon", "sinkhorn_iterations", "max_rounds")
        config = {k: v for k, v in super().config().items() if k not in unused}
        return {**config, "collision": self.collision, "on_overflow": self.on_overflow}

    def _new_model(self, input_dim: int) -> ReviewAttentionRQVAE:
        return ReviewAttentionRQVAE(
            input_dim,
            self.codebook_sizes_config,
            code_dim=self.code_dim,
            hidden_layers=self.hidden_layers,
            beta=self.beta,
        )

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        sizes = list(self.codebook_sizes_config)
        check_capacity(sizes, embeddings.shape[0], "ulmrec_user")
        input_dim = embeddings.shape[-1]
        with seeded(seed):
            self.model = self._new_model(input_dim)
        history = train_rqvae(
            self.model,
            embeddings,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            usm=False,
            standardize=self.standardize,
            seed=seed,
            log_dir=self.log_dir,
        )
        raw, last_distances = self.model.argmin_codes(embeddings)
        return self._resolved(
            raw,
            sizes,
            seed=seed,
            priority=last_distances.min(dim=1).values,
            info={
                "seed": seed,
                "input_dim": input_dim,
                "pooled_reviews": embeddings.ndim == 3,
                "epochs": self.epochs,
                "final_reconstruction_loss": history[-1]["reconstruction_loss"],
                "history": history,
            },
        )

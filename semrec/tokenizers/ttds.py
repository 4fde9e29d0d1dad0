"""TTDS's semantic token generator (one tower): an MLP encoder and L residual codebooks.

Paper: "Twin-Tower Dynamic Semantic Recommender" (``shared/papers/003``), section 4.2.
A tower maps the LLM's representation X of an item's (or user's) text (Eq. 6) through an
MLP encoder into the codebook space and quantises it residually: at level m the code is
the nearest codebook vector to the residual left by the levels before (Eq. 10-11). The
twin tower is two instances, one configured as ``items.tokenizer`` and one as
``users.tokenizer``; the single-tower ablation (STDS) leaves out the users'.

The DM-VAE loss (Eq. 12-14) of a batch of rows is

* ``L_Token``: per level, the residual-to-code distance (Eq. 13), split as in VQ-VAE into a
  codebook term ``|sg(r) - c|^2`` and ``commitment * |r - sg(c)|^2``. The commitment term
  pulls the encoder towards its codes, which with no decoder lets every row collapse onto
  one SID (measured on the tiny model: all 48 users in one group within 15 steps), so it
  defaults to 0: the encoder then learns from L_ID alone and the codebooks follow it;
* ``L_ID``: ``|X^S - X^I|^2`` (Eq. 12), the LLM's representation of the SID token sequence
  against the text representation X^I. The SID reaches the LLM as straight-through one-hot
  weights: the forward pass uses exactly the chosen tokens' embeddings, the backward pass
  the softmax over negative mean squared distances (temperature ``temperature``), so the gradient of
  L_ID reaches the encoder and the codebooks as well as the LLM;
* ``L_DM = L_ID + beta * L_Token``.

Paper sizes: encoder widths [4096, 2048, 1024, 512, 256] over LLaMA-7B's 4096-d states, 4
levels of 256 codes of dimension 256. semrec's default scales them from the backbone: the
widths halve from the input width down to ``code_dim`` (default input width / 16, at least
8); ``encoder_widths`` sets them explicitly. The inputs are standardised per dimension
with their statistics at initialisation (LLM hidden states have a few huge dimensions),
and the codebooks start as residual k-means centroids of the encoder's initial outputs
(so no code starts dead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semrec.tokenizers.base import TOKENIZERS
from semrec.tokenizers.dynamic import DynamicTokenizer, SIDReader
from semrec.tokenizers.quantizer import ResidualQuantizer, upgrade_codebook_keys

DEFAULT_TTDS_PREFIXES = ("a", "b", "c", "d", "e", "f", "g", "h")


def halving_widths(input_dim: int, code_dim: int) -> list[int]:
    """[input_dim, input_dim/2, ..., code_dim]: the paper's halving encoder, scaled."""
    widths = [input_dim]
    while widths[-1] // 2 > code_dim:
        widths.append(widths[-1] // 2)
    return [*widths, code_dim]


@TOKENIZERS.register("ttds")
class TTDSTokenizer(DynamicTokenizer):
    """One TTDS tower; see the module docstring. ``levels`` codebooks of ``codebook_size``.

    ``level_prefixes`` needs ``levels + 1`` entries: the last names the collision suffix
    (default: ``a, b, c, d`` then ``p`` for the suffix, as in the paper's ``<p_k>``).
    """

    def __init__(
        self,
        levels: int = 4,
        codebook_size: int = 256,
        *,
        code_dim: int | None = None,
        encoder_widths: Sequence[int] | None = None,
        beta: float = 0.25,
        commitment: float = 0.0,
        temperature: float = 1.0,
        suffix_size: int = 32,
        kmeans_iters: int = 20,
        level_prefixes: str | Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if levels < 1 or codebook_size < 2:
            raise ValueError(
                f"ttds: levels must be >= 1 and codebook_size >= 2, got {levels}, {codebook_size}"
            )
        if temperature <= 0 or beta < 0 or commitment < 0:
            raise ValueError("ttds: temperature must be > 0, beta and commitment >= 0")
        if code_dim is not None and encoder_widths is not None:
            raise ValueError("ttds: give code_dim or encoder_widths, not both")
        self._given_prefixes = level_prefixes
        if level_prefixes is None:
            level_prefixes = (*DEFAULT_TTDS_PREFIXES[:levels], "p")
        super().__init__(
            [codebook_size] * levels, level_prefixes, suffix_size=suffix_size, seed=seed
        )
        self.n_levels = levels
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.encoder_widths = None if encoder_widths is None else [int(w) for w in encoder_widths]
        self.beta = beta
        self.commitment = commitment
        self.temperature = temperature
        self.kmeans_iters = kmeans_iters
        self.encoder: nn.Sequential | None = None
        self.id_head: nn.Linear | None = None
        self.quantizer: ResidualQuantizer | None = None

    def config(self) -> dict[str, Any]:
        prefixes = self._given_prefixes
        return {
            "levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
            "encoder_widths": self.encoder_widths,
            "beta": self.beta,
            "commitment": self.commitment,
            "temperature": self.temperature,
            "suffix_size": self.suffix_size,
            "kmeans_iters": self.kmeans_iters,
            "level_prefixes": None if prefixes is None else list(prefixes),
            "seed": self.seed,
        }

    # ---------------------------------------------------------------- parameters
    def widths(self, input_dim: int) -> list[int]:
        if self.encoder_widths is not None:
            if self.encoder_widths[0] != input_dim:
                raise ValueError(
                    f"ttds: encoder_widths starts at {self.encoder_widths[0]}, but the inputs "
                    f"have width {input_dim}"
                )
            return list(self.encoder_widths)
        code_dim = self.code_dim or max(8, input_dim // 16)
        return halving_widths(input_dim, code_dim)

    def _build(self, input_dim: int, reader_dim: int | None = None) -> None:
        widths = self.widths(input_dim)
        # inputs from another encoder: L_ID maps the LLM's X^S to their width first
        self.id_head = None if reader_dim is None else nn.Linear(reader_dim, input_dim)
        layers: list[nn.Module] = []
        for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(width_in, width_out))
        self.encoder = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.quantizer = ResidualQuantizer(
            [self.codebook_size] * self.n_levels, widths[-1], init_scale=0.1
        )

    def _initialize(self) -> None:
        with torch.no_grad():
            self.input_mean = self.inputs.mean(dim=0)
            self.input_scale = self.inputs.std(dim=0, unbiased=False).clamp(min=1e-6)
            self.quantizer.init_kmeans(
                self.encode(self.inputs), self.seed, max_iter=self.kmeans_iters
            )

    def _saved_reader_dim(self, state: dict[str, torch.Tensor]) -> int | None:
        head = state.get("id_head.weight")
        return None if head is None else int(head.shape[1])

    # ---------------------------------------------------------------- quantisation
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's output for (standardised) inputs [n, d] -> [n, code_dim]."""
        return self.encoder((inputs.float() - self.input_mean) / self.input_scale)

    def assign(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.quantizer.encode(self.encode(inputs))[0]

    def loss(self, rows: torch.Tensor, reader: SIDReader | None) -> dict[str, torch.Tensor]:
        """DM-VAE losses over ``rows``; without a ``reader`` (or with ``beta`` only) L_ID is 0."""
        x = self.inputs[rows.to(self.inputs.device)]
        residual = self.encode(x)
        quantized = self.quantizer.quantize(residual)
        token = quantized.vq_loss(self.commitment)
        weights = []
        for distances, index in zip(quantized.distances, quantized.codes.T):
            soft = torch.softmax(-distances / (residual.shape[1] * self.temperature), dim=1)
            hard = F.one_hot(index, distances.shape[1]).to(soft.dtype)
            weights.append(hard + soft - soft.detach())
        identity = x.new_zeros(())
        if reader is not None:
            read = reader(weights).float()
            if self.id_head is not None:
                read = self.id_head(read)
            identity = F.mse_loss(read, x)  # X^I is a fixed target
        return {"total": identity + self.beta * token, "id": identity, "token": token}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_codebook_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

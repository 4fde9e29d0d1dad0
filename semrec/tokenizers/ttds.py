"""TTDS's semantic token generator (one tower): a residual-quantiser autoencoder.

Paper: "Twin-Tower Dynamic Semantic Recommender" (``shared/papers/003``), section 4.2.
A tower maps the LLM's representation X of an item's (or user's) text (Eq. 6) through an
MLP encoder into the codebook space and quantises it residually: at level m the code is
the nearest codebook vector to the residual left by the levels before (Eq. 10-11). The
twin tower is two instances, one configured as ``items.tokenizer`` and one as
``users.tokenizer``; the single-tower ablation (STDS) leaves out the users'.

The paper's discretiser is a residual quantiser in the SoundStream line (its citation for
the quantiser), and here it is one: semrec's shared
:class:`~semrec.tokenizers.quantizer.ResidualQuantizer` between a Xavier-initialised encoder
and a mirrored decoder. The loss of a batch of rows is

* ``L_Token`` (Eq. 13), split the usual VQ way: per level the codebook term
  ``|sg(r) - c|^2`` plus ``commitment * |r - sg(c)|^2``;
* ``L_rec``: the decoder's reconstruction of the standardised input from the quantised
  vector (straight-through to the encoder), weight ``reconstruction``. The paper does not
  name it; without it nothing holds the codes apart and the tower collapses (measured
  before: 98-100% of the items in a few SIDs after the paper's warm-up);
* ``L_ID`` (Eq. 12): ``|X^S - X^I|^2``, the LLM's reading of the SID token sequence against
  the (standardised) text representation. It trains the reader (the SID rows, LoRA and
  ``id_head``). With ``id_to_tower`` > 0 it also reaches the tower, locally: the chosen
  code's one-hot weight carries ``id_to_tower * (p - sg(p))`` with ``p = exp(-d / (D T))``
  of that code's distance only, so the forward pass reads exactly the chosen tokens and no
  code the row did not choose gets a gradient;
* ``L_DM = L_ID + beta * L_Token + reconstruction * L_rec``.

The codebooks learn from the codebook term between refreshes, and every refresh first
brings them up to the encoder: ``lloyd_iters`` Lloyd steps from the current codebooks on
every row's encoding (a batch form of the EMA codebook updates of VQ-VAE-2 and SoundStream;
gradient steps alone left them behind an encoder that moves faster, and the codes merged:
78% of the rows collided after the paper's warm-up on clustered vectors against 50% for
k-means on the same encodings), then re-seeds the codes no row uses onto the rows the
codebooks fit worst (``reseed_dead_codes``). Each refresh records the collision rate of
static residual k-means on the same inputs beside its own (``static_collision_rate``).

Paper sizes: encoder widths [4096, 2048, 1024, 512, 256] over LLaMA-7B's 4096-d states, 4
levels of 256 codes of dimension 256. semrec's default keeps the code dimension (256, or the
input width when that is narrower) and halves the widths from the input width down to it;
``encoder_widths`` sets them explicitly. (An earlier default of input width / 16 left a
latent too narrow to keep rows apart: on clustered vectors, 9-15% of the rows collided at
initialisation against 3-5% for static k-means on the inputs; at the input's width, 3-5%.) The inputs are standardised per dimension
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
from semrec.tokenizers.collisions import collision_rate
from semrec.tokenizers.dynamic import DynamicTokenizer, SIDReader
from semrec.tokenizers.quantizer import ResidualQuantizer, upgrade_codebook_keys
from semrec.tokenizers.rqvae import mlp

DEFAULT_TTDS_PREFIXES = ("a", "b", "c", "d", "e", "f", "g", "h")
#: The paper's code dimension (section 5.1.4); narrower inputs keep their own width.
PAPER_CODE_DIM = 256


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
        commitment: float = 0.25,
        reconstruction: float = 1.0,
        id_to_tower: float = 0.0,
        temperature: float = 1.0,
        reseed_dead_codes: bool = True,
        lloyd_iters: int = 10,
        suffix_size: int = 32,
        kmeans_iters: int = 20,
        level_prefixes: str | Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if levels < 1 or codebook_size < 2:
            raise ValueError(
                f"ttds: levels must be >= 1 and codebook_size >= 2, got {levels}, {codebook_size}"
            )
        weights = {
            "beta": beta,
            "commitment": commitment,
            "reconstruction": reconstruction,
            "id_to_tower": id_to_tower,
        }
        if temperature <= 0 or any(value < 0 for value in weights.values()):
            raise ValueError(
                f"ttds: temperature must be > 0 and {', '.join(weights)} >= 0, got "
                f"temperature={temperature}, {weights}"
            )
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
        self.reconstruction = reconstruction
        self.id_to_tower = id_to_tower
        self.temperature = temperature
        self.reseed_dead_codes = bool(reseed_dead_codes)
        if isinstance(lloyd_iters, bool) or not isinstance(lloyd_iters, int) or lloyd_iters < 0:
            raise ValueError(f"ttds: lloyd_iters must be an int >= 0, got {lloyd_iters!r}")
        self.lloyd_iters = lloyd_iters
        self.kmeans_iters = kmeans_iters
        self.encoder: nn.Sequential | None = None
        self.decoder: nn.Sequential | None = None
        self.id_head: nn.Linear | None = None
        self.quantizer: ResidualQuantizer | None = None
        self._static_rate: float | None = None

    def config(self) -> dict[str, Any]:
        prefixes = self._given_prefixes
        return {
            "levels": self.n_levels,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
            "encoder_widths": self.encoder_widths,
            "beta": self.beta,
            "commitment": self.commitment,
            "reconstruction": self.reconstruction,
            "id_to_tower": self.id_to_tower,
            "temperature": self.temperature,
            "reseed_dead_codes": self.reseed_dead_codes,
            "lloyd_iters": self.lloyd_iters,
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
        code_dim = self.code_dim or min(PAPER_CODE_DIM, input_dim)
        return halving_widths(input_dim, code_dim)

    def _build(self, input_dim: int, reader_dim: int | None = None) -> None:
        widths = self.widths(input_dim)
        # inputs from another encoder: L_ID maps the LLM's X^S to their width first
        self.id_head = None if reader_dim is None else nn.Linear(reader_dim, input_dim)
        self.encoder = mlp(widths)
        self.decoder = mlp(widths[::-1])
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.quantizer = ResidualQuantizer([self.codebook_size] * self.n_levels, widths[-1])

    def _initialize(self) -> None:
        with torch.no_grad():
            self.input_mean = self.inputs.mean(dim=0)
            self.input_scale = self.inputs.std(dim=0, unbiased=False).clamp(min=1e-6)
            self.quantizer.init_kmeans(
                self.encode(self.inputs), self.seed, max_iter=self.kmeans_iters
            )
        self._static_rate = None

    def _saved_reader_dim(self, state: dict[str, torch.Tensor]) -> int | None:
        head = state.get("id_head.weight")
        return None if head is None else int(head.shape[1])

    def set_inputs(self, inputs: torch.Tensor) -> None:
        super().set_inputs(inputs)
        self._static_rate = None

    # ---------------------------------------------------------------- quantisation
    def standardize(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs.float() - self.input_mean) / self.input_scale

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder's output for (standardised) inputs [n, d] -> [n, code_dim]."""
        return self.encoder(self.standardize(inputs))

    def assign(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.quantizer.encode(self.encode(inputs))[0]

    def loss(self, rows: torch.Tensor, reader: SIDReader | None) -> dict[str, torch.Tensor]:
        """DM-VAE losses over ``rows`` (see the module docstring); without a ``reader`` L_ID is 0."""
        x = self.standardize(self.inputs[rows.to(self.inputs.device)])
        z = self.encoder(x)
        quantized = self.quantizer.quantize(z)
        token = quantized.vq_loss(self.commitment)
        rec = x.new_zeros(())
        if self.reconstruction:
            rec = F.mse_loss(self.decoder(quantized.straight_through(z)), x)
        identity = x.new_zeros(())
        if reader is not None:
            weights = [
                self._reader_weights(distances, codes, z.shape[1])
                for distances, codes in zip(quantized.distances, quantized.codes.T)
            ]
            read = reader(weights).float()
            if self.id_head is not None:
                read = self.id_head(read)
            identity = F.mse_loss(read, x)  # X^I is a fixed target
        total = identity + self.beta * token + self.reconstruction * rec
        return {"total": total, "id": identity, "token": token, "reconstruction": rec}

    def _reader_weights(
        self, distances: torch.Tensor, codes: torch.Tensor, dim: int
    ) -> torch.Tensor:
        """One-hot weights of the chosen codes [b, K]; with ``id_to_tower`` the chosen code's
        weight passes L_ID's gradient to that code's distance alone (forward value 1)."""
        hard = F.one_hot(codes, distances.shape[1]).to(distances.dtype)
        if not self.id_to_tower:
            return hard
        chosen = distances.gather(1, codes[:, None])  # [b, 1]
        p = torch.exp(-chosen / (dim * self.temperature))
        return hard * (1.0 + self.id_to_tower * (p - p.detach()))

    # ---------------------------------------------------------------- refreshes
    def _before_refresh(self) -> dict[str, Any]:
        """The codebooks brought up to the encoder (Lloyd steps, dead codes re-seeded), and
        the static k-means collision rate of these inputs, for the refresh's record."""
        record: dict[str, Any] = {"static_collision_rate": self.static_collision_rate()}
        if not self.refreshes:  # the first derivation follows the k-means initialisation
            return record
        with torch.no_grad():
            z = self.encode(self.inputs)
            if self.lloyd_iters:
                self.quantizer.refine(z, self.lloyd_iters)
            if self.reseed_dead_codes:
                record["reseeded_codes"] = self.quantizer.reseed_unused_codes(z)
        return record

    def static_collision_rate(self) -> float:
        """The collision rate (before the suffix) that static residual k-means with this
        tower's codebook sizes reaches on the same standardised inputs; cached per inputs."""
        if self._static_rate is None:
            x = self.standardize(self.inputs).detach().cpu()
            static = ResidualQuantizer([self.codebook_size] * self.n_levels, x.shape[1])
            codes = static.init_kmeans(x, self.seed, max_iter=self.kmeans_iters)
            self._static_rate = collision_rate(codes)
        return self._static_rate

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_codebook_keys(state_dict, prefix)
        if (
            f"{prefix}encoder.0.weight" in state_dict
            and f"{prefix}decoder.0.weight" not in state_dict
        ):
            raise ValueError(
                "this TTDS tower was saved by semrec before the tower had a decoder (issue "
                "#28); its codes were trained another way: fit the run again"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

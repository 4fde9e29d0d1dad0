"""One residual quantiser for every residual method: RQ-VAE, the behaviour codebook, TTDS
and residual k-means.

:class:`ResidualQuantizer` holds ``L`` codebooks. Level ``l`` assigns each row the code
nearest to what the levels before left over (the residual), and passes on the next
residual. What differs between the papers is injected, not copied:

* the **distance** (:mod:`semrec.tokenizers.distances`): squared L2 (RQ-VAE, TS-Rec, TTDS)
  or ``1 - cos`` (Semantic Convergence's example);
* the **residual rule**: the plain difference ``r - c`` or its absolute value ``|r - c|``
  (Semantic Convergence, Eq. 1; :attr:`QuantizerPass.signs` undoes it in
  :meth:`QuantizerPass.quantized`);
* the **assignment** of a level: argmin, or any function of the level's distances passed
  per call (LC-Rec's Sinkhorn on the last level, :func:`~semrec.tokenizers.sinkhorn.sinkhorn_codes`).

Shared by all of them:

* :meth:`ResidualQuantizer.quantize`, the differentiable pass: codes are picked on detached
  distances, each chosen code row is differentiable with respect to its codebook, and the
  next residual subtracts the *detached* code, so the encoder gets the gradient of every
  level's commitment term and each codebook learns only from its own level (VQ-VAE,
  SoundStream's residual VQ);
* :meth:`QuantizerPass.vq_loss`: the codebook term ``d(sg[r], c)`` plus ``beta`` times the
  commitment term ``d(r, sg[c])``, summed over levels;
* :meth:`ResidualQuantizer.init_kmeans`: residual k-means on the inputs (k-means++ then
  Lloyd, :func:`~semrec.tokenizers.kmeans.kmeans`), so no code starts dead;
* :meth:`ResidualQuantizer.refine`: Lloyd steps from the current codebooks, so they follow
  a moving encoder (a batch form of the EMA codebook updates of VQ-VAE-2 and SoundStream);
* :meth:`ResidualQuantizer.reseed_unused_codes`: codes no row uses move onto the rows the
  codebook reconstructs worst (the dead-code replacement of SoundStream and its successors);
* :meth:`ResidualQuantizer.encode` and :meth:`ResidualQuantizer.decode` without gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from semrec.tokenizers.distances import DISTANCES, nearest, pairwise_distances
from semrec.tokenizers.kmeans import kmeans

RESIDUALS = ("difference", "abs")

#: Picks one code per row from a level's distances [n, K] (default: the argmin).
Assignment = Callable[[torch.Tensor], torch.Tensor]


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a - b||^2`` averaged over elements: VQ-VAE's loss distance (the default of :meth:`QuantizerPass.vq_loss`)."""
    return F.mse_loss(a, b)


def codebook_sizes_per_level(levels: int, codebook_size: int | Sequence[int]) -> list[int]:
    """One codebook size per level from ``levels`` and an int (every level) or a list;
    raises ``ValueError`` naming the bad value. Every residual tokenizer reads its sizes here."""
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise ValueError(f"levels must be an int >= 1, got {levels!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if isinstance(codebook_size, (str, bytes, bool)) or not isinstance(
        codebook_size, (int, Sequence)
    ):
        raise ValueError(
            f"codebook_size must be an int or a list of ints (one per level), got {codebook_size!r}"
        )
    sizes = [codebook_size] * levels if isinstance(codebook_size, int) else list(codebook_size)
    if len(sizes) != levels:
        raise ValueError(f"codebook_size lists {len(sizes)} sizes but there are {levels} levels")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"every codebook size must be an int >= 1, got {sizes}")
    return sizes


@dataclass
class QuantizerPass:
    """One differentiable pass of rows through the levels (:meth:`ResidualQuantizer.quantize`)."""

    codes: torch.Tensor  # [n, levels] long
    inputs: list[torch.Tensor] = field(default_factory=list)  # each level's residual [n, d]
    chosen: list[torch.Tensor] = field(default_factory=list)  # its chosen code rows [n, d]
    distances: list[torch.Tensor] = field(default_factory=list)  # [n, K] per level
    signs: list[torch.Tensor] = field(default_factory=list)  # +-1 [n, d]; all 1 for "difference"

    def quantized(self) -> torch.Tensor:
        """The codes' approximation of the level-0 input: ``c0 + s0 * (c1 + s1 * (c2 + ...))``;
        the plain sum of chosen codes under the ``difference`` rule. Differentiable in the codebooks."""
        approximation = self.chosen[-1]
        for level in range(len(self.chosen) - 2, -1, -1):
            approximation = self.chosen[level] + self.signs[level] * approximation
        return approximation

    def straight_through(self, z: torch.Tensor) -> torch.Tensor:
        """The quantised value in the forward pass, the identity towards ``z`` in the backward."""
        return z + (self.quantized() - z).detach()

    def vq_loss(
        self,
        beta: float,
        distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_squared_error,
    ) -> torch.Tensor:
        """Sum over levels of ``distance(sg[r], c) + beta * distance(r, sg[c])`` (a scalar).

        ``distance`` maps two [n, d] tensors to a scalar; the default is the mean squared
        error over elements, as VQ-VAE and LC-Rec's RQ-VAE. ``beta = 0`` trains only the codebooks.
        """
        total = self.codes.new_zeros((), dtype=self.chosen[0].dtype)
        for residual, code in zip(self.inputs, self.chosen):
            total = total + distance(residual.detach(), code)
            if beta:
                total = total + beta * distance(residual, code.detach())
        return total


class ResidualQuantizer(nn.Module):
    """``L`` residual codebooks with one distance and one residual rule (see the module docstring).

    The codebooks are the parameters ``codebooks.<level>``, each [K_level, dim].
    """

    def __init__(
        self,
        codebook_sizes: Sequence[int],
        dim: int,
        *,
        distance: str = "l2",
        residual: str = "difference",
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if not codebook_sizes or any(int(size) < 1 for size in codebook_sizes):
            raise ValueError(f"codebook sizes must be >= 1, got {list(codebook_sizes)}")
        if dim < 1:
            raise ValueError(f"the code dimension must be >= 1, got {dim}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.distance = distance
        self.residual = residual
        # init_scale > 0 draws N(0, init_scale^2) codes (from the global RNG); 0 gives zeros.
        # Either way the owners overwrite them with init_kmeans before training.
        self.codebooks = nn.ParameterList(
            nn.Parameter(
                torch.randn(int(size), dim) * init_scale
                if init_scale
                else torch.zeros(int(size), dim)
            )
            for size in codebook_sizes
        )

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(codebook.shape[0]) for codebook in self.codebooks]

    def _next_residual(
        self, residual: torch.Tensor, code: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next level's input and the sign that undoes the ``abs`` rule."""
        difference = residual - code
        if self.residual == "abs":
            return difference.abs(), torch.where(difference.detach() < 0, -1.0, 1.0)
        return difference, torch.ones_like(difference)

    def quantize(
        self, z: torch.Tensor, *, assign: dict[int, Assignment] | None = None
    ) -> QuantizerPass:
        """The differentiable pass of ``z`` [n, dim] through every level.

        ``assign`` maps a level to a function choosing that level's codes from its detached
        distances [n, K] (default argmin), e.g. ``{levels - 1: sinkhorn}`` for LC-Rec's USM.
        """
        assign = assign or {}
        result = QuantizerPass(codes=z.new_zeros((z.shape[0], 0), dtype=torch.long))
        residual, codes = z, []
        for level, codebook in enumerate(self.codebooks):
            distances = pairwise_distances(residual, codebook, self.distance)
            with torch.no_grad():
                chooser = assign.get(level)
                code = (
                    distances.detach().argmin(dim=1)
                    if chooser is None
                    else chooser(distances.detach())
                )
            chosen = codebook[code]
            result.inputs.append(residual)
            result.chosen.append(chosen)
            result.distances.append(distances)
            residual, sign = self._next_residual(residual, chosen.detach())
            result.signs.append(sign)
            codes.append(code)
        result.codes = torch.stack(codes, dim=1)
        return result

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmin codes [n, levels] of ``z`` and each row's summed distance to its codes [n]."""
        residual, codes = z, []
        error = z.new_zeros(z.shape[0])
        for codebook in self.codebooks:
            code, best = nearest(residual, codebook, self.distance)
            codes.append(code)
            error += best
            residual, _ = self._next_residual(residual, codebook[code])
        return torch.stack(codes, dim=1), error

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The approximation of the inputs that ``codes`` [n, levels] stand for."""
        if codes.ndim != 2 or codes.shape[1] != self.levels:
            raise ValueError(
                f"expected codes of shape [n, {self.levels}], got {tuple(codes.shape)}"
            )
        if self.residual == "abs":
            raise ValueError(
                "codes alone cannot be decoded under the 'abs' residual rule (the signs are lost)"
            )
        return sum(codebook[codes[:, level]] for level, codebook in enumerate(self.codebooks))

    @torch.no_grad()
    def init_kmeans(
        self, z: torch.Tensor, seed: int | torch.Generator = 0, *, max_iter: int = 100
    ) -> torch.Tensor:
        """Residual k-means on ``z`` sets every codebook; returns the codes of ``z`` [n, levels].

        Level ``l`` clusters the residuals that the already initialised levels leave. One
        generator seeded by ``seed`` serves all levels.
        """
        generator = (
            seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        )
        residual, codes = z.detach().float(), []
        for codebook in self.codebooks:
            result = kmeans(residual, codebook.shape[0], max_iter=max_iter, seed=generator)
            codebook.copy_(result.centroids)
            if self.distance == "l2":  # k-means' own assignment is the nearest centroid
                code = result.assignments
            else:
                code, _ = nearest(residual, codebook, self.distance)
            codes.append(code)
            residual, _ = self._next_residual(residual, codebook[code])
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def refine(self, z: torch.Tensor, iterations: int) -> None:
        """Up to ``iterations`` Lloyd steps per level from the current codebooks on ``z``.

        A warm start: each code moves to the mean of the residuals it is nearest to, so the
        codebooks follow an encoder that moved since they were set (what the exponential
        moving averages of VQ-VAE-2 and SoundStream do step by step), and the codes stay
        near the ones they were. As in k-means, a code no residual chooses moves to the
        residual farthest from its own code. The steps are L2 Lloyd steps whatever the
        quantiser's distance.
        """
        residual = z.detach().float()
        for codebook in self.codebooks:
            result = kmeans(residual, codebook.shape[0], max_iter=iterations, init=codebook)
            codebook.copy_(result.centroids)
            code, _ = nearest(residual, codebook, self.distance)
            residual, _ = self._next_residual(residual, codebook[code])

    @torch.no_grad()
    def reseed_unused_codes(self, z: torch.Tensor) -> list[int]:
        """Move every code that no row of ``z`` uses onto the rows its level fits worst.

        Level by level (each level's residuals come from the levels already re-seeded): the
        unused codes take the residuals with the largest distance to their chosen code,
        distinct rows first, worst first. Deterministic. Returns the number moved per level.
        """
        moved, residual = [], z.detach().float()
        for codebook in self.codebooks:
            code, best = nearest(residual, codebook, self.distance)
            unused = (torch.bincount(code, minlength=codebook.shape[0]) == 0).nonzero().flatten()
            candidates = torch.argsort(best, descending=True, stable=True)
            candidates = candidates[best[candidates] > 0]
            taken = candidates[: unused.numel()]
            codebook[unused[: taken.numel()]] = residual[taken]
            moved.append(int(taken.numel()))
            if taken.numel():
                code, _ = nearest(residual, codebook, self.distance)
            residual, _ = self._next_residual(residual, codebook[code])
        return moved


def upgrade_codebook_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Rename a saved model's ``<prefix>codebooks.<l>`` to ``<prefix>quantizer.codebooks.<l>``.

    Tokenizers saved before the codebooks moved into :class:`ResidualQuantizer` stored them
    on the model itself. The owners call this from ``_load_from_state_dict`` (as PyTorch's
    own modules upgrade old checkpoints), so those run directories still load.
    """
    legacy = prefix + "codebooks."
    for key in [key for key in state_dict if key.startswith(legacy)]:
        state_dict[prefix + "quantizer." + key[len(prefix) :]] = state_dict.pop(key)

"""Semantic Convergence's Alignment Tokenization (Meituan, AAAI 2025, Eq. 1-4): ``behavior_codebook``.

``levels`` (N) cascaded codebooks of ``codebook_size`` (C) codes over collaborative-filtering
item embeddings, with no encoder and no decoder:

* level 0's input is the item's CF embedding, ``E^0 = Emb(r_i)``; level ``n``'s input is
  ``E^n = |E^{n-1} - B^{n-1}_{c*}|`` (Eq. 1), or the plain difference with
  ``residual="difference"``;
* each level picks ``c* = argmin_c Dist(E^n, B^n_c)`` (Eq. 2); ``Dist`` is the cosine
  distance ``1 - cos`` (``distance="cosine"``, the paper's example) or the squared L2
  distance (``distance="l2"``);
* the loss (Eq. 3-4) is ``L = L_B + L_L``: the behaviour alignment
  ``L_B = sum_n Dist(E^n, B^n_{c*})`` and the LLM alignment
  ``L_L = sum_n Dist(P B^n_{c*}, E^LLM)``, with ``P`` a learnable linear projection from the
  code dimension to the LLM width and ``E^LLM`` the mean of the LLM's input embeddings over
  the item's title and description (passed to :meth:`~BehaviorCodebookTokenizer.fit` as
  ``llm_targets``; the pipeline computes them with the run's backbone).

Choices the paper leaves open, made here:

* the cascade is semrec's shared :class:`~semrec.tokenizers.quantizer.ResidualQuantizer`
  (cosine or L2 distance, ``|.|`` or plain residual): each level's codebook term sees its
  input detached, so codebook ``n`` learns only from its own inputs, as in k-means and
  RQ-VAE; under "ED" the commitment terms of every level reach the encoder through the
  residuals (codes detached), as in RQ-VAE;
* level ``n`` is initialised by k-means on ``E^n`` computed with the already initialised
  levels before it (the paper clusters "a batch"; here it is every item);
* the projection ``P`` is shared by the levels (Eq. 3 names one ``E^LLM`` per item);
* the same distance is used for both terms.

Ablations of the paper's Table 3: ``encoder_decoder=True`` ("ED") puts an RQ-VAE-style MLP
encoder before the codebooks and a decoder after them; the decoder reads the sum of chosen
codes (sign-corrected under the ``|.|`` residual, so it is the quantised latent), a
reconstruction MSE joins the loss, and ``L_B`` becomes RQ-VAE's codebook + ``beta``
commitment terms so the encoder learns. ``llm_alignment=False`` ("w/o LA") drops ``L_L``.

Collisions are resolved with :func:`~semrec.tokenizers.collisions.resolve_collisions`
(default: TS-Rec's last-level reassignment; the item with the smallest ``L_B`` keeps its
code). New items are encoded by Eq. 1-2 with the trained codebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from semrec.tokenizers.base import DEFAULT_LEVEL_PREFIXES, TOKENIZERS, FittedCodes, ItemTokenizer
from semrec.tokenizers.collisions import (
    COLLISION_STRATEGIES,
    OVERFLOW_POLICIES,
)
from semrec.tokenizers.distances import row_distances
from semrec.tokenizers.quantizer import (
    RESIDUALS,
    ResidualQuantizer,
    codebook_sizes_per_level,
    upgrade_codebook_keys,
)
from semrec.tokenizers.rqvae import mlp
from semrec.tokenizers.rqvae_usm import check_capacity
from semrec.tokenizers.small_trainer import fit_on_cpu, log_code_health

DISTANCES = ("cosine", "l2")


class BehaviorCodebook(nn.Module):
    """The cascaded codebooks, the LLM projection and (for "ED") an encoder and decoder."""

    def __init__(
        self,
        input_dim: int,
        codebook_sizes: Sequence[int],
        *,
        llm_dim: int | None,
        residual: str = "abs",
        distance_kind: str = "cosine",
        encoder_layers: Sequence[int] | None = None,
        code_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.distance_kind = distance_kind
        if encoder_layers is None:
            self.encoder = self.decoder = None
            dim = input_dim
        else:
            dim = code_dim or input_dim
            widths = [input_dim, *encoder_layers, dim]
            self.encoder = mlp(widths)
            self.decoder = mlp(widths[::-1])
        self.quantizer = ResidualQuantizer(
            codebook_sizes, dim, distance=distance_kind, residual=residual
        )
        self.projection = nn.Linear(dim, llm_dim) if llm_dim is not None else None

    @property
    def codebooks(self) -> nn.ParameterList:
        return self.quantizer.codebooks

    @property
    def code_dim(self) -> int:
        return self.quantizer.dim

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """``E^0``: the CF embedding itself, or its encoding for the "ED" ablation."""
        return x if self.encoder is None else self.encoder(x)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``Dist`` between matching rows, averaged over the rows (a scalar)."""
        return row_distances(a, b, self.distance_kind).mean()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [n, levels] and each item's behaviour distance ``L_B`` [n] (no gradients)."""
        return self.quantizer.encode(self.latent(x))

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """k-means on each level's inputs, computed with the levels already initialised."""
        self.quantizer.init_kmeans(self.latent(x), seed)

    def losses(
        self, x: torch.Tensor, llm_targets: torch.Tensor | None, *, beta: float = 0.25
    ) -> dict[str, torch.Tensor]:
        """Eq. 3 per batch (means over items): ``behaviour``, ``llm`` and, for "ED", ``reconstruction``."""
        e0 = self.latent(x)
        result = self.quantizer.quantize(e0)
        # Without an encoder the inputs are constants: only the codebook term of L_B remains.
        # "ED" adds RQ-VAE's commitment term so that the encoder learns too.
        out = {"behaviour": result.vq_loss(0.0 if self.encoder is None else beta, self.distance)}
        if self.projection is not None and llm_targets is not None:
            out["llm"] = sum(self.distance(self.projection(b), llm_targets) for b in result.chosen)
        if self.decoder is not None:
            # straight-through: the decoder sees the codes, the encoder gets its gradient
            out["reconstruction"] = F.mse_loss(self.decoder(result.straight_through(e0)), x)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_codebook_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BehaviorCodebookTraining(lightning.LightningModule):
    """AdamW on ``L = L_B + llm_weight * L_L`` (+ reconstruction for "ED"); per-epoch history."""

    def __init__(
        self,
        model: BehaviorCodebook,
        items: torch.Tensor,
        *,
        lr: float,
        weight_decay: float,
        llm_weight: float,
        beta: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.items = items
        self.lr = lr
        self.weight_decay = weight_decay
        self.llm_weight = llm_weight
        self.beta = beta
        self.history: list[dict[str, Any]] = []
        self._sums: dict[str, float] = {}
        self._count = 0

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        x, targets = (batch[0], batch[1]) if len(batch) == 2 else (batch[0], None)
        parts = self.model.losses(x, targets, beta=self.beta)
        loss = parts["behaviour"] + self.llm_weight * parts.get("llm", 0.0)
        loss = loss + parts.get("reconstruction", 0.0)
        for name, value in parts.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.detach()) * x.shape[0]
        self._count += x.shape[0]
        self.log("train/loss", loss, batch_size=x.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        codes, _ = self.model.encode(self.items)
        record: dict[str, Any] = {"epoch": self.current_epoch}
        record.update({f"{name}_loss": total / self._count for name, total in self._sums.items()})
        sizes = [int(codebook.shape[0]) for codebook in self.model.codebooks]
        record.update(log_code_health(self, codes, sizes))
        self._sums.clear()
        self._count = 0
        self.history.append(record)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )


@TOKENIZERS.register("behavior_codebook")
class BehaviorCodebookTokenizer(ItemTokenizer):
    """Semantic Convergence's behaviour-aligned residual codebooks (see the module docstring).

    Defaults follow the paper where it says: 4 levels x 256 codes, cosine ``Dist``, the
    ``|.|`` residual, ``L_B + L_L`` with weight 1. Training (not in the paper): AdamW
    lr 1e-3, 100 epochs, batch 1024.

    ``fit(embeddings, llm_targets=...)`` needs the items' LLM input-embedding means
    [n_items, llm_width] when ``llm_alignment`` is on; :attr:`needs_llm_targets` says so.
    """

    def __init__(
        self,
        levels: int = 4,
        codebook_size: int | Sequence[int] = 256,
        *,
        residual: str = "abs",
        distance: str = "cosine",
        llm_alignment: bool = True,
        llm_weight: float = 1.0,
        encoder_decoder: bool = False,
        encoder_layers: Sequence[int] = (256, 128),
        code_dim: int = 32,
        beta: float = 0.25,
        epochs: int = 100,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        collision: str = "reassign",
        on_overflow: str = "error",
        seed: int = 0,
        log_dir: str | None = None,
        level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES,
    ) -> None:
        super().__init__(level_prefixes)
        self.codebook_sizes_config = codebook_sizes_per_level(levels, codebook_size)
        for name, value, allowed in (
            ("residual", residual, RESIDUALS),
            ("distance", distance, DISTANCES),
            ("collision", collision, COLLISION_STRATEGIES),
            ("on_overflow", on_overflow, OVERFLOW_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("code_dim", code_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("lr", lr), ("llm_weight", llm_weight), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in encoder_layers):
            raise ValueError(f"encoder_layers must be positive ints, got {list(encoder_layers)}")
        self.levels_config = levels
        self.residual = residual
        self.distance = distance
        self.llm_alignment = bool(llm_alignment)
        self.llm_weight = llm_weight
        self.encoder_decoder = bool(encoder_decoder)
        self.encoder_layers = list(encoder_layers)
        self.code_dim = code_dim
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.collision = collision
        self.on_overflow = on_overflow
        self.seed = seed
        self.log_dir = log_dir
        self.model: BehaviorCodebook | None = None
        self._llm_targets: torch.Tensor | None = None

    @property
    def needs_llm_targets(self) -> bool:
        """Whether :meth:`fit` needs ``llm_targets`` (the LLM-alignment loss is on)."""
        return self.llm_alignment

    def config(self) -> dict[str, Any]:
        sizes = self.codebook_sizes_config
        return {
            "levels": self.levels_config,
            "codebook_size": sizes[0] if len(set(sizes)) == 1 else list(sizes),
            "residual": self.residual,
            "distance": self.distance,
            "llm_alignment": self.llm_alignment,
            "llm_weight": self.llm_weight,
            "encoder_decoder": self.encoder_decoder,
            "encoder_layers": list(self.encoder_layers),
            "code_dim": self.code_dim,
            "beta": self.beta,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "collision": self.collision,
            "on_overflow": self.on_overflow,
            "seed": self.seed,
            "log_dir": self.log_dir,
            "level_prefixes": self.level_prefixes,
        }

    def fit(
        self,
        embeddings: torch.Tensor,
        seed: int | None = None,
        *,
        llm_targets: torch.Tensor | None = None,
    ) -> None:
        """Learn SIDs for CF ``embeddings`` [n, d], aligned to ``llm_targets`` [n, llm_width]."""
        if self.llm_alignment:
            if llm_targets is None:
                raise ValueError(
                    "behavior_codebook: llm_alignment is on, so fit needs llm_targets (each "
                    "item's mean LLM input embedding over its title and description); pass "
                    "them, or set llm_alignment: false (the paper's 'w/o LA' ablation)"
                )
            llm_targets = torch.as_tensor(llm_targets).detach().float()
            if llm_targets.ndim != 2 or llm_targets.shape[0] != embeddings.shape[0]:
                raise ValueError(
                    f"llm_targets must be [n_items={embeddings.shape[0]}, llm_width], got "
                    f"shape {tuple(llm_targets.shape)}"
                )
            if not bool(torch.isfinite(llm_targets).all()):
                raise ValueError("llm_targets contain NaN or inf")
        self._llm_targets = llm_targets if self.llm_alignment else None
        try:
            super().fit(embeddings, seed)
        finally:
            self._llm_targets = None

    def _new_model(self, input_dim: int, llm_dim: int | None) -> BehaviorCodebook:
        return BehaviorCodebook(
            input_dim,
            self.codebook_sizes_config,
            llm_dim=llm_dim,
            residual=self.residual,
            distance_kind=self.distance,
            encoder_layers=self.encoder_layers if self.encoder_decoder else None,
            code_dim=self.code_dim,
        )

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        seed = self.seed if seed is None else seed
        sizes = list(self.codebook_sizes_config)
        if self.collision == "reassign" and self.on_overflow == "error":
            check_capacity(sizes, embeddings.shape[0], "behavior_codebook")
        targets = self._llm_targets
        llm_dim = targets.shape[1] if targets is not None else None
        tensors = (embeddings,) if targets is None else (embeddings, targets)

        def build() -> BehaviorCodebookTraining:
            self.model = self._new_model(embeddings.shape[1], llm_dim)
            self.model.init_codebooks(embeddings, seed)
            return BehaviorCodebookTraining(
                self.model,
                embeddings,
                lr=self.lr,
                weight_decay=self.weight_decay,
                llm_weight=self.llm_weight,
                beta=self.beta,
            )

        training = fit_on_cpu(
            build,
            TensorDataset(*tensors),
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=seed,
            log_dir=self.log_dir,
            log_name="behavior_codebook",
        )
        model = training.model.eval()
        raw, behaviour = model.encode(embeddings)
        final = training.history[-1]
        return self._resolved(
            raw,
            sizes,
            seed=seed,
            priority=behaviour,
            info={
                "seed": seed,
                "input_dim": embeddings.shape[1],
                "llm_dim": llm_dim,
                "epochs": self.epochs,
                "final_behaviour_loss": final.get("behaviour_loss"),
                "final_llm_loss": final.get("llm_loss"),
                "history": training.history,
            },
        )

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        return model.encode(embeddings)[0]

    def _model_state(self) -> dict[str, torch.Tensor]:
        model = self._require_model()
        return {key: value.contiguous() for key, value in model.state_dict().items()}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        upgrade_codebook_keys(state, "")
        if "quantizer.codebooks.0" not in state:
            raise KeyError("behaviour-codebook state has no 'quantizer.codebooks.0'")
        projection = state.get("projection.weight")
        input_dim = (
            state["encoder.0.weight"].shape[1] if "encoder.0.weight" in state else None
        ) or state["quantizer.codebooks.0"].shape[1]
        model = self._new_model(input_dim, None if projection is None else projection.shape[0])
        model.load_state_dict(state)  # raises on missing/unexpected keys or shape mismatch
        self.model = model.eval()

    def _require_model(self) -> BehaviorCodebook:
        if self.model is None:
            raise RuntimeError("BehaviorCodebookTokenizer is not fitted; call fit(...) or load it")
        return self.model

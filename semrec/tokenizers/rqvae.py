"""The RQ-VAE of LC-Rec (Section III-B, Eq. 1-5) and its small Lightning training loop.

:class:`RQVAE` is an MLP autoencoder with a residual quantiser between encoder and decoder:

* encoder ``input_dim -> hidden... -> code_dim`` and decoder ``code_dim -> reversed hidden
  -> input_dim``, ReLU between layers, none after the last;
* ``levels`` codebooks; level ``l`` picks the code nearest to the residual left by the
  levels before it (Eq. 1-2); with ``usm=True`` the last level picks by Sinkhorn instead
  (Algorithm 1, :func:`~semrec.tokenizers.sinkhorn.sinkhorn_codes`);
* loss (Eq. 3-5) = reconstruction MSE + sum over levels of
  ``||sg[r] - e||^2 + beta * ||r - sg[e]||^2`` (means over elements, as LC-Rec's code),
  with the straight-through estimator carrying the decoder's gradient to the encoder.

:func:`train_rqvae` z-scores the input dimensions (optional, on by default; not in
LC-Rec), initialises the codebooks by residual k-means on the encoder's latents of all items, then trains with AdamW in a CPU ``lightning.Trainer`` that writes no
checkpoint files (:func:`~semrec.tokenizers.small_trainer.fit_on_cpu`). After every epoch it records the reconstruction loss, per-level code
usage and the collision rate of the argmin codes of all items (the returned history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from semrec.tokenizers.quantizer import ResidualQuantizer, upgrade_codebook_keys
from semrec.tokenizers.sinkhorn import DEFAULT_EPSILON, DEFAULT_ITERATIONS, sinkhorn_codes
from semrec.tokenizers.small_trainer import fit_on_cpu, log_code_health

#: LC-Rec's encoder widths (its decoder mirrors them); the latent (code) dimension is 32.
LCREC_HIDDEN_LAYERS = (2048, 1024, 512, 256)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with ReLU between them (not after the last).

    Weights are Xavier-normal and biases zero (as LC-Rec): PyTorch's default init shrinks
    the activations layer after layer, so a deep encoder would map every item to nearly
    the same latent and k-means could not spread the items over the codes.
    """
    layers: list[nn.Module] = []
    for index, (inp, out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(inp, out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class RQVAEOutput:
    """One forward pass: reconstruction, codes and the two loss terms."""

    reconstruction: torch.Tensor  # [n, input_dim]
    codes: torch.Tensor  # [n, levels]
    reconstruction_loss: torch.Tensor  # scalar, Eq. 3
    quantization_loss: torch.Tensor  # scalar, Eq. 4

    @property
    def loss(self) -> torch.Tensor:
        """Eq. 5."""
        return self.reconstruction_loss + self.quantization_loss


class RQVAE(nn.Module):
    """MLP encoder/decoder around a residual vector quantiser (see the module docstring)."""

    def __init__(
        self,
        input_dim: int,
        codebook_sizes: Sequence[int],
        *,
        code_dim: int = 32,
        hidden_layers: Sequence[int] = LCREC_HIDDEN_LAYERS,
        beta: float = 0.25,
        sinkhorn_epsilon: float = DEFAULT_EPSILON,
        sinkhorn_iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        super().__init__()
        if not codebook_sizes or any(size < 1 for size in codebook_sizes):
            raise ValueError(f"codebook sizes must be >= 1, got {list(codebook_sizes)}")
        widths = [input_dim, *hidden_layers, code_dim]
        if any(width < 1 for width in widths):
            raise ValueError(f"layer sizes must be >= 1, got {widths}")
        self.encoder = mlp(widths)
        self.decoder = mlp(widths[::-1])
        self.quantizer = ResidualQuantizer(codebook_sizes, code_dim, init_scale=0.01)
        self.beta = beta
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        # Inputs are standardised per dimension (identity until fit_standardization).
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))

    @torch.no_grad()
    def fit_standardization(self, x: torch.Tensor) -> None:
        """Z-score every input dimension with the mean and std of ``x`` (std 0 -> 1)."""
        std = x.std(dim=0) if x.shape[0] > 1 else torch.zeros(x.shape[1])
        self.input_mean.copy_(x.mean(dim=0))
        self.input_scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_scale

    @property
    def levels(self) -> int:
        return self.quantizer.levels

    @property
    def codebooks(self) -> torch.nn.ParameterList:
        return self.quantizer.codebooks

    def forward(self, x: torch.Tensor, *, usm: bool = False) -> RQVAEOutput:
        """Encode, quantise (last level by Sinkhorn if ``usm``), decode; Eq. 3-5.

        The reconstruction (and its loss) is in standardised input space.
        """
        x = self.standardize(x)
        z = self.encoder(x)
        assign = {self.levels - 1: self._sinkhorn} if usm else None
        quantized = self.quantizer.quantize(z, assign=assign)
        # Straight-through: the decoder sees the codes, the encoder gets the decoder's gradient.
        reconstruction = self.decoder(quantized.straight_through(z))
        return RQVAEOutput(
            reconstruction=reconstruction,
            codes=quantized.codes,
            reconstruction_loss=F.mse_loss(reconstruction, x),
            quantization_loss=quantized.vq_loss(self.beta),
        )

    def _sinkhorn(self, distances: torch.Tensor) -> torch.Tensor:
        return sinkhorn_codes(distances, self.sinkhorn_epsilon, self.sinkhorn_iterations)

    @torch.no_grad()
    def argmin_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Argmin codes [n, levels] (Eq. 1-2) and the last level's distances [n, K]."""
        quantized = self.quantizer.quantize(self.encoder(self.standardize(x)))
        return quantized.codes, quantized.distances[-1]

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """Residual k-means on the encoder's latents of ``x`` sets every codebook."""
        self.quantizer.init_kmeans(self.encoder(self.standardize(x)), seed)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_codebook_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RQVAETraining(lightning.LightningModule):
    """Lightning wrapper: AdamW on Eq. 5, per-epoch statistics over all items."""

    def __init__(
        self,
        model: RQVAE,
        items: torch.Tensor,
        *,
        lr: float,
        weight_decay: float,
        usm: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.items = items
        self.lr = lr
        self.weight_decay = weight_decay
        self.usm = usm
        self.history: list[dict[str, Any]] = []
        self._epoch_losses: list[tuple[float, float, int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        (x,) = batch
        output = self.model(x, usm=self.usm)
        self._epoch_losses.append(
            (
                output.reconstruction_loss.item(),
                output.quantization_loss.item(),
                x.shape[0],
            )
        )
        self.log("train/loss", output.loss, prog_bar=False, batch_size=x.shape[0])
        return output.loss

    def on_train_epoch_end(self) -> None:
        total = sum(size for _, _, size in self._epoch_losses)
        recon = sum(loss * size for loss, _, size in self._epoch_losses) / total
        quant = sum(loss * size for _, loss, size in self._epoch_losses) / total
        self._epoch_losses.clear()
        codes, _ = self.model.argmin_codes(self.items)
        sizes = [int(codebook.shape[0]) for codebook in self.model.codebooks]
        record = {
            "epoch": self.current_epoch,
            "reconstruction_loss": recon,
            "quantization_loss": quant,
            **log_code_health(self, codes, sizes),
        }
        self.history.append(record)
        self.log("epoch/reconstruction_loss", recon)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )


def train_rqvae(
    model: RQVAE,
    items: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    usm: bool = True,
    standardize: bool = True,
    seed: int = 0,
    log_dir: str | None = None,
) -> list[dict[str, Any]]:
    """K-means-initialise ``model``'s codebooks on ``items``, then train it; returns the history.

    With ``standardize`` the model first z-scores each input dimension with the statistics
    of ``items``. Sentence embeddings such as MiniLM's are unit-norm, so each dimension
    varies by ~0.05; unscaled, the reconstruction loss is ~1e-3 and training collapses onto
    a handful of codes (observed on ml-100k).

    Runs on CPU with a private RNG state (see :func:`~semrec.tokenizers.small_trainer.fit_on_cpu`).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")

    def build() -> RQVAETraining:
        if standardize:
            model.fit_standardization(items)
        model.init_codebooks(items, seed)
        return RQVAETraining(model, items, lr=lr, weight_decay=weight_decay, usm=usm)

    module = fit_on_cpu(
        build,
        TensorDataset(items),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        log_dir=log_dir,
        log_name="rqvae",
    )
    model.eval()
    return module.history

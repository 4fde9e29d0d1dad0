"""Dynamic tokenizers: SIDs that keep learning while the LLM trains (TTDS's protocol).

A :class:`DynamicTokenizer` is both an :class:`~semrec.tokenizers.base.ItemTokenizer` (codes,
tokens, ``stats()``, ``save``/``load``) and an ``nn.Module`` the LightningModule owns. Its
inputs are one vector per row (item or user), set with :meth:`set_inputs` and replaced
when the backbone that produced them changes. It differs from a static tokenizer in three
ways:

* :meth:`loss` gives a differentiable loss over some rows, so an optimiser can train the
  tokenizer together with the LLM;
* :meth:`refresh_codes` re-derives every row's SID from the current parameters and inputs
  and returns the rows whose SID changed (the trie must then be rebuilt);
* the vocabulary is fixed before any code exists (:meth:`token_strings` works unfitted),
  so the LLM can be built first and the codes learned with it.

Collisions get TTDS's suffix (section 4.2.5): the members of a group sharing a SID get one
extra token numbering them 0..g-1; unique rows get none. The suffix level has
``suffix_size`` codes; a refresh that would need more is refused (the old codes stay) and
counted. The current code table, the inputs and the parameters are all module state, so a
Lightning checkpoint restores them, and :meth:`save` writes them like any tokenizer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from semrec.seeding import seeded
from semrec.tokenizers.base import FittedCodes, ItemTokenizer
from semrec.tokenizers.collisions import PAD, append_suffix_level, collision_groups, collision_rate

#: ``reader(weights)``: the LLM's representation [b, hidden] of SIDs given per level as
#: (straight-through) one-hot weights [b, codebook size] (see :mod:`semrec.models.sid_reader`).
SIDReader = Callable[[list[torch.Tensor]], torch.Tensor]


class DynamicTokenizer(ItemTokenizer, nn.Module):
    """Base class of tokenizers trained jointly with the LLM; see the module docstring.

    Subclasses build their parameters in :meth:`_build` (from the input width), implement
    :meth:`assign` (codes of every row, no gradient) and :meth:`loss`, and may override
    :meth:`_initialize` (e.g. k-means codebook init).
    """

    def __init__(
        self,
        level_sizes: Sequence[int],
        level_prefixes: str | Sequence[str],
        *,
        suffix_size: int = 32,
        seed: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        if suffix_size < 1:
            raise ValueError(f"suffix_size must be >= 1, got {suffix_size}")
        prefixes = tuple(level_prefixes)
        if len(prefixes) < len(level_sizes) + 1:
            raise ValueError(
                f"level_prefixes {level_prefixes!r} names {len(prefixes)} levels; a dynamic "
                f"tokenizer with {len(level_sizes)} levels needs {len(level_sizes) + 1} "
                "(the last one is the collision suffix)"
            )
        ItemTokenizer.__init__(self, prefixes[: len(level_sizes) + 1])
        self.level_sizes = [int(size) for size in level_sizes]
        self.suffix_size = suffix_size
        self.seed = seed
        self.register_buffer("inputs", torch.empty(0, 0))
        self.register_buffer("code_table", torch.empty(0, len(level_sizes) + 1, dtype=torch.long))
        self.register_buffer("base_codes", torch.empty(0, len(level_sizes), dtype=torch.long))
        self.refreshes: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def _build(self, input_dim: int, reader_dim: int | None = None) -> None:
        """Create the parameters for inputs of width ``input_dim`` (seeded by ``self.seed``);
        ``reader_dim`` is the width of the reader's representations when it differs."""

    @abc.abstractmethod
    def assign(self, inputs: torch.Tensor) -> torch.Tensor:
        """Codes [n, levels] of ``inputs`` under the current parameters (no gradient)."""

    @abc.abstractmethod
    def loss(self, rows: torch.Tensor, reader: SIDReader | None) -> dict[str, torch.Tensor]:
        """Losses over ``rows`` (row indices): at least ``total``; ``reader`` is the LLM side."""

    def _initialize(self) -> None:
        """Set parameters from the inputs before any training (default: keep the init)."""

    def _before_refresh(self) -> dict[str, Any]:
        """Run before each refresh derives the codes (e.g. re-seed dead codes); what it
        returns joins the refresh's record in :meth:`stats`."""
        return {}

    # -------------------------------------------------------------------- life cycle
    @property
    def is_initialized(self) -> bool:
        return self.code_table.shape[0] > 0

    def initialize(self, inputs: torch.Tensor, reader_dim: int | None = None) -> None:
        """Build the parameters for ``inputs`` [n, d], initialise them and derive the codes.

        ``reader_dim``: the width of the LLM representations :meth:`loss` compares with the
        inputs, when the inputs come from elsewhere (another encoder) and differ in width.
        """
        inputs = _check_inputs(inputs)
        with seeded(self.seed):
            self._build(inputs.shape[1], reader_dim if reader_dim != inputs.shape[1] else None)
        self.inputs = inputs
        with seeded(self.seed):
            self._initialize()
        self.refreshes = []
        changed = self.refresh_codes(step=0)
        if changed is None:
            raise RuntimeError(
                f"{type(self).__name__}: the initial codes need a collision suffix longer than "
                f"suffix_size={self.suffix_size}; raise suffix_size or the codebook sizes"
            )

    def set_inputs(self, inputs: torch.Tensor) -> None:
        """Replace the rows' input vectors (e.g. recomputed by a changed backbone)."""
        inputs = _check_inputs(inputs)
        if self.is_initialized and inputs.shape != self.inputs.shape:
            raise ValueError(
                f"new inputs have shape {tuple(inputs.shape)}, the tokenizer was built for "
                f"{tuple(self.inputs.shape)}"
            )
        self.inputs = inputs.to(self.inputs.device)

    def warm_up(
        self,
        reader: SIDReader | None,
        *,
        steps: int,
        lr: float = 1e-3,
        batch_size: int = 64,
    ) -> list[float]:
        """Train the tokenizer alone (the LLM stays frozen) for ``steps``; the losses per step.

        Gradients are taken with respect to the tokenizer's parameters only, so the LLM's
        parameters get none. The codes are refreshed at the end.
        """
        self._require_initialized()
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:  # nothing to train (e.g. LSH): the codes follow the inputs alone
            self.refresh_codes(step=0)
            return []
        optimizer = torch.optim.AdamW(params, lr=lr)
        generator = torch.Generator().manual_seed(self.seed + 1)
        losses = []
        for _ in range(steps):
            rows = torch.randint(
                self.n_items, (min(batch_size, self.n_items),), generator=generator
            )
            total = self.loss(rows, reader)["total"]
            grads = torch.autograd.grad(total, params, allow_unused=True)
            for param, grad in zip(params, grads):
                param.grad = grad
            optimizer.step()
            losses.append(float(total.detach()))
        self.refresh_codes(step=0)
        return losses

    def refresh_codes(self, step: int | None = None) -> torch.Tensor | None:
        """Re-derive every SID; returns the rows whose SID changed (None: refused, see below).

        A refresh whose largest collision group exceeds ``suffix_size`` is refused: the code
        table is left as it was and the refusal is recorded in :meth:`stats`.
        """
        if self.inputs.shape[0] == 0:
            self._require_initialized()
        before = self._before_refresh()
        base = self.assign(self.inputs).to(self.code_table.device)
        groups = collision_groups(base)
        largest = max((group.numel() for group in groups), default=1)
        record: dict[str, Any] = {
            "step": step,
            "collision_rate_before_suffix": collision_rate(base),
            "largest_group": largest,
            **before,
        }
        if largest > self.suffix_size:
            record.update(accepted=False, changed_fraction=0.0, changed_by_level=None)
            self.refreshes.append(record)
            return None
        table = append_suffix_level(base)
        if self.code_table.shape[0] == table.shape[0]:
            differs = table != self.code_table
            changed = differs.any(dim=1).nonzero().flatten()
            by_level = differs.float().mean(dim=0).tolist()
        else:
            changed = torch.arange(table.shape[0])
            by_level = [1.0] * table.shape[1]
        self.code_table = table
        self.base_codes = base
        record.update(
            accepted=True,
            changed_fraction=changed.numel() / table.shape[0],
            changed_by_level=[round(value, 4) for value in by_level],
        )
        self.refreshes.append(record)
        return changed

    # ------------------------------------------------------------ ItemTokenizer parts
    @property
    def codebook_sizes(self) -> list[int]:
        return [*self.level_sizes, self.suffix_size]

    @property
    def is_fitted(self) -> bool:
        return self.is_initialized

    def level_token_strings(self) -> list[list[str]]:
        """The fixed vocabulary: every code of every level, then the suffix level's."""
        return [
            [self.token(level, code) for code in range(size)]
            for level, size in enumerate(self.codebook_sizes)
        ]

    def fit(self, embeddings: torch.Tensor, seed: int | None = None) -> None:
        """Static-style fit: :meth:`initialize` on ``embeddings`` (no joint training)."""
        if seed is not None:
            self.seed = seed
        self.initialize(embeddings)

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        raise NotImplementedError("dynamic tokenizers fit through initialize()")

    def _require_fitted(self) -> FittedCodes:
        self._require_initialized()
        return FittedCodes(
            codes=self.code_table,
            codebook_sizes=self.codebook_sizes,
            codes_before_resolution=torch.cat(
                [self.base_codes, torch.full_like(self.base_codes[:, :1], PAD)], dim=1
            ),
            resolution={"strategy": "suffix", "suffix_size": self.suffix_size},
            info={"input_dim": int(self.inputs.shape[1]), "refreshes": list(self.refreshes)},
        )

    def _set_fitted(self, fitted: FittedCodes) -> None:  # load_tokenizer's last step
        self.code_table = fitted.codes.long()
        before = fitted.codes_before_resolution
        self.base_codes = (fitted.codes if before is None else before)[:, :-1].long()
        self.refreshes = list(fitted.info.get("refreshes", []))

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.assign(embeddings.to(self.inputs.device)).cpu()

    def get_extra_state(self) -> dict[str, Any]:
        """The refresh history travels in Lightning checkpoints with the tensors."""
        return {"refreshes": list(self.refreshes)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.refreshes = list(state.get("refreshes", []))

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {
            key: value
            for key, value in self.state_dict().items()
            if key not in ("code_table", "base_codes") and isinstance(value, torch.Tensor)
        }

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        if "inputs" not in state:
            raise KeyError("inputs")
        self._build(state["inputs"].shape[1], self._saved_reader_dim(state))
        self.inputs = state["inputs"]
        self.code_table = torch.empty(0, len(self.level_sizes) + 1, dtype=torch.long)
        missing, unexpected = self.load_state_dict(
            {**state, "code_table": self.code_table, "base_codes": self.base_codes},
            strict=False,
        )
        missing = [key for key in missing if not key.endswith("_extra_state")]
        if missing or unexpected:
            raise KeyError(f"missing {missing}, unexpected {unexpected}")

    def load_state_from(self, directory) -> None:
        """Copy a saved tokenizer's parameters, inputs and codes into this one (same config)."""
        from semrec.tokenizers.base import load_tokenizer

        saved = load_tokenizer(directory)
        if type(saved) is not type(self) or saved.config() != self.config():
            raise ValueError(f"{directory}: holds another tokenizer config than this run's")
        state = saved.state_dict()
        if not self.is_initialized:
            self._build(saved.inputs.shape[1], self._saved_reader_dim(state))
        for name in ("inputs", "code_table", "base_codes"):  # buffers whose shape may differ
            setattr(self, name, state[name].clone())
        self.load_state_dict(state)
        self.refreshes = list(saved.refreshes)

    def _saved_reader_dim(self, state: dict[str, torch.Tensor]) -> int | None:
        """The ``reader_dim`` a saved state was built with (None: the input width)."""
        return None

    def _require_initialized(self) -> None:
        if not self.is_initialized:
            raise RuntimeError(
                f"{type(self).__name__} has no codes yet: initialize(inputs) it (the run "
                "does this after building the LLM) or load a saved one"
            )


def _check_inputs(inputs: torch.Tensor) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or min(inputs.shape) < 1:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"dynamic tokenizer inputs must be a 2-D tensor [rows, dim], got {shape}")
    inputs = inputs.detach().float().clone()  # may be an inference-mode tensor
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("dynamic tokenizer inputs contain NaN or inf")
    return inputs

"""The LightningModule: teacher-forced SFT on instruction pairs, trie-constrained evaluation."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.metrics.ranking import TopKRankingMetrics
from semrec.models.loss import labelled_logits, response_loss
from semrec.prompts.batching import IGNORE_INDEX


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped before that step's update."""


class GenRecModule(L.LightningModule):
    """Holds the (LoRA-wrapped) causal LM; trains on ``labels``, evaluates by beam search.

    Collaborators come in by constructor: the model, the decoder, and the trie of valid
    SIDs (rows = item ids). A tokenizer trained jointly with the LLM replaces the trie
    through :meth:`set_trie` when its codes change.

    With an ``exact_ranker`` the test users are ranked exactly (every item's full SID
    scored); their metrics are ``test/*`` and the beam search's are ``test_beam/*``.
    Validation always uses the beam search. Eval batches may carry ``exclude`` (items
    never to recommend, ``-1`` padded: ``eval.mask_history``).

    Eval batches with ``candidates`` (a candidate-ranking eval task) are ranked by the
    ``candidate_ranker`` (:class:`~semrec.ranking.verbalizer.VerbalizerRanker`) instead:
    ``val/*`` and ``test/*`` count a target the retriever missed as a miss, and
    ``val_subset/*`` / ``test_subset/*`` cover only the users whose target is a candidate.

    ``output_ids`` (sorted token ids) restricts the training softmax to those tokens (the
    SID tokens, ``train.softmax: sid_tokens``).

    With ``distillation`` (:class:`~semrec.models.distillation.TeacherDistillation`) the
    loss mixes the labels' cross-entropy with a collaborative teacher's soft targets
    (``train.distill``); ``train/label_loss`` and ``train/distill_loss`` are logged too.

    Full Lightning checkpoints (for resuming) hold only the trainable parameters (the
    frozen base is rebuilt from the config) plus the torch/numpy/python RNG states.

    With ``joint`` (:class:`~semrec.models.joint.JointTokenizerTraining`) the item (and
    user) tokenizers train with the LLM: the loss gains ``alpha * L_DM``, their codes are
    refreshed on its schedule, and ``trie_builder(codes)`` rebuilds the trie whenever the
    items' code table differs from the one the trie was built from (checked before every
    decoding, so a refresh, a resumed checkpoint or a loaded state can never leave a stale
    trie). Checkpoints then also hold the tokenizers' whole state. Training batches of such
    a run arrive untokenized and ``batch_encoder`` tokenizes them (see
    :meth:`on_before_batch_transfer`).
    """

    strict_loading = False  # checkpoints hold only the trainable parameters

    def __init__(
        self,
        model: nn.Module,
        decoder: ConstrainedBeamSearch,
        trie: SIDTrie,
        *,
        ks: list[int],
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.05,
        exact_ranker: Any | None = None,
        candidate_ranker: Any | None = None,
        joint: Any | None = None,
        trie_builder: Any | None = None,
        batch_encoder: Any | None = None,
        output_ids: torch.Tensor | None = None,
        distillation: Any | None = None,
    ) -> None:
        super().__init__()
        self.distillation = distillation
        #: with ``train.softmax: sid_tokens``, the sorted token ids the training softmax covers
        self.output_ids = output_ids
        if joint is not None and trie_builder is None:
            raise ValueError("a jointly trained tokenizer needs a trie_builder")
        self.joint = joint
        self.trie_builder = trie_builder
        self.batch_encoder = batch_encoder
        self._joint_step: int | None = None
        self._joint_report: dict[str, float] = {}
        self._trie_codes: torch.Tensor | None = None
        # from_pretrained returns a model in eval mode, and Lightning keeps each submodule's
        # mode: without this, LoRA dropout never ran during training (decoding sets eval
        # mode itself and restores it)
        self.model = model.train()
        self.decoder = decoder
        self.exact_ranker = exact_ranker
        self.candidate_ranker = candidate_ranker
        self.trie = trie
        self.ks = sorted(ks)
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.val_metrics = TopKRankingMetrics(self.ks, trie.num_items, gather=True)
        self.test_metrics = TopKRankingMetrics(self.ks, trie.num_items, gather=True)
        self.test_beam_metrics = TopKRankingMetrics(self.ks, trie.num_items, gather=True)
        self.subset_metrics = nn.ModuleDict(
            {
                "val_subset": TopKRankingMetrics(self.ks, trie.num_items, gather=True),
                "test_subset": TopKRankingMetrics(self.ks, trie.num_items, gather=True),
            }
        )
        self.last_metrics: dict[str, dict[str, float]] = {}
        #: per evaluation part, each example's target rank in evaluation-list order
        self.last_ranks: dict[str, torch.Tensor] = {}
        #: per evaluation part, each example's ranked items [n, max(ks)], in the same order
        self.last_items: dict[str, torch.Tensor] = {}

    def set_trie(self, trie: SIDTrie) -> None:
        self.trie = trie

    def current_trie(self) -> SIDTrie:
        """The trie of the items' current codes (rebuilt if a joint tokenizer changed them)."""
        if self.joint is not None:
            codes = self.joint.items.codes
            if self._trie_codes is None or not torch.equal(codes, self._trie_codes):
                self.trie = self.trie_builder(codes)
                self._trie_codes = codes.clone()
        return self.trie

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # the output layer runs only where a label is (see semrec.models.loss)
        size = batch["input_ids"].shape[0]
        if self.distillation is None:
            loss = response_loss(self.model, batch, self.output_ids)
        else:
            loss = self._distilled_loss(batch, size)
        tokens = (batch["labels"] != IGNORE_INDEX).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if self.joint is not None:
            for name, value in self._joint_report.items():
                self.log(f"joint/{name}", value, on_step=True, on_epoch=False, batch_size=size)
            self._joint_report = {}
            parts = self.joint.loss(batch, self.model, self.global_step)
            for name, value in parts.items():
                if name != "total":
                    self.log(f"joint/{name}", value, batch_size=size)
            loss = loss + parts["total"]
        self.check_finite(loss, batch_idx)
        self.log(
            "train/response_tokens",
            tokens.float(),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        return loss

    def _distilled_loss(self, batch: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        scored = labelled_logits(self.model, batch, self.output_ids)
        if scored is None:
            raise NotImplementedError(
                "train.distill: this model transforms its logits after the output layer "
                "(softcapping or a logit scale), which distillation does not apply"
            )
        parts = self.distillation.loss(scored[0], batch, self.output_ids)
        self.log("train/label_loss", parts["label"], batch_size=size)
        self.log("train/distill_loss", parts["distill"], batch_size=size)
        return parts["total"]

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Raise :class:`NonFiniteLossError` before a NaN or infinite loss updates the weights."""
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteLossError(
                f"the training loss is {float(loss):g} at step {self.global_step} (epoch "
                f"{self.current_epoch + 1}, batch {batch_idx}); training stopped before this "
                "step's update, and only validations before it may have saved an adapter. "
                "Lower the learning rate, or check the data and model.quantization"
            )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A pending training batch (SID placeholders) is tokenized here, as its step
        begins, after the codes are refreshed for that step.

        Refreshes for step N run before step N+1's batch is tokenized, not after step N:
        the step-N checkpoint is written after step N, so a run resumed from it refreshes
        and tokenizes at the same point as the uninterrupted run. (The data loader collates
        batches ahead, so tokenizing there would depend on how far ahead it is.)
        """
        if not (isinstance(batch, dict) and "pending" in batch):
            return batch
        if self.batch_encoder is None:
            raise RuntimeError("a pending batch needs the module's batch_encoder")
        if self.joint is not None:
            step = self.global_step  # optimizer steps: once per step, not per micro-batch
            if step != self._joint_step:
                self._joint_step = step
                self._joint_report = self.joint.after_step(step, self.model)
        return self.batch_encoder(batch)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: check model.lora settings")
        groups = [{"params": params}]
        if self.joint is not None and self.joint.trainable_parameters():
            groups.append(
                {"params": self.joint.trainable_parameters(), "lr": self.joint.schedule.lr}
            )
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        total = self._planned_steps()
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.warmup_ratio * total), total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _planned_steps(self) -> int:
        """Optimizer steps of the whole training, for the learning-rate schedule.

        Counted from the data module's epoch batches rather than with
        ``trainer.estimated_stepping_batches``: that one sets up the train loader before a
        checkpoint is restored, and Lightning then never hands the loader its saved
        position, so a run resumed inside its first epoch restarted that epoch's data.
        """
        trainer = self.trainer
        epoch_batches = getattr(trainer.datamodule, "epoch_batches", None)
        if epoch_batches is None:
            return max(1, int(trainer.estimated_stepping_batches))
        per_epoch = math.ceil(len(epoch_batches(0)) / trainer.accumulate_grad_batches)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if epochs is None and steps is None:
            raise RuntimeError("training needs max_epochs or max_steps for its LR schedule")
        total = min(per_epoch * epochs if epochs else steps, steps or per_epoch * epochs)
        return max(1, total)

    # ------------------------------------------------------------------ checkpoints

    def _trainable_names(self) -> set[str]:
        """What a checkpoint keeps: trainable parameters, and all state of joint tokenizers."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if self.joint is not None:
            names |= {f"joint.{n}" for n in self.joint.state_dict()}
        return names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self._trainable_names()
        checkpoint["state_dict"] = {
            n: t for n, t in checkpoint["state_dict"].items() if n in trainable
        }
        checkpoint["rng_states"] = _rng_states()
        # the data position counts batches per process: only the same world size resumes
        checkpoint["world_size"] = self._world_size()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self._trainable_names()
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise RuntimeError(
                f"the checkpoint has no values for {len(missing)} trainable tensors "
                f"(e.g. {missing[:3]}): it was written for another model or LoRA config"
            )
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != self._world_size():
            raise RuntimeError(
                f"the checkpoint was written by a run of {saved_world} process(es), this one "
                f"has {self._world_size()}: its data position and LR schedule count batches "
                "per process; resume with the same train.devices and train.num_nodes"
            )
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    # ------------------------------------------------------------------ evaluation

    def recommend(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        top_k: int,
        exclude_items: torch.Tensor | None = None,
    ):
        """Top-``top_k`` item ids and scores for left-padded prompts (beam search)."""
        return self.decoder.search(
            self.model,
            self.current_trie(),
            input_ids,
            attention_mask,
            top_k,
            exclude_items=exclude_items,
        )

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TopKRankingMetrics) -> None:
        result = self.recommend(
            batch["input_ids"], batch["attention_mask"], max(self.ks), batch.get("exclude")
        )
        metric.update(result.items.cpu(), batch["targets"].cpu(), batch.get("rows"))

    def _rank_candidates(self, batch: dict[str, torch.Tensor], part: str) -> None:
        """Verbalizer ranking of the batch's candidates: overall and retrieved-subset metrics."""
        if self.candidate_ranker is None:
            raise RuntimeError("eval batches hold candidates but the module has no ranker")
        ranked = self.candidate_ranker.rank(
            self.model, batch["input_ids"], batch["attention_mask"], batch["candidates"]
        )
        targets = batch["targets"].cpu()
        metric = self.val_metrics if part == "val" else self.test_metrics
        metric.update(ranked, targets, batch.get("rows"))
        retrieved = (batch["candidates"].cpu() == targets[:, None]).any(dim=1)
        if bool(retrieved.any()):
            self.subset_metrics[f"{part}_subset"].update(ranked[retrieved], targets[retrieved])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "candidates" in batch:
            self._rank_candidates(batch, "val")
            return
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "candidates" in batch:
            self._rank_candidates(batch, "test")
            return
        if self.exact_ranker is None:
            self._eval_step(batch, self.test_metrics)
            return
        self._eval_step(batch, self.test_beam_metrics)
        result = self.exact_ranker.top_k(
            self.model,
            self.current_trie(),
            batch["input_ids"],
            batch["attention_mask"],
            max(self.ks),
            exclude_items=batch.get("exclude"),
        )
        self.test_metrics.update(result.items.cpu(), batch["targets"].cpu(), batch.get("rows"))

    def _log_metrics(self, prefix: str, metric: TopKRankingMetrics) -> None:
        values = metric.compute()
        self.last_ranks[prefix] = metric.ordered_ranks()
        self.last_items[prefix] = metric.ordered_items()
        metric.reset()
        self.last_metrics[prefix] = values
        # the values are already gathered over all processes (torchmetrics syncs in
        # compute); sync_dist only tells Lightning so, and averages equal numbers
        for name, value in values.items():
            if name != "users":
                self.log(
                    f"{prefix}/{name}",
                    value,
                    prog_bar=name == f"ndcg@{max(self.ks)}",
                    sync_dist=True,
                )

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)
        if self.candidate_ranker is not None:
            self._log_metrics("val_subset", self.subset_metrics["val_subset"])

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)
        if self.candidate_ranker is not None:
            self._log_metrics("test_subset", self.subset_metrics["test_subset"])
        if self.exact_ranker is not None:
            self._log_metrics("test_beam", self.test_beam_metrics)


def _rng_states() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and plain lists (``weights_only``-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), cached],
        "python": [version, list(internal), gauss],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))

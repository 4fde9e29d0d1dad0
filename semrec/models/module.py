"""The LightningModule: teacher-forced SFT on instruction pairs, trie-constrained evaluation."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from semrec.decoding import ConstrainedBeamSearch, SIDTrie
from semrec.evaluation.metrics import TopKRankingMetrics


class GenRecModule(L.LightningModule):
    """Holds the (LoRA-wrapped) causal LM; trains on ``labels``, evaluates by beam search.

    Collaborators come in by constructor: the model, the decoder, and the trie of valid
    SIDs (rows = item ids). A tokenizer trained jointly with the LLM replaces the trie
    through :meth:`set_trie` when its codes change.
    """

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
    ) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.trie = trie
        self.ks = sorted(ks)
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.val_metrics = TopKRankingMetrics(self.ks, trie.num_items)
        self.test_metrics = TopKRankingMetrics(self.ks, trie.num_items)
        self.last_metrics: dict[str, dict[str, float]] = {}

    def set_trie(self, trie: SIDTrie) -> None:
        self.trie = trie

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        tokens = (batch["labels"] != -100).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log(
            "train/response_tokens", tokens.float(), reduce_fx="sum", on_step=False, on_epoch=True
        )
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: check model.lora settings")
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(
            optimizer, int(self.warmup_ratio * total), total
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ evaluation

    def recommend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, top_k: int):
        """Top-``top_k`` item ids and scores for left-padded prompts."""
        return self.decoder.search(self.model, self.trie, input_ids, attention_mask, top_k)

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TopKRankingMetrics) -> None:
        result = self.recommend(batch["input_ids"], batch["attention_mask"], max(self.ks))
        metric.update(result.items.cpu(), batch["targets"].cpu())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def _log_metrics(self, prefix: str, metric: TopKRankingMetrics) -> None:
        values = metric.compute()
        metric.reset()
        self.last_metrics[prefix] = values
        for name, value in values.items():
            if name != "users":
                self.log(f"{prefix}/{name}", value, prog_bar=name == f"ndcg@{max(self.ks)}")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

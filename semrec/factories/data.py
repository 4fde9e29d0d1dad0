"""The dataset, its leave-one-out split and the item texts, from ``dataset:``."""

from __future__ import annotations

from dataclasses import dataclass

from semrec.config import DatasetConfig, TextConfig
from semrec.data import RecDataset, Split, kcore_filter, leave_one_out, load_dataset
from semrec.text.item_text import ItemTextBuilder


@dataclass
class PreparedData:
    """A loaded, filtered dataset with its split and one text per item."""

    dataset: RecDataset
    split: Split
    item_texts: list[str]

    def summary_line(self, max_history: int) -> str:
        s = self.dataset.summary()
        return (
            f"[data] {self.dataset.name}: {s['num_users']} users, {s['num_items']} items, "
            f"{s['num_interactions']} interactions; {len(self.split.train)} train examples "
            f"(history <= {max_history})"
        )


def item_text_builder(cfg: TextConfig) -> ItemTextBuilder:
    return ItemTextBuilder(fields=cfg.fields, template=cfg.template, missing=cfg.missing)


def prepare_data(cfg: DatasetConfig) -> PreparedData:
    """Load ``cfg.source``, k-core filter it, split it leave-one-out and build item texts."""
    dataset = load_dataset(cfg.source, cfg.path, cfg.name, **cfg.options)
    dataset = kcore_filter(dataset, cfg.kcore)
    split = leave_one_out(
        dataset,
        max_history=cfg.max_history,
        max_train_examples_per_user=cfg.max_train_examples_per_user,
        short_users=cfg.short_users,
    )
    return PreparedData(dataset, split, item_text_builder(cfg.text).build(dataset))


def new_item_texts(
    cfg: TextConfig, dataset: RecDataset, records: list[dict], source: str
) -> list[str | None]:
    """Texts of new items' records (``semrec add-items``), built like the dataset's item texts.

    A record with an ``embedding`` and no text field gets ``None`` (it needs no text); errors
    name ``source``, the new-items file.
    """
    fields = [
        {k: str(v) for k, v in record.items() if k not in ("id", "embedding")} for record in records
    ]
    texts: list[str | None] = [None] * len(records)
    wanted = [i for i, record in enumerate(records) if fields[i] or "embedding" not in record]
    if wanted:
        rendered = item_text_builder(cfg).render(
            dataset, [records[i]["id"] for i in wanted], [fields[i] for i in wanted], source
        )
        for i, text in zip(wanted, rendered):
            texts[i] = text
    return texts

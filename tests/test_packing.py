"""Packed instruction pairs (``train.pack_tokens``): each pair scores as it does alone."""

from __future__ import annotations

import random

import pytest
import torch
from test_posttrain import TINY, tiny_model

from semrec.config import ConfigError, load_config
from semrec.models.loss import labelled_logits, response_loss
from semrec.pipeline import Run
from semrec.prompts import task_pairs
from semrec.prompts.batching import IGNORE_INDEX
from semrec.prompts.packing import collate_packs, pack_indices
from semrec.tasks.base import Sample

PAD = 0  # the tiny model's pad_token_id


def pairs(count: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Pairs of random lengths: a prompt (unlabelled) then a labelled response."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt = [rng.randrange(1, 40) for _ in range(rng.randrange(2, 12))]
        response = [rng.randrange(1, 40) for _ in range(rng.randrange(1, 5))]
        out.append((prompt + response, [IGNORE_INDEX] * len(prompt) + response))
    return out


def padded_batch(encoded: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """The unpacked layout: one pair per right-padded row."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), PAD)
    labels = torch.full((len(encoded), width), IGNORE_INDEX)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (i, lab) in enumerate(encoded):
        ids[row, : len(i)], labels[row, : len(lab)] = torch.tensor(i), torch.tensor(lab)
        attention[row, : len(i)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def test_packs_partition_the_pairs_within_capacity() -> None:
    lengths = [random.Random(1).randrange(1, 30) for _ in range(200)] + [45]
    packs = pack_indices(lengths, capacity=40)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert [200] in packs  # longer than the capacity: a pack of its own
    assert all(sum(lengths[i] for i in pack) <= 40 for pack in packs if pack != [200])
    assert all(pack == sorted(pack) for pack in packs)
    # best-fit decreasing wastes little: within one pack of the lower bound
    assert len(packs) <= -(-sum(lengths) // 40) + 2
    assert pack_indices(lengths, capacity=40) == packs  # deterministic


def test_pack_mask_is_block_diagonal_causal_with_restarting_positions() -> None:
    batch = collate_packs([[([5, 6, 7], [-100, 6, 7]), ([8, 9], [-100, 9])]], pad_id=PAD)
    mask = batch["attention_mask"][0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1]
    assert batch["labels"][0].tolist() == [-100, 6, 7, -100, 9]


def test_a_packed_pair_scores_exactly_as_alone() -> None:
    model = tiny_model()
    encoded = pairs(9)
    lengths = [len(ids) for ids, _ in encoded]
    groups = pack_indices(lengths, capacity=24)
    assert any(len(group) > 1 for group in groups)  # something is actually packed
    packed = collate_packs([[encoded[i] for i in group] for group in groups], pad_id=PAD)
    # the same pairs, one per row, in the packs' row-major order
    order = [i for group in groups for i in group]
    alone = padded_batch([encoded[i] for i in order])
    with torch.no_grad():
        packed_logits, packed_labels = labelled_logits(model, packed)
        alone_logits, alone_labels = labelled_logits(model, alone)
        assert torch.equal(packed_labels, alone_labels)
        torch.testing.assert_close(packed_logits, alone_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(response_loss(model, packed), response_loss(model, alone))
    # padding the packed batch removed: fewer positions than one pair per row
    assert packed["input_ids"].numel() < alone["input_ids"].numel()


def test_task_pairs_pack_every_pair_of_an_epoch_once(monkeypatch) -> None:
    class Formatter:
        """Token ids from the characters of the texts; packs through collate_packs."""

        def encode_pair(self, instruction, response):
            prompt = [ord(c) % 30 + 1 for c in instruction]
            answer = [ord(c) % 30 + 1 for c in response]
            return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

        def collate_packs(self, packs):
            return collate_packs(packs, PAD)

    class Task:
        name = "echo"

        def check(self, ctx):
            pass

    samples = [(f"prompt {'x' * (n % 7)}", f"r{n}") for n in range(30)]

    def mixture(tasks, ctx, rng):
        return [Sample(prompt=p, response=r, task="echo") for p, r in samples]

    monkeypatch.setattr(task_pairs, "build_mixture", mixture)
    source = task_pairs.TaskPairs(None, [(Task(), 1.0)], None, Formatter(), pack_tokens=40)
    items = source.epoch_items(0)
    batch = source.collate(items)
    assert source.examples_per_epoch(0) == 30 == int(batch["examples"])
    assert sum(len(pack) for pack in items) == 30 and len(items) < 30
    assert all(source.length(pack) <= 40 for pack in items)
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    assert labelled == sum(len(r) for _, r in samples)
    assert int(batch["tokens"]) == sum(source.length(pack) for pack in items)


def test_packing_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ConfigError, match="compact format's windows"):
        load_config(
            TINY, ["model.prompt_format=compact", "train.pack_tokens=64", "tasks=[{name: seq}]"]
        )
    ttds = TINY.parent / "ttds_tiny.yaml"
    with pytest.raises(ConfigError, match="trains with the LLM"):
        load_config(ttds, ["train.pack_tokens=64"])
    assert load_config(TINY, ["train.pack_tokens=64"]).train.pack_tokens == 64


def test_a_packed_run_learns_the_synthetic_rule(tmp_path) -> None:
    """The tiny run with its pairs packed (about three to a sequence, so a third of the
    batch size keeps the pairs per step) memorises the rule like the unpacked one."""
    config = load_config(TINY, ["train.pack_tokens=160", "train.batch_size=6", "eval.baselines=[]"])
    lines: list[str] = []
    metrics = Run(config, tmp_path / "packed", echo=lines.append).fit()
    assert metrics["test/hr@1"] >= 0.9
    examples = next(line for line in lines if "training examples per epoch" in line)
    packed = next(line for line in lines if "pairs packed into" in line)
    pairs, packs = int(examples.split()[1]), int(packed.split("into ")[1].split()[0])
    assert packs < pairs / 2  # the pairs really share sequences

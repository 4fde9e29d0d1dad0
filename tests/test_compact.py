"""The compact format: windows hold every training prefix once and score it as its own prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semrec.data import RecDataset, leave_one_out
from semrec.models.backbone import scratch_backbone
from semrec.models.loss import response_loss
from semrec.prompts.batching import IGNORE_INDEX
from semrec.prompts.compact import CompactSequences, consecutive_runs
from semrec.prompts.datamodule import epoch_batches


def _dataset(lengths: list[int], num_items: int = 12, seed: int = 0) -> RecDataset:
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user, n in enumerate(lengths):
        users += [user] * n
        items += rng.integers(0, num_items, n).tolist()
        times += list(range(n))
    return RecDataset(
        name="toy",
        user_ids=[f"u{u}" for u in range(len(lengths))],
        item_ids=[f"i{i}" for i in range(num_items)],
        users=np.array(users),
        items=np.array(items),
        timestamps=np.array(times),
    )


CODES = [[4 + i % 3, 7 + i // 3 % 4] for i in range(12)]  # two SID tokens per item
PAD, SEP = 1, 3  # the scratch tokenizer's ids (SID tokens start at 4)


def _sequences(split, max_history=4, window_items=5) -> CompactSequences:
    return CompactSequences(
        split, CODES, sep_id=SEP, pad_id=PAD, max_history=max_history, window_items=window_items
    )


def test_every_training_prefix_is_labelled_exactly_once() -> None:
    split = leave_one_out(_dataset([3, 9, 17, 30]), max_history=4)
    sequences = _sequences(split)
    assert sequences.num_examples == len(split.train)
    assert sum(len(run) for run in consecutive_runs(split.train, 4)) == len(split.train)
    labelled = sum(int((w.labels != IGNORE_INDEX).sum()) for w in sequences.windows)
    assert labelled == 2 * len(split.train)  # both SID tokens of every target, no separator
    assert len(sequences.windows) > split.num_users  # long users are cut into windows


def test_capped_runs_restart_when_examples_do_not_chain() -> None:
    split = leave_one_out(_dataset([20]), max_history=3, max_train_examples_per_user=4)
    runs = consecutive_runs(split.train, 3)
    assert [len(run) for run in runs] == [4]
    assert runs[0][0].history == split.train[0].history


def _model(layers: int):
    tokens = [f"<t{i}>" for i in range(7)]
    model, tokenizer = scratch_backbone(tokens, hidden_size=32, layers=layers, dropout=0.0)
    assert (tokenizer.pad_token_id, tokenizer.sep_token_id) == (PAD, SEP)
    assert tokenizer.convert_tokens_to_ids(tokens) == list(range(4, 11))
    return model.eval()


@pytest.fixture(scope="module")
def model_and_split():
    return _model(2), leave_one_out(_dataset([9, 26, 14], seed=1), max_history=4)


def _target_log_probs(model, batch) -> torch.Tensor:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs).logits[:, :-1].log_softmax(-1)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize(("layers", "window_items"), [(2, 1), (1, 5)])
def test_windows_score_each_prefix_as_its_standalone_prompt(layers, window_items) -> None:
    """Exact when each window holds one target, or with one layer (then a target sees only
    its own history); deeper layers widen what a shared window sees (see semrec.prompts.compact)."""
    model = _model(layers)
    split = leave_one_out(_dataset([9, 26, 14], seed=1), max_history=4)
    sequences = _sequences(split, window_items=window_items)
    batch = sequences.collate(sequences.windows)  # padded together: padding must not matter
    with torch.no_grad():
        joint = _target_log_probs(model, batch)
        alone = []
        for example in split.train:
            prompt = sequences.prompt_ids(example.history)
            ids = torch.tensor([prompt + CODES[example.target]])
            labels = torch.full_like(ids, IGNORE_INDEX)
            labels[0, len(prompt) :] = torch.tensor(CODES[example.target])
            single = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
            single["position_ids"] = torch.arange(ids.shape[1]).unsqueeze(0) + 7  # any offset
            alone.append(_target_log_probs(model, single))
    torch.testing.assert_close(joint, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_shared_windows_of_a_deep_model_see_past_the_history_cap(model_and_split) -> None:
    model, split = model_and_split  # two layers: a target sees up to 2 x max_history items
    shared, exact = _sequences(split, window_items=5), _sequences(split, window_items=1)
    with torch.no_grad():
        a = _target_log_probs(model, shared.collate(shared.windows))
        b = _target_log_probs(model, exact.collate(exact.windows))
    assert not torch.allclose(a, b, atol=1e-4)


def test_response_loss_equals_full_logits_loss(model_and_split) -> None:
    model, split = model_and_split
    sequences = _sequences(split)
    batch = sequences.collate(sequences.windows[:3])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}
    with torch.no_grad():
        full = model(**inputs).loss
        fast = response_loss(model, batch)
    assert abs(float(full) - float(fast)) < 1e-5


def test_epoch_batches_hold_every_item_once_and_bucket_by_length() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 1000).tolist()
    for bucket in (False, True):
        batches = epoch_batches(lengths, 16, seed=3, bucket_by_length=bucket)
        flat = sorted(i for batch in batches for i in batch)
        assert flat == list(range(1000))
    plain = epoch_batches(lengths, 16, seed=3, bucket_by_length=False)
    bucketed = epoch_batches(lengths, 16, seed=3)

    def padding(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    assert padding(bucketed) < 0.2 * padding(plain)
    assert epoch_batches(lengths, 16, seed=3) == bucketed  # deterministic in the seed
    assert epoch_batches(lengths, 16, seed=4) != bucketed

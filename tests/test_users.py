"""Users as SID entities: config sections and prefixes, user embedders, user SIDs in prompts."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from semrec.config import ConfigError, load_config
from semrec.data import RecDataset, leave_one_out
from semrec.decoding import ConstrainedBeamSearch
from semrec.embedders.users import HistoryTextEmbedder, ProfileEmbedder, UserDataError
from semrec.pipeline import Run
from semrec.tasks import TASKS, TaskContext
from semrec.tasks.base import TaskDataError, build_mixture
from semrec.tokenizers import TOKENIZERS

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
USERS = (
    "users.tokenizer={name: rqkmeans, params: {levels: 2, codebook_size: 8, on_overflow: suffix}}"
)


def toy(users: int = 4, items: int = 12, length: int = 6, features: bool = True) -> RecDataset:
    rng = np.random.default_rng(0)
    sequences = [rng.choice(items, size=length, replace=False) for _ in range(users)]
    return RecDataset(
        name="toy",
        user_ids=[f"u{u}" for u in range(users)],
        item_ids=[f"i{i}" for i in range(items)],
        users=np.repeat(np.arange(users), length),
        items=np.concatenate(sequences),
        timestamps=np.tile(np.arange(length), users),
        user_features=[{"age": str(20 + u), "gender": "MF"[u % 2]} for u in range(users)]
        if features
        else None,
        source="toy.inter",
    )


def one_hot_encoder(texts: list[str]) -> torch.Tensor:
    """Item ``i``'s text is ``"item i"``; its vector is the one-hot of ``i``."""
    vectors = torch.zeros(len(texts), 12)
    for row, text in enumerate(texts):
        vectors[row, int(text.split()[1])] = 1.0
    return vectors


# ---------------------------------------------------------------------------- config


def test_the_old_top_level_keys_are_aliases_of_items():
    old = load_config(TINY, ["tokenizer.params.levels=3", "embedder.name=cooccurrence"])
    assert old.items.tokenizer.params == {"levels": 3, "codebook_size": 8}
    assert old.items.embedder.name == "cooccurrence"
    new = load_config(TINY, ["items.tokenizer.params.levels=3", "items.embedder.name=cooccurrence"])
    assert new == old
    assert load_config(TINY).users.tokenizer is None  # users get no SIDs unless asked


def test_a_yaml_with_the_old_keys_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        f"base: {TINY}\nname: old\ntokenizer:\n  params: {{levels: 3}}\nembedder: {{name: lightgcn}}\n"
    )
    cfg = load_config(path)
    assert cfg.items.tokenizer.params == {"levels": 3, "codebook_size": 8}
    assert cfg.items.embedder.name == "lightgcn"


def test_user_and_item_prefixes_cannot_clash():
    cfg = load_config(TINY, [USERS])
    assert cfg.users.tokenizer.name == "rqkmeans"
    clash = "users.tokenizer.params.level_prefixes=[ua, b]"
    with pytest.raises(ConfigError, match=r"share the level prefixes \['b'\]"):
        load_config(TINY, [USERS, clash])
    # the item side can clash too, with the user defaults
    with pytest.raises(ConfigError, match=r"\['ua'\]"):
        load_config(TINY, [USERS, "items.tokenizer.params.level_prefixes=[ua, x]"])


def test_users_need_text_prompts():
    scratch = [
        "model.backbone=scratch",
        "model.prompt_format=compact",
        "model.lora.enabled=false",
    ]
    with pytest.raises(ConfigError, match="compact format"):
        load_config(TINY, [*scratch, USERS])


# ---------------------------------------------------------------------------- embedders


def test_history_text_is_the_mean_over_training_items_only():
    ds = toy()
    split = leave_one_out(ds)
    texts = [f"item {i}" for i in range(ds.num_items)]
    vectors = HistoryTextEmbedder().embed(ds, split, texts, one_hot_encoder)
    for user, sequence in enumerate(ds.sequences()):
        expected = torch.zeros(12)
        expected[sequence[:-2]] = 1.0 / (len(sequence) - 2)  # valid and test held out
        assert torch.allclose(vectors[user], expected)


def test_history_text_never_reads_a_valid_or_test_target():
    ds = toy()
    texts = [f"item {i}" for i in range(ds.num_items)]
    reference = HistoryTextEmbedder().embed(ds, leave_one_out(ds), texts, one_hot_encoder)
    # change every user's last two interactions (valid and test targets)
    items = ds.items.copy()
    for user in range(ds.num_users):
        last_two = np.flatnonzero(ds.users == user)[-2:]
        items[last_two] = (items[last_two] + 5) % ds.num_items
    changed = dataclasses.replace(ds, items=items)
    again = HistoryTextEmbedder().embed(changed, leave_one_out(changed), texts, one_hot_encoder)
    assert torch.equal(again, reference)
    # and the check can fail: a planted change inside the training part moves the vectors
    items[np.flatnonzero(ds.users == 0)[0]] = (items[0] + 1) % ds.num_items
    planted = dataclasses.replace(ds, items=items)
    moved = HistoryTextEmbedder().embed(planted, leave_one_out(planted), texts, one_hot_encoder)
    assert not torch.equal(moved, reference)


def test_profile_texts_and_a_dataset_without_profiles():
    ds = toy()
    assert ProfileEmbedder().texts(ds)[1] == "age: 21; gender: F"
    assert ProfileEmbedder(fields=["gender"]).texts(ds)[0] == "gender: M"
    with pytest.raises(UserDataError, match="user 'u0' of dataset 'toy' has no field 'zip'"):
        ProfileEmbedder(fields=["zip"]).texts(ds)
    with pytest.raises(
        UserDataError, match="dataset 'toy' .* does not provide; use 'history_text'"
    ):
        ProfileEmbedder().texts(toy(features=False))


# ---------------------------------------------------------------------------- tasks


def test_any_user_task_can_put_the_user_sid_in_its_prompt():
    ds = toy()
    split = leave_one_out(ds)
    user_sids = [f"<ua_{u}>" for u in range(ds.num_users)]
    ctx = TaskContext(ds, split, [f"<a_{i}>" for i in range(ds.num_items)], user_sids=user_sids)
    seq = TASKS.get("seq")(templates=["History: {history}"], user_sid_in_prompt=True)
    samples = build_mixture([(seq, 1.0)], ctx, random.Random(0))
    assert samples and all(
        s.prompt == f"The user is {user_sids[s.user]}. History: " + s.prompt.split("History: ")[1]
        for s in samples
    )
    (evaluated,) = seq.eval_samples(ctx, split.test[:1])
    assert evaluated.prompt.startswith(f"The user is {user_sids[split.test[0].user]}. ")
    negative = TASKS.get("negative")(
        ratio=1, user_sid_in_prompt=True, user_template="{user}: {prompt}"
    )
    assert all(
        s.prompt.startswith(f"{user_sids[s.user]}: ")
        for s in negative.personalize(ctx, negative.train_samples(ctx, random.Random(0)))
    )
    # without the option nothing changes
    plain = TASKS.get("seq")(templates=["History: {history}"])
    assert all(s.prompt.startswith("History: ") for s in plain.train_samples(ctx, random.Random(0)))


def test_user_sid_in_prompt_needs_user_sids_and_a_user_task():
    ds = toy()
    ctx = TaskContext(ds, leave_one_out(ds), [f"<a_{i}>" for i in range(ds.num_items)])
    seq = TASKS.get("seq")(user_sid_in_prompt=True)
    with pytest.raises(TaskDataError, match=r"needs user SIDs; give users a tokenizer"):
        build_mixture([(seq, 1.0)], ctx, random.Random(0))
    with_users = dataclasses.replace(ctx, user_sids=["<ua_0>"] * ds.num_users)
    item_task = TASKS.get("mut_text2sid")(templates=["{title}"], user_sid_in_prompt=True)
    titled = dataclasses.replace(
        with_users,
        dataset=dataclasses.replace(ds, item_text=[{"title": f"t{i}"} for i in range(12)]),
    )
    with pytest.raises(TaskDataError, match="not about one user"):
        build_mixture([(item_task, 1.0)], titled, random.Random(0))
    with pytest.raises(ValueError, match=r"must contain \{user\} and \{prompt\}"):
        TASKS.get("seq")(user_sid_in_prompt=True, user_template="user {user}")
    with pytest.raises(ConfigError, match="tasks\\[0\\].params.user_sid_in_promt"):
        load_config(TINY, ["tasks=[{name: seq, params: {user_sid_in_promt: true}}]"])


# ---------------------------------------------------------------------------- pipeline


def test_a_run_with_user_sids(tmp_path):
    overrides = [
        USERS,
        "tasks=[{name: seq, params: {user_sid_in_prompt: true}}]",
        "train.epochs=2",
        "train.check_val_every_n_epoch=1",
    ]
    lines: list[str] = []
    run = Run(load_config(TINY, overrides), tmp_path / "run", echo=lines.append)
    metrics = run.fit()
    assert metrics["test/invalid_rate"] == 0.0
    users = run.user_tokenizer
    assert users.n_items == run.data.dataset.num_users == 48
    assert users.stats()["collision_rate_after"] == 0.0
    assert all(sid.startswith("<ua_") for sid in users.sid_strings())
    assert (tmp_path / "run" / "user_tokenizer" / "stats.json").is_file()
    assert "\n[tokenize] 48 users, " in "\n".join(lines)
    assert any(line.startswith("[embed] users: history_text") for line in lines)
    # the LLM knows every user token, and the user trie generates only real users
    model, hf_tokenizer, _ = run.build_model()
    for token in users.token_strings():
        assert hf_tokenizer.convert_tokens_to_ids(token) != hf_tokenizer.unk_token_id
    trie = run.tokenizers.user_trie(hf_tokenizer)
    prompt = hf_tokenizer(["The user is"], return_tensors="pt")
    result = ConstrainedBeamSearch(num_beams=5).search(
        model, trie, prompt["input_ids"], prompt["attention_mask"], 5
    )
    assert all(0 <= user < 48 for user in result.items[0].tolist())
    # a second run reuses both tokenizers
    again: list[str] = []
    Run(load_config(TINY, overrides), tmp_path / "run", echo=again.append).fit()
    assert sum(line.startswith("[tokenize] reused") for line in again) == 2


# ---------------------------------------------------------------------------- ULMRec


def test_review_attention_pools_two_reviews_as_eq_1():
    from semrec.tokenizers.ulmrec_user import ReviewAttentionRQVAE

    model = ReviewAttentionRQVAE(2, [2], code_dim=2, hidden_layers=[4])
    with torch.no_grad():
        model.attention.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    owner = torch.tensor([1.0, 1.0])
    w1, w2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    padding = torch.zeros(2)
    packed = torch.stack([owner, w1, w2, padding]).unsqueeze(0)  # [1, 1 + 3, 2]
    # scores e_w^T A e_o: w1 -> 1, w2 -> 2; the padding row gets no weight
    a1 = math.exp(1) / (math.exp(1) + math.exp(2))
    expected = a1 * w1 + (1 - a1) * w2
    weights = model.attention_weights(packed)
    assert torch.allclose(weights, torch.tensor([[a1, 1 - a1, 0.0]]))
    assert torch.allclose(model.pool(packed), expected.unsqueeze(0))
    assert torch.equal(model.pool(expected.unsqueeze(0)), expected.unsqueeze(0))  # 2-D: as is


def test_the_attention_learns_with_the_rq_vae(tmp_path):
    from semrec.tokenizers import ULMRecUserTokenizer, load_tokenizer

    generator = torch.Generator().manual_seed(0)
    packed = torch.randn(40, 4, 8, generator=generator)
    packed[:10, 3] = 0.0  # some users have fewer reviews
    tok = ULMRecUserTokenizer(levels=2, codebook_size=8, hidden_layers=[16], epochs=3)
    before = torch.eye(8)
    # the gradient of the RQ-VAE loss reaches A
    model = tok._new_model(8)
    model.fit_standardization(packed)
    model(packed).loss.backward()
    assert model.attention.grad is not None and float(model.attention.grad.abs().sum()) > 0
    tok.fit(packed, seed=0)
    assert not torch.equal(tok.model.attention.detach(), before)  # A was trained
    stats = tok.stats()
    assert stats["collision_rate_after"] == 0.0 and stats["fit"]["pooled_reviews"] is True
    assert all(sid.startswith("<ua_") for sid in tok.sid_strings())
    with pytest.raises(ValueError, match="use 'ulmrec_user'"):
        TOKENIZERS.get("rqkmeans")(levels=2, codebook_size=8).fit(packed)
    saved = tmp_path / "users"
    tok.save(saved)
    loaded = load_tokenizer(saved)
    assert torch.equal(loaded.codes, tok.codes)
    assert torch.equal(loaded.model.attention, tok.model.attention)


def test_review_sets_read_training_reviews_only():
    from semrec.embedders.users import ReviewSetEmbedder

    ds = toy(users=2, length=5)
    reviews = [[f"review {u}-{k}" for k in range(5)] for u in range(2)]
    with_reviews = dataclasses.replace(ds, user_text=reviews)
    split = leave_one_out(with_reviews)
    sets = ReviewSetEmbedder().texts(with_reviews, split)
    assert sets == [[f"review {u}-{k}" for k in range(3)] for u in range(2)]  # last two held out
    assert ReviewSetEmbedder(max_reviews=2, profile=True).texts(with_reviews, split)[1] == [
        "review 1-1",
        "review 1-2",
        "age: 21; gender: F",
    ]
    with pytest.raises(UserDataError, match="source: history_titles"):
        ReviewSetEmbedder().texts(ds, leave_one_out(ds))
    titled = dataclasses.replace(
        ds,
        item_text=[{"title": f"Film {i}"} for i in range(ds.num_items)],
        ratings=np.arange(ds.num_interactions, dtype=np.float32) % 5 + 1,
    )
    rated = ReviewSetEmbedder(source="history_titles").texts(titled, leave_one_out(titled))
    first = ds.sequences()[0][:3].tolist()
    order = titled.chronological_order()
    expected = [f"Film {i} (rating: {titled.ratings[order][k]:g})" for k, i in enumerate(first)]
    assert rated[0] == expected
    texts = [f"item {i}" for i in range(ds.num_items)]
    packed = ReviewSetEmbedder().embed(with_reviews, split, texts, lambda t: torch.ones(len(t), 3))
    assert packed.shape == (2, 4, 3)

"""Item embedders (semrec.embedders): registry, cache, PPMI/SVD math, train-only fitting."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from semrec.cf import SASRec
from semrec.config import ConfigError, load_config
from semrec.data import RecDataset, leave_one_out, load_synthetic
from semrec.data.split import Example, Split, holdout_last_train, sequences_from_examples
from semrec.embedders import (
    ITEM_EMBEDDERS,
    CooccurrenceEmbedder,
    HybridEmbedder,
    ItemEmbedder,
    LightGCNEmbedder,
    SASRecEmbedder,
    TextEmbedder,
    TextToCF,
    build_item_embedder,
    cooccurrence_counts,
    embed_cached,
    ppmi,
)
from semrec.embedders.lightgcn import interaction_pairs, normalized_adjacency
from semrec.factories.item_vectors import ItemVectors
from semrec.text.encoders import SentenceTransformerEncoder

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"

TINY_SASREC = dict(
    hidden_size=8,
    num_layers=1,
    num_heads=1,
    inner_size=16,
    max_epochs=3,
    batch_size=32,
    seed=0,
    num_threads=1,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SEMREC_CACHE", str(root))
    return root


def dataset_from_sequences(sequences: list[list[int]], num_items: int) -> RecDataset:
    users = [u for u, seq in enumerate(sequences) for _ in seq]
    return RecDataset(
        name="hand-made",
        user_ids=[f"u{u}" for u in range(len(sequences))],
        item_ids=[f"i{i}" for i in range(num_items)],
        users=np.array(users),
        items=np.array([item for seq in sequences for item in seq]),
        timestamps=np.array([t for seq in sequences for t in range(len(seq))]),
    )


def with_items_changed(ds: RecDataset, positions: np.ndarray, shift: int) -> RecDataset:
    items = ds.items.copy()
    items[positions] = (items[positions] + shift) % ds.num_items
    return dataclasses.replace(ds, items=items)


def last_two_positions(ds: RecDataset) -> np.ndarray:
    """Positions (in ``ds``'s arrays) of every user's last two interactions: valid + test."""
    order = ds.chronological_order()
    ends = np.cumsum(np.bincount(ds.users, minlength=ds.num_users))
    return np.concatenate([order[ends - 1], order[ends - 2]])


def clusters(seed: int = 0) -> RecDataset:
    """Users walk items 0-4 or 5-9 (never both); items 10 and 11 are only valid/test targets."""
    rng = np.random.default_rng(seed)
    sequences = []
    for user in range(16):
        group = np.arange(5) + 5 * (user % 2)
        walk = [int(rng.choice(group))]
        while len(walk) < 8:
            walk.append(int(rng.choice(group[group != walk[-1]])))
        walk[-2:] = [10, 11] if user < 4 else walk[-2:]
        sequences.append(walk)
    return dataset_from_sequences(sequences, num_items=12)


# ------------------------------------------------------------------------ registry


def test_registry_builds_entries_by_name_and_refuses_bad_params():
    assert {"text", "cooccurrence", "lightgcn", "sasrec", "gru4rec"} <= set(ITEM_EMBEDDERS.names())
    for name in ITEM_EMBEDDERS:
        entry = ITEM_EMBEDDERS.get(name)
        assert issubclass(entry, ItemEmbedder)
        assert isinstance(entry.uses_interactions, bool)
    assert not ITEM_EMBEDDERS.get("text").uses_interactions
    assert ITEM_EMBEDDERS.get("sasrec").uses_interactions
    # the config checks params against the constructor's keywords
    assert {"dim", "window", "smoothing", "weighting", "seed"} <= set(
        inspect.signature(ITEM_EMBEDDERS.get("cooccurrence")).parameters
    )
    assert build_item_embedder("cooccurrence", dim=4).cache_key()["dim"] == 4
    with pytest.raises(KeyError, match="did you mean 'cooccurrence'"):
        ITEM_EMBEDDERS.get("coocurrence")
    with pytest.raises(ValueError, match="SASRec has no parameter 'hidden_sise'.*'hidden_size'"):
        build_item_embedder("sasrec", hidden_sise=8)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        build_item_embedder("sasrec", batch_size=0)
    with pytest.raises(ValueError, match="smoothing"):
        CooccurrenceEmbedder(smoothing=0)


# -------------------------------------------------------------- train-only inputs


@pytest.mark.parametrize("max_history", [None, 2])
def test_sequences_from_train_examples_are_the_training_parts(max_history):
    split = leave_one_out(load_synthetic(), max_history=max_history)
    rebuilt = sequences_from_examples(split.train, split.num_users)
    assert len(rebuilt) == split.num_users
    for sequence, expected in zip(rebuilt, split.train_sequences, strict=True):
        assert sequence.tolist() == expected.tolist()  # s[:n-2]: no valid / test target
    # only the most recent examples kept: the sequence starts at the first kept history
    recent = leave_one_out(load_synthetic(), max_history=2, max_train_examples_per_user=2)
    for sequence, expected in zip(
        sequences_from_examples(recent.train, recent.num_users), recent.train_sequences
    ):
        assert sequence.tolist() == expected[-4:].tolist()


def test_sequences_from_examples_refuses_examples_that_do_not_chain():
    examples = [
        Example(0, (1,), 2),
        Example(0, (1, 2), 3),
        Example(1, (4,), 5),
        Example(1, (7,), 6),
    ]
    with pytest.raises(ValueError, match="user 1: example 1"):
        sequences_from_examples(examples, num_users=2)
    assert sequences_from_examples(examples[:2], 2)[0].tolist() == [1, 2, 3]


def test_holdout_last_train_moves_each_users_last_train_example_to_valid():
    ds = dataset_from_sequences([[0, 1, 2, 3, 4, 5], [2, 3, 4, 5], [0, 1, 2]], num_items=6)
    split = leave_one_out(ds, max_history=None)
    inner = holdout_last_train(split)
    assert inner.valid == [Example(0, (0, 1, 2), 3)]  # user 1 has one train example: kept
    assert inner.train == [Example(0, (0,), 1), Example(0, (0, 1), 2), Example(1, (2,), 3)]
    assert inner.test == []
    assert [s.tolist() for s in inner.train_sequences] == [[0, 1, 2], [2, 3], [0]]
    assert (inner.num_items, inner.num_users) == (6, 3)


# --------------------------------------------------------------------- PPMI + SVD


def test_cooccurrence_counts_match_a_brute_force_count():
    sequences = [np.array([0, 1, 2, 1, 3]), np.array([3, 3, 0]), np.array([2])]
    counts = cooccurrence_counts(sequences, num_items=4, window=2).toarray()
    expected = np.zeros((4, 4))
    for seq in sequences:
        for p in range(len(seq)):
            for q in range(p + 1, min(len(seq), p + 3)):
                if seq[p] != seq[q]:
                    expected[seq[p], seq[q]] += 1
                    expected[seq[q], seq[p]] += 1
    np.testing.assert_array_equal(counts, expected)
    assert expected[0, 3] == 2  # across (3, 0) twice in [3, 3, 0]; 1-3 once, 1-1 never


def test_ppmi_matches_the_formula_entry_by_entry():
    counts = np.array([[0, 4, 1, 0], [4, 0, 2, 3], [1, 2, 0, 0], [0, 3, 0, 0]], dtype=float)
    out = ppmi(counts, smoothing=0.75).toarray()
    total, marginal = counts.sum(), counts.sum(axis=1)
    context = marginal**0.75 / (marginal**0.75).sum()
    for i in range(4):
        for j in range(4):
            pmi = -math.inf
            if counts[i, j]:
                pmi = math.log(counts[i, j] / total / (marginal[i] / total * context[j]))
            assert out[i, j] == pytest.approx(max(pmi, 0.0), abs=1e-12)
    assert (out > 0).sum() > 0 and (out == 0).sum() > 4  # some entries are clipped


def test_cooccurrence_puts_co_occurring_items_closer_and_counts_cold_items():
    ds = clusters()
    split = leave_one_out(ds, max_history=None)
    embedder = CooccurrenceEmbedder(dim=4, window=3, seed=0)
    vectors = embedder.embed(ds, split, [])
    assert vectors.shape == (12, 4) and vectors.dtype == torch.float32
    assert embedder.cold_items == 2  # items 10 and 11 occur only as valid / test targets
    unit = torch.nn.functional.normalize(vectors[:10], dim=1)
    cosine = unit @ unit.T
    group = torch.arange(10) // 5
    same = group[:, None] == group[None, :]
    off_diagonal = ~torch.eye(10, dtype=torch.bool)
    assert cosine[same & off_diagonal].mean() > cosine[~same].mean() + 0.5
    for item in range(10):  # every item's nearest other item is in its own group
        nearest = cosine[item].masked_fill(~off_diagonal[item], -2).argmax()
        assert group[nearest] == group[item]
    # cold vectors: small, distinct, not zero
    norms = vectors.norm(dim=1)
    torch.testing.assert_close(norms[10:], torch.full((2,), 0.1 * norms[:10].quantile(0.5)))
    assert not torch.equal(vectors[10], vectors[11])


def test_cooccurrence_is_deterministic_by_seed():
    ds = clusters()
    split = leave_one_out(ds, max_history=None)
    first = CooccurrenceEmbedder(dim=4, seed=3).embed(ds, split, [])
    again = CooccurrenceEmbedder(dim=4, seed=3).embed(ds, split, [])
    other = CooccurrenceEmbedder(dim=4, seed=4).embed(ds, split, [])
    assert torch.equal(first, again)
    assert not torch.equal(first[10:], other[10:])  # the cold items' vectors follow the seed


def test_cooccurrence_refuses_more_dims_than_items():
    ds = clusters()
    with pytest.raises(ValueError, match=r"dim \(64\) must be <= the number of items \(12\)"):
        CooccurrenceEmbedder().embed(ds, leave_one_out(ds), [])


# ------------------------------------------------------------------------- leakage


@pytest.mark.parametrize(
    "embedder",
    [
        lambda: CooccurrenceEmbedder(dim=8),
        lambda: SASRecEmbedder(**TINY_SASREC),
        lambda: LightGCNEmbedder(dim=8, epochs=2, batch_size=64),
    ],
    ids=["cooccurrence", "sasrec", "lightgcn"],
)
def test_valid_and_test_targets_never_reach_the_embeddings(embedder, tmp_path, monkeypatch):
    def fresh_embed(ds: RecDataset, run: str) -> torch.Tensor:
        # a cache of its own for every run: each fit really runs, nothing is reused
        monkeypatch.setenv("SEMREC_CACHE", str(tmp_path / run))
        return embedder().embed(ds, leave_one_out(ds), [])

    ds = load_synthetic()
    reference = fresh_embed(ds, "reference")
    moved = with_items_changed(ds, last_two_positions(ds), shift=5)
    moved_split, split = leave_one_out(moved), leave_one_out(ds)
    assert moved_split.train == split.train
    assert all(a.target != b.target for a, b in zip(moved_split.valid, split.valid))
    assert all(a.target != b.target for a, b in zip(moved_split.test, split.test))
    assert torch.equal(fresh_embed(moved, "valid-test-moved"), reference)

    third_of_user_0 = ds.chronological_order()[2]  # a train target (and later history)
    train_moved = with_items_changed(ds, np.array([third_of_user_0]), shift=5)
    assert leave_one_out(train_moved).train != split.train
    assert not torch.equal(fresh_embed(train_moved, "train-moved"), reference)


def test_sasrec_embedder_fits_on_train_only_and_reuses_the_fit(monkeypatch):
    ds = load_synthetic()
    split = leave_one_out(ds)
    watched = []
    ranking_metrics = SASRec.ranking_metrics

    def recording(self, examples, *args, **kwargs):
        watched.append(list(examples))
        return ranking_metrics(self, examples, *args, **kwargs)

    monkeypatch.setattr(SASRec, "ranking_metrics", recording)
    embedder = SASRecEmbedder(**TINY_SASREC)
    vectors = embedder.embed(ds, split, [])
    assert vectors.shape == (ds.num_items, TINY_SASREC["hidden_size"])
    model = embedder.model
    assert model.epochs_run == TINY_SASREC["max_epochs"]
    # early stopping watched the users' last train examples, one per user, every epoch
    inner_valid = holdout_last_train(split).valid
    assert len(inner_valid) == 48 and watched == [inner_valid] * TINY_SASREC["max_epochs"]
    assert model.history_length == 5  # the longest train history; test histories have 7
    assert torch.equal(vectors, model.item_embeddings())

    def no_fit(self, split):
        raise AssertionError("fit_cached should have loaded the stored fit")

    monkeypatch.setattr(SASRec, "fit", no_fit)
    assert torch.equal(SASRecEmbedder(**TINY_SASREC).embed(ds, split, []), vectors)


# --------------------------------------------------------------------------- cache


class Counting(ItemEmbedder):
    uses_interactions = True

    def __init__(self, value: float = 1.0) -> None:
        self.value = value
        self.calls = 0

    def cache_key(self) -> dict:
        return {"value": self.value}

    def embed(self, dataset, split, item_texts) -> torch.Tensor:
        self.calls += 1
        counts = torch.zeros(split.num_items, 2)
        for ex in split.train:
            counts[ex.target, 0] += 1
        counts[:, 1] = self.value
        return counts


def test_embed_cache_hits_on_the_same_train_data_only(cache):
    ds = load_synthetic()
    split = leave_one_out(ds)
    embedder = Counting()
    first = embed_cached(embedder, ds, split, [])
    again = embed_cached(embedder, ds, split, [])
    assert embedder.calls == 1 and torch.equal(first, again)
    assert len(list((cache / "embeddings").glob("*.safetensors"))) == 1
    # other valid / test targets: the same key (they are not read)
    moved = with_items_changed(ds, last_two_positions(ds), shift=5)
    assert torch.equal(embed_cached(embedder, moved, leave_one_out(moved), []), first)
    assert embedder.calls == 1
    # other train examples, or other parameters: computed again
    fewer = dataclasses.replace(split, train=split.train[1:])
    assert not torch.equal(embed_cached(embedder, ds, fewer, []), first)
    assert embedder.calls == 2
    assert embed_cached(Counting(2.0), ds, split, [])[:, 1].eq(2.0).all()


def test_non_finite_embeddings_raise_and_are_not_cached(cache):
    class Broken(Counting):
        def embed(self, dataset, split, item_texts):
            out = super().embed(dataset, split, item_texts)
            out[3, 1] = math.nan
            return out

    ds = load_synthetic()
    with pytest.raises(
        ValueError, match=r"NaN or inf embeddings for 1 of 24 items, first item 3 \('i3'\)"
    ):
        embed_cached(Broken(), ds, leave_one_out(ds), [])
    assert not list(cache.rglob("*.safetensors"))
    other = dataset_from_sequences([[0, 1, 2]], num_items=3)
    with pytest.raises(ValueError, match="different datasets"):
        embed_cached(Counting(), other, leave_one_out(ds), [])


class Letters:
    """A stub text encoder: counts of a, b, c in each text."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[t.count(c) for c in "abc"] for t in texts], dtype=torch.float32)

    def cache_key(self) -> dict:
        return {"encoder": "letters"}


def test_text_embedder_encodes_item_texts_and_caches_once(cache):
    ds = dataset_from_sequences([[0, 1, 2]], num_items=3)
    split = leave_one_out(ds)
    encoder = Letters()
    embedder = TextEmbedder(encoder)
    texts = ["abc", "aab", "c"]
    out = embed_cached(embedder, ds, split, texts)
    assert out.tolist() == [[1, 1, 1], [2, 1, 0], [0, 0, 1]]
    assert torch.equal(embed_cached(TextEmbedder(encoder), ds, split, texts), out)
    assert encoder.calls == 1
    assert len(list(cache.rglob("*.safetensors"))) == 1  # encode_cached's file, no second copy
    with pytest.raises(ValueError, match="2 item texts for the 3 items"):
        embedder.embed(ds, split, texts[:2])
    with pytest.raises(ValueError, match="encoder_params apply only"):
        TextEmbedder(encoder, encoder_params={"batch_size": 2})
    with pytest.raises(KeyError, match="unknown text encoder 'nope'"):
        TextEmbedder("nope")


def test_split_with_too_few_examples_says_so():
    ds = dataset_from_sequences([[0, 1, 2]], num_items=3)
    empty = Split(train=[], valid=[], test=[], num_items=3, num_users=1)
    with pytest.raises(ValueError, match="no two items co-occur"):
        CooccurrenceEmbedder(dim=2).embed(ds, empty, [])


# -------------------------------------------------------------------------- hybrid


def hybrid_inputs():
    """The synthetic dataset (24 items), its split, and item texts of random a/b/c letters."""
    ds = load_synthetic()
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcx"), size=8)) for _ in range(ds.num_items)]
    return ds, leave_one_out(ds), texts


def standardised_distances(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise distances after centring the columns and scaling to unit mean row norm."""
    centred = vectors.double() - vectors.double().mean(dim=0)
    return torch.cdist(centred, centred) / centred.norm(dim=1).mean()


def hybrid(text_weight: float, encoder: Letters | None = None) -> HybridEmbedder:
    return HybridEmbedder(
        text=TextEmbedder(encoder or Letters()),
        cf={"name": "cooccurrence", "params": {"dim": 4}},
        text_weight=text_weight,
    )


def test_hybrid_squared_distances_are_the_weighted_sum_of_its_standardised_parts():
    ds, split, texts = hybrid_inputs()
    text = TextEmbedder(Letters()).embed(ds, split, texts)
    cf = CooccurrenceEmbedder(dim=4).embed(ds, split, texts)
    out = embed_cached(hybrid(0.3), ds, split, texts)
    assert out.shape == (24, 3 + 4) and out.dtype == torch.float32
    assert out.mean(dim=0).abs().max() < 1e-5  # every column centred
    expected = 0.3 * standardised_distances(text) ** 2 + 0.7 * standardised_distances(cf) ** 2
    assert torch.allclose(torch.cdist(out.double(), out.double()) ** 2, expected, atol=1e-5)
    # each part scaled to unit mean row norm before weighting
    assert out[:, :3].norm(dim=1).mean() ** 2 == pytest.approx(0.3, rel=1e-5)
    assert out[:, 3:].norm(dim=1).mean() ** 2 == pytest.approx(0.7, rel=1e-5)


def test_hybrid_weight_one_is_the_text_part_and_zero_the_cf_part():
    ds, split, texts = hybrid_inputs()
    encoder = Letters()
    only_cf = embed_cached(hybrid(0.0, encoder), ds, split, texts)
    assert encoder.calls == 0  # a part with weight 0 is not even computed
    cf = CooccurrenceEmbedder(dim=4).embed(ds, split, texts)
    assert only_cf.shape == (24, 4)
    assert torch.allclose(
        torch.cdist(only_cf.double(), only_cf.double()), standardised_distances(cf), atol=1e-5
    )
    only_text = embed_cached(hybrid(1.0), ds, split, texts)
    text = TextEmbedder(Letters()).embed(ds, split, texts)
    assert only_text.shape == (24, 3)
    assert torch.allclose(
        torch.cdist(only_text.double(), only_text.double()), standardised_distances(text), atol=1e-5
    )


def test_hybrid_cache_key_and_fingerprint_cover_both_parts_and_the_weight():
    ds, split, texts = hybrid_inputs()
    key = hybrid(0.5).cache_key()
    assert key["text_weight"] == 0.5
    assert key["text"] == {"embedder": "TextEmbedder", "encoder": {"encoder": "letters"}}
    assert key["cf"]["embedder"] == "CooccurrenceEmbedder" and key["cf"]["dim"] == 4
    assert hybrid(0.25).cache_key() != key
    wider = HybridEmbedder(TextEmbedder(Letters()), {"name": "cooccurrence", "params": {"dim": 5}})
    assert wider.cache_key()["cf"]["dim"] == 5
    embedder = hybrid(0.5)
    assert embedder.uses_interactions
    fingerprint = embedder.data_fingerprint(ds, split, texts)
    fewer = dataclasses.replace(split, train=split.train[1:])
    assert embedder.data_fingerprint(ds, fewer, texts) != fingerprint  # the CF part's train data
    assert embedder.data_fingerprint(ds, split, ["x"] + texts[1:]) != fingerprint  # the texts
    two_texts = HybridEmbedder(TextEmbedder(Letters()), TextEmbedder(Letters()))
    assert not two_texts.uses_interactions


@pytest.mark.parametrize("weight", [1.5, -0.1, math.nan, "0.5", True])
def test_hybrid_refuses_a_weight_outside_zero_one(weight):
    with pytest.raises(
        ValueError, match=r"items\.embedder\.params\.text_weight must be a number in \[0, 1\]"
    ):
        hybrid(weight)


@pytest.mark.parametrize(
    ("cf", "message"),
    [
        ({"name": "coocurrence"}, r"params\.cf\.name: unknown item embedder .*'cooccurrence'"),
        ({"name": "cooccurrence", "parms": {}}, r"params\.cf: unknown keys \['parms'\]"),
        ({"name": "cooccurrence", "params": {"dim": 0}}, r"params\.cf: dim must be >= 1"),
        ({"name": "cooccurrence", "params": {"dimm": 4}}, r"params\.cf: .*'dimm'"),
        ({"name": "hybrid"}, r"params\.cf\.name: a part of a hybrid cannot be a hybrid"),
        ("cooccurrence", r"params\.cf: expected \{name: <item embedder>"),
    ],
)
def test_hybrid_refuses_bad_parts_naming_the_key(cf, message):
    with pytest.raises(ValueError, match=r"items\.embedder\." + message):
        HybridEmbedder(TextEmbedder(Letters()), cf)


def test_a_runs_hybrid_uses_its_encoder_section_and_seed():
    hybrid_config = (
        "embedder={name: hybrid, params: {cf: {name: sasrec, params: {hidden_size: 8}}, "
        "text_weight: 0.25}}"
    )
    config = load_config(TINY, [hybrid_config, "encoder.params={normalize: false}", "seed=7"])
    embedder = ItemVectors(config, data=None).embedder
    assert isinstance(embedder, HybridEmbedder) and embedder.text_weight == 0.25
    assert isinstance(embedder.text, TextEmbedder)
    assert isinstance(embedder.text.encoder, SentenceTransformerEncoder)
    assert embedder.text.encoder.normalize is False  # the encoder: section, not a default
    assert isinstance(embedder.cf, SASRecEmbedder)
    assert embedder.cf.model.hyperparameters()["seed"] == 7  # seeded by the run
    assert embedder.cf.model.hyperparameters()["hidden_size"] == 8
    with_params = hybrid_config.replace(
        "params: {cf:", "params: {text: {name: text, params: {a: 1}}, cf:"
    )
    with pytest.raises(ConfigError, match=r"items\.embedder\.params\.text\.params\.a"):
        load_config(TINY, [with_params])  # refused when the config loads
    with pytest.raises(ConfigError, match="did you mean 'text_weight'"):
        load_config(TINY, ["embedder={name: hybrid, params: {text_wieght: 0.5}}"])


# ------------------------------------------------------------------------ lightgcn


def test_lightgcn_adjacency_is_the_symmetrically_normalised_bipartite_graph():
    ds = dataset_from_sequences([[0, 1, 2, 0], [1, 2, 3, 1]], num_items=4)
    split = leave_one_out(ds, max_history=None)
    pairs = interaction_pairs(split)  # train parts: user 0 {0, 1}, user 1 {1, 2}
    assert pairs.tolist() == [[0, 0], [0, 1], [1, 1], [1, 2]]
    dense = normalized_adjacency(pairs, 2, 4).to_dense()
    assert torch.equal(dense, dense.T)
    degree = torch.tensor([2, 2, 1, 2, 1, 0], dtype=torch.float)  # users, then items 0-3
    # user 0 - item 1 (node 3): 1 / sqrt(2 * 2)
    assert dense[0, 3].item() == pytest.approx(0.5)
    # user 0 - item 0 (node 2): 1 / sqrt(2 * 1)
    assert dense[0, 2].item() == pytest.approx(1 / math.sqrt(2))
    assert dense[:, 5].abs().sum() == 0 and degree[5] == 0  # item 3 has no train interaction
    assert (dense != 0).sum() == 2 * len(pairs)


def test_lightgcn_puts_co_consumed_items_closer_and_counts_cold_items():
    ds = clusters()
    split = leave_one_out(ds, max_history=None)
    embedder = LightGCNEmbedder(dim=8, layers=2, epochs=60, batch_size=32, lr=1e-2, seed=0)
    vectors = embedder.embed(ds, split, [])
    assert vectors.shape == (12, 8)
    assert embedder.cold_items == 2
    assert embedder.history[-1] < embedder.history[0]
    unit = torch.nn.functional.normalize(vectors[:10], dim=1)
    cosine = unit @ unit.T
    same = (torch.arange(10) // 5)[:, None] == (torch.arange(10) // 5)[None, :]
    off_diagonal = ~torch.eye(10, dtype=torch.bool)
    assert cosine[same & off_diagonal].mean() > cosine[~same].mean() + 0.5
    again = LightGCNEmbedder(dim=8, layers=2, epochs=60, batch_size=32, lr=1e-2, seed=0)
    assert torch.equal(again.embed(ds, split, []), vectors)


# ---------------------------------------------------------------------- cold start


def test_cold_items_get_vectors_regressed_from_their_text():
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(60, 10, generator=generator)
    mapping = torch.randn(10, 4, generator=generator)
    truth = text @ mapping
    cf = truth.clone()
    cold = torch.zeros(60, dtype=torch.bool)
    cold[[3, 17, 42]] = True
    cf[cold] = 100.0  # whatever the CF model left there
    regressor = TextToCF().fit(text[~cold], cf[~cold])  # fitted on the warm items only
    assert torch.allclose(regressor.predict(text[cold]), truth[cold], atol=0.05)
    assert regressor.validation_r2 > 0.99
    assert torch.allclose(regressor.predict(text[:2]), truth[:2], atol=0.05)
    with pytest.raises(RuntimeError, match="not fitted"):
        TextToCF().predict(text)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{text_weight: 1.5}", "text_weight must be a number in"),
        ("{cf: {name: coocurrence}}", "cooccurrence"),
        ("{cf: {name: cooccurrence, params: {dimm: 8}}}", "params.cf.params.dimm"),
        ("{cf: {name: hybrid}}", "cannot be a hybrid"),
        ("{cf: cooccurrence}", "expected {name"),
    ],
)
def test_bad_hybrid_parts_are_refused_when_the_config_loads(params, message) -> None:
    tiny = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
    with pytest.raises(ConfigError, match=message):
        load_config(tiny, [f"embedder={{name: hybrid, params: {params}}}"])

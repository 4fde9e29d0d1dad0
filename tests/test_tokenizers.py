"""The tokenizer interface: rqkmeans and precomputed SIDs, stats, save/load, new items."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semrec.tokenizers import (
    TOKENIZERS,
    ItemTokenizer,
    PrecomputedTokenizer,
    RQKMeansTokenizer,
    SIDConflictWarning,
    load_tokenizer,
)
from semrec.tokenizers.collisions import collision_rate, is_prefix_free


def embeddings(n: int = 120, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- registry
def test_registry_names():
    assert {"rqkmeans", "precomputed"} <= set(TOKENIZERS.names())
    assert TOKENIZERS.get("rqkmeans") is RQKMeansTokenizer


# ---------------------------------------------------------------------------- rqkmeans
def test_rqkmeans_reassign_resolves_collisions_and_only_touches_the_last_level():
    x = embeddings()
    tok = RQKMeansTokenizer(levels=2, codebook_size=[4, 64], seed=0)
    tok.fit(x)
    before, after = tok.codes_before_resolution, tok.codes
    stats = tok.stats()
    assert collision_rate(before) > 0  # the test is only meaningful with collisions
    assert stats["collision_rate_before"] == pytest.approx(collision_rate(before))
    assert stats["collision_rate_after"] == 0.0 and stats["colliding_groups_after"] == 0
    assert torch.equal(before[:, 0], after[:, 0])
    changed = (before != after).any(dim=1)
    assert stats["collision_resolution"] == {
        "strategy": "reassign",
        "items_reassigned": int(changed.sum()),
    }
    # Every moved item landed on a last-level code its prefix did not use before.
    for item in changed.nonzero().flatten().tolist():
        same_prefix = before[:, 0] == before[item, 0]
        assert after[item, 1].item() not in set(before[same_prefix, 1].tolist())
    assert tok.codebook_sizes == [4, 64] and tok.levels == 2
    # The raw codes are exactly what the quantiser gives for the training embeddings.
    assert torch.equal(tok.quantizer.encode(x), before)


def test_rqkmeans_is_deterministic_for_a_seed():
    x = embeddings()
    a = RQKMeansTokenizer(levels=2, codebook_size=[8, 64])
    b = RQKMeansTokenizer(levels=2, codebook_size=[8, 64])
    a.fit(x)
    b.fit(x)
    assert torch.equal(a.codes, b.codes)
    c = RQKMeansTokenizer(levels=2, codebook_size=[8, 64])
    c.fit(x, seed=1)
    assert not torch.equal(a.codes_before_resolution, c.codes_before_resolution)


def test_rqkmeans_overflow_raises_unless_suffix_fallback():
    x = embeddings(40)
    with pytest.raises(ValueError, match="bigger last-level codebook or the 'suffix' strategy"):
        RQKMeansTokenizer(levels=1, codebook_size=4).fit(x)
    tok = RQKMeansTokenizer(levels=1, codebook_size=4, on_overflow="suffix")
    tok.fit(x)
    assert tok.levels == 2 and tok.stats()["collision_rate_after"] == 0.0
    assert is_prefix_free(tok.codes)


def test_rqkmeans_suffix_strategy():
    x = embeddings(60)
    tok = RQKMeansTokenizer(levels=2, codebook_size=4, collision="suffix")
    tok.fit(x)
    before = tok.codes_before_resolution
    assert tok.levels == 3
    assert torch.equal(tok.codes[:, :2], before)
    suffix = tok.codes[:, 2]
    assert tok.codebook_sizes[2] == int(suffix.max()) + 1
    stats = tok.stats()
    assert stats["collision_rate_after"] == 0.0 and stats["prefix_free"]
    assert stats["collision_resolution"]["items_with_suffix"] == int((suffix >= 0).sum())
    assert stats["collision_rate_before"] == pytest.approx(int((suffix >= 0).sum()) / 60)
    # Variable length: unique items stop after two tokens.
    unique = int((suffix < 0).nonzero()[0])
    assert len(tok.item_tokens(unique)) == 2

    fixed = RQKMeansTokenizer(levels=2, codebook_size=4, collision="suffix", suffix_all=True)
    fixed.fit(x)
    assert bool((fixed.codes >= 0).all())


def test_rqkmeans_without_resolution_reports_collisions():
    tok = RQKMeansTokenizer(levels=1, codebook_size=4, collision="none")
    tok.fit(embeddings(40))
    stats = tok.stats()
    assert stats["collision_rate_after"] == stats["collision_rate_before"] == 1.0
    assert stats["colliding_groups_after"] == 4
    assert stats["fit"]["mse_per_level"][0] < stats["fit"]["mean_squared_norm"]


def test_reconstruction_error_drops_per_level():
    tok = RQKMeansTokenizer(levels=3, codebook_size=8, collision="none")
    tok.fit(embeddings(200))
    mse = tok.stats()["fit"]["mse_per_level"]
    assert tok.stats()["fit"]["mean_squared_norm"] > mse[0] > mse[1] > mse[2]


def test_nan_or_inf_embeddings_are_rejected():
    x = embeddings(10)
    x[3, 0] = float("nan")
    x[7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 10 rows \(first: row 3\)"):
        RQKMeansTokenizer(levels=1, codebook_size=4).fit(x)
    with pytest.raises(ValueError, match="2-D"):
        RQKMeansTokenizer().fit(torch.zeros(5))
    with pytest.raises(ValueError, match="at least one item"):
        RQKMeansTokenizer().fit(torch.zeros(0, 4))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="collision must be one of"):
        RQKMeansTokenizer(collision="sinkhorn")
    with pytest.raises(ValueError, match="distinct"):
        RQKMeansTokenizer(level_prefixes="aab")
    with pytest.raises(ValueError, match="names 2 levels but the tokenizer produced 3"):
        RQKMeansTokenizer(levels=3, codebook_size=4, level_prefixes="ab").fit(embeddings(20))
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = RQKMeansTokenizer().codes


def test_tokens_and_vocabulary():
    tok = RQKMeansTokenizer(levels=2, codebook_size=[3, 8], level_prefixes="xy")
    tok.fit(embeddings(20))
    vocab = tok.token_strings()
    assert vocab == [f"<x_{c}>" for c in range(3)] + [f"<y_{c}>" for c in range(8)]
    a, b = tok.codes[5].tolist()
    assert tok.item_tokens(5) == [f"<x_{a}>", f"<y_{b}>"]
    assert tok.sid_strings()[5] == f"<x_{a}><y_{b}>"
    assert tok.index()["5"] == tok.item_tokens(5)


def test_save_load_round_trip_with_pca_and_normalisation(tmp_path):
    x = embeddings(150, dim=24)
    tok = RQKMeansTokenizer(levels=3, codebook_size=[4, 4, 64], reduce_dim=8, normalize=True)
    tok.fit(x)
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, RQKMeansTokenizer)
    assert loaded.config() == tok.config()
    assert torch.equal(loaded.codes, tok.codes)
    assert torch.equal(loaded.codes_before_resolution, tok.codes_before_resolution)
    assert loaded.stats() == tok.stats()
    fresh = embeddings(30, dim=24, seed=9) * 3.0
    assert torch.equal(loaded.encode_new(fresh), tok.encode_new(fresh))
    assert RQKMeansTokenizer.load(tmp_path / "tok").token_strings() == tok.token_strings()
    index = json.loads((tmp_path / "tok" / "index.json").read_text())
    assert index["0"] == tok.item_tokens(0)
    # Saving again replaces the directory.
    tok.save(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").n_items == 150


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x = embeddings(80, dim=12)
    tok = RQKMeansTokenizer(levels=1, codebook_size=128, reduce_dim=5)
    tok.fit(x)
    ours = tok._project(x)
    reference = torch.from_numpy(PCA(n_components=5).fit_transform(x.numpy())).float()
    assert torch.allclose(ours.abs(), reference.abs(), atol=1e-4)
    assert tok.stats()["fit"]["quantized_dim"] == 5
    with pytest.raises(ValueError, match="reduce_dim=20 needs at least that many"):
        RQKMeansTokenizer(reduce_dim=20).fit(x)


def test_encode_new_applies_the_fitted_quantiser_and_reports_conflicts():
    x = embeddings(100)
    tok = RQKMeansTokenizer(levels=2, codebook_size=[4, 64], normalize=True)
    tok.fit(x)
    existing = tok.codes.clone()
    with pytest.warns(SIDConflictWarning, match="100 of 100 new items"):
        again = tok.encode_new(x * 2.0)  # normalised: same directions, same raw codes
    assert torch.equal(again, tok.codes_before_resolution)
    assert torch.equal(tok.codes, existing)  # existing items untouched
    with pytest.raises(ValueError, match="dimension 16"):
        tok.encode_new(torch.zeros(2, 5))


def test_encode_new_pads_to_the_suffix_width():
    tok = RQKMeansTokenizer(levels=1, codebook_size=4, collision="suffix")
    tok.fit(embeddings(30))
    with pytest.warns(SIDConflictWarning):
        new = tok.encode_new(embeddings(3, seed=4))
    assert new.shape == (3, 2) and new[:, 1].tolist() == [-1, -1, -1]


# ------------------------------------------------------------------------------- stats
def test_stats_on_a_hand_checked_table():
    tok = PrecomputedTokenizer(
        ["<a_0><b_0>", "<a_0><b_1>", "<a_1><b_0>", "<a_1><b_0>"], codebook_size=[2, 4]
    )
    stats = tok.stats()
    assert stats["n_items"] == 4 and stats["levels"] == 2
    assert stats["vocabulary_size"] == 6
    assert stats["collision_rate_before"] == stats["collision_rate_after"] == 0.5
    assert stats["colliding_groups_after"] == 1 and stats["largest_group_after"] == 2
    level0, level1 = stats["per_level"]
    assert (level0["used_codes"], level0["usage"]) == (2, 1.0)
    assert level0["entropy"] == pytest.approx(math.log(2))
    assert level0["normalized_entropy"] == pytest.approx(1.0)
    assert (level1["used_codes"], level1["usage"]) == (2, 0.5)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert level1["entropy"] == pytest.approx(h)
    assert level1["normalized_entropy"] == pytest.approx(h / math.log(4))
    assert stats["collision_resolution"] == {"strategy": "precomputed"}


def test_stats_ignore_padding_per_level():
    tok = PrecomputedTokenizer(["<a_0><b_0><c_0>", "<a_0><b_0><c_1>", "<a_1><b_3>"])
    level2 = tok.stats()["per_level"][2]
    assert level2["items"] == 2 and level2["normalized_entropy"] == pytest.approx(1.0)
    assert tok.stats()["prefix_free"]


# ------------------------------------------------------------------------- precomputed
LCREC_INDEX = {
    "0": ["<a_12>", "<b_7>", "<c_201>"],
    "1": ["<a_12>", "<b_7>", "<c_3>"],
    "2": ["<a_1>", "<b_0>", "<c_3>", "<d_0>"],
    "3": ["<a_1>", "<b_0>", "<c_3>", "<d_1>"],
}


def test_precomputed_parses_lcrec_index_json(tmp_path):
    path = tmp_path / "Instruments.index.json"
    path.write_text(json.dumps(LCREC_INDEX))
    tok = PrecomputedTokenizer(str(path))
    tok.fit()  # a no-op apart from parsing
    assert tok.codes.tolist() == [
        [12, 7, 201, -1],
        [12, 7, 3, -1],
        [1, 0, 3, 0],
        [1, 0, 3, 1],
    ]
    assert tok.codebook_sizes == [13, 8, 202, 2]
    assert [tok.item_tokens(i) for i in range(4)] == [LCREC_INDEX[str(i)] for i in range(4)]
    assert tok.sid_strings()[0] == "<a_12><b_7><c_201>"
    assert tok.token_strings()[:2] == ["<a_0>", "<a_1>"]
    with pytest.raises(NotImplementedError, match="cannot encode new items"):
        tok.encode_new(torch.zeros(1, 4))


def test_precomputed_custom_prefixes_and_sizes():
    tok = PrecomputedTokenizer([["<q_1>", "<p_0>"], ["<q_1>", "<p_1>"]], codebook_size=[4, 2])
    assert tok.token_strings() == ["<q_0>", "<q_1>", "<q_2>", "<q_3>", "<p_0>", "<p_1>"]
    with pytest.raises(ValueError, match="level 0 uses code 5, beyond codebook_size 4"):
        PrecomputedTokenizer([["<a_5>"]], codebook_size=4).fit()
    with pytest.raises(ValueError, match="names only 1 levels"):
        PrecomputedTokenizer([["<a_1>", "<b_1>"]], level_prefixes="a").fit()


def test_precomputed_errors_name_the_item(tmp_path):
    with pytest.raises(ValueError, match=r"item 1 has token <c_3> at level 1.*'b'"):
        PrecomputedTokenizer({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<c_3>"]}).fit()
    with pytest.raises(ValueError, match=r"item keys must be 0..1; missing \[1\]"):
        PrecomputedTokenizer({"0": ["<a_1>"], "2": ["<a_2>"]}).fit()
    with pytest.raises(ValueError, match="item 0: 'a_1' is not a sequence"):
        PrecomputedTokenizer(["a_1"]).fit()
    bad = tmp_path / "index.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="index.json: not valid JSON"):
        PrecomputedTokenizer(str(bad)).fit()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        PrecomputedTokenizer(str(tmp_path / "nope.json")).fit()


def test_precomputed_save_load_survives_deleting_the_source(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps(LCREC_INDEX))
    tok = PrecomputedTokenizer(str(path))
    tok.save(tmp_path / "saved")
    path.unlink()
    loaded = ItemTokenizer.load(tmp_path / "saved")
    assert isinstance(loaded, PrecomputedTokenizer)
    assert torch.equal(loaded.codes, tok.codes)
    assert loaded.token_strings() == tok.token_strings()
    # Its own index.json is readable as a precomputed index again.
    again = PrecomputedTokenizer(str(tmp_path / "saved" / "index.json"))
    assert torch.equal(again.codes, tok.codes)


# ------------------------------------------------------------------------ load errors
def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(tmp_path / "missing")
    tok = RQKMeansTokenizer(levels=1, codebook_size=4, collision="none")
    tok.fit(embeddings(10))
    saved = tok.save(tmp_path / "tok")

    with pytest.raises(TypeError, match="holds a 'rqkmeans' tokenizer"):
        PrecomputedTokenizer.load(saved)

    (saved / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="state.safetensors: unreadable or corrupt"):
        load_tokenizer(saved)

    tok.save(saved)
    header = json.loads((saved / "config.json").read_text())
    header["tokenizer"] = "rqkmean"
    (saved / "config.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="config.json: unknown tokenizer 'rqkmean'.*rqkmeans"):
        load_tokenizer(saved)

    header["tokenizer"] = "rqkmeans"
    header["config"]["levels"] = 2
    (saved / "config.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="state.safetensors: does not match"):
        load_tokenizer(saved)

    (saved / "config.json").write_text("[]")
    with pytest.raises(ValueError, match="config.json: not a semrec tokenizer config"):
        load_tokenizer(saved)


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{}")
    tok = RQKMeansTokenizer(levels=1, codebook_size=4, collision="none")
    tok.fit(embeddings(10))
    with pytest.raises(ValueError, match="not empty and not a saved tokenizer"):
        tok.save(tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").exists()

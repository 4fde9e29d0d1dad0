"""LC-Rec's RQ-VAE tokenizer (rqvae_usm) and the random_ids / vanilla_id ablations."""

from __future__ import annotations

import pytest
import torch

from semrec.tokenizers import (
    TOKENIZERS,
    RandomIDTokenizer,
    RQVAEUSMTokenizer,
    VanillaIDTokenizer,
    load_tokenizer,
)
from semrec.tokenizers.base import SIDConflictWarning
from semrec.tokenizers.collisions import PAD, collision_groups, is_prefix_free
from semrec.tokenizers.rqvae import RQVAE, mlp, train_rqvae

torch.set_num_threads(1)

SMALL = {"code_dim": 8, "hidden_layers": [32], "batch_size": 32}


def embeddings(n: int = 80, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_registry_has_the_lcrec_tokenizers():
    assert TOKENIZERS.get("rqvae_usm") is RQVAEUSMTokenizer
    assert TOKENIZERS.get("random_ids") is RandomIDTokenizer
    assert TOKENIZERS.get("vanilla_id") is VanillaIDTokenizer


# -------------------------------------------------------------------------------- model
def test_mlp_layout():
    layers = [type(m).__name__ for m in mlp([16, 32, 8, 4])]
    assert layers == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_rqvae_forward_codes_are_argmin_and_the_encoder_gets_gradient():
    torch.manual_seed(0)
    model = RQVAE(16, [4, 6], code_dim=8, hidden_layers=[32])
    x = embeddings(20)
    out = model(x)
    codes, _ = model.argmin_codes(x)
    assert out.codes.shape == (20, 2) and torch.equal(out.codes, codes)
    # Brute force Eq. 1-2 on the encoder output.
    residual = model.encoder(x).detach()
    for level, codebook in enumerate(model.codebooks):
        d = ((residual[:, None, :] - codebook.detach()[None]) ** 2).sum(dim=2)
        assert torch.equal(d.argmin(dim=1), codes[:, level])
        residual = residual - codebook.detach()[codes[:, level]]
    out.reconstruction_loss.backward()  # straight-through: reaches the encoder
    assert model.encoder[0].weight.grad is not None
    assert float(model.encoder[0].weight.grad.abs().sum()) > 0


def test_rqvae_training_lowers_the_reconstruction_loss_and_logs_history():
    # Toy set: 8 well separated clusters, which 8 x 8 codes can reconstruct.
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 16, generator=g) * 2
    x = centers[torch.arange(128) % 8] + 0.1 * torch.randn(128, 16, generator=g)
    torch.manual_seed(0)
    model = RQVAE(16, [8, 8], code_dim=8, hidden_layers=[32])
    history = train_rqvae(model, x, epochs=40, batch_size=32, seed=0)
    assert [h["epoch"] for h in history] == list(range(40))
    losses = [h["reconstruction_loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 35  # mostly monotone
    assert all(len(h["code_usage"]) == 2 and 0 < min(h["code_usage"]) <= 1 for h in history)
    assert all(0 <= h["collision_rate"] <= 1 for h in history)


def test_training_with_usm_is_deterministic_for_a_seed():
    x = embeddings(64)
    runs = []
    for _ in range(2):
        tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 16], epochs=3, **SMALL)
        tok.fit(x, seed=5)
        runs.append(tok)
    assert torch.equal(runs[0].codes, runs[1].codes)
    assert runs[0].stats()["fit"]["history"] == runs[1].stats()["fit"]["history"]


# ----------------------------------------------------------------------- rqvae_usm tokenizer
def test_rqvae_usm_has_zero_collisions_with_30_identical_items(tmp_path):
    x = embeddings(80)
    x[:30] = x[0]
    tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 64], epochs=5, **SMALL)
    tok.fit(x)
    stats = tok.stats()
    assert stats["collision_rate_before"] >= 30 / 80  # the identical items all collide
    assert stats["collision_rate_after"] == 0.0 and collision_groups(tok.codes) == []
    assert is_prefix_free(tok.codes) and tok.codes.shape == (80, 2)
    resolution = stats["collision_resolution"]
    assert resolution["strategy"] == "uniform_semantic_mapping"
    assert resolution["fallback"] == "greedy_nearest_free"  # Sinkhorn cannot split twins
    assert isinstance(resolution["rounds"], int)
    # Only the last level moves, and the raw codes are the model's argmin codes.
    assert torch.equal(tok.codes[:, 0], tok.codes_before_resolution[:, 0])
    assert torch.equal(tok.codes_before_resolution, tok.model.argmin_codes(x)[0])
    assert len(stats["fit"]["history"]) == 5


def test_rqvae_usm_save_load_round_trip(tmp_path):
    x = embeddings(60)
    tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 16], epochs=3, **SMALL)
    tok.fit(x)
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, RQVAEUSMTokenizer)
    assert torch.equal(loaded.codes, tok.codes)
    assert loaded.config() == tok.config() and loaded.stats() == tok.stats()
    new = embeddings(7, seed=1)
    with pytest.warns(SIDConflictWarning, match="new items got a SID"):
        encoded = loaded.encode_new(new)  # padded to the width of the fitted codes
    assert torch.equal(encoded[:, :2], tok.model.argmin_codes(new)[0])
    assert bool((encoded[:, 2:] == PAD).all())
    with pytest.raises(ValueError, match="dimension 16"):
        loaded.encode_new(torch.zeros(2, 5))


def test_rqvae_without_usm_appends_a_distinct_suffix():
    x = embeddings(60)
    x[:10] = x[0]
    tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 16], epochs=3, usm=False, **SMALL)
    tok.fit(x)
    before, codes = tok.codes_before_resolution, tok.codes
    assert codes.shape[1] == 3 and collision_groups(codes) == [] and is_prefix_free(codes)
    assert torch.equal(codes[:, :2], before)
    collided = torch.zeros(60, dtype=torch.bool)
    for group in collision_groups(before):
        collided[group] = True
        assert sorted(codes[group, 2].tolist()) == list(range(group.numel()))
    assert bool((codes[~collided, 2] == PAD).all())
    assert tok.stats()["collision_resolution"]["strategy"] == "suffix"
    assert tok.codebook_sizes[2] == int(codes[:, 2].max()) + 1


def test_too_small_codebooks_fail_before_training():
    tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 8], epochs=1000, **SMALL)
    with pytest.raises(ValueError, match=r"only 32 distinct SIDs but there are 40 items"):
        tok.fit(embeddings(40))
    assert tok.model is None  # nothing was built, let alone trained
    with pytest.raises(ValueError, match="random_ids"):
        RandomIDTokenizer(levels=2, codebook_size=3).fit(embeddings(10))


def test_nan_embeddings_and_bad_options_are_rejected():
    x = embeddings(20)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="row 3"):
        RQVAEUSMTokenizer(levels=2, codebook_size=8, **SMALL).fit(x)
    with pytest.raises(ValueError, match="codebook_size lists 3 sizes"):
        RQVAEUSMTokenizer(levels=2, codebook_size=[4, 4, 4])
    with pytest.raises(ValueError, match="epochs"):
        RQVAEUSMTokenizer(epochs=0)


# ---------------------------------------------------------------------------- ablations
@pytest.mark.parametrize("sizes", [[4, 8], [256, 256, 256]])  # dense and sparse code spaces
def test_random_ids_are_unique_in_range_and_reproducible(sizes, tmp_path):
    tok = RandomIDTokenizer(levels=len(sizes), codebook_size=sizes, seed=1)
    tok.fit(embeddings(30))
    codes = tok.codes
    assert codes.shape == (30, len(sizes)) and collision_groups(codes) == []
    for level, size in enumerate(sizes):
        assert 0 <= int(codes[:, level].min()) and int(codes[:, level].max()) < size
    again = RandomIDTokenizer(levels=len(sizes), codebook_size=sizes, seed=1)
    again.fit(embeddings(30, seed=9))  # embeddings are ignored
    assert torch.equal(again.codes, codes)
    tok.save(tmp_path / "r")
    assert torch.equal(load_tokenizer(tmp_path / "r").codes, codes)
    with pytest.raises(NotImplementedError, match="random_ids"):
        tok.encode_new(embeddings(2))


def test_random_ids_fill_an_exactly_sized_code_space():
    tok = RandomIDTokenizer(levels=2, codebook_size=[4, 8])
    tok.fit(embeddings(32))
    assert sorted(map(tuple, tok.codes.tolist())) == [(a, b) for a in range(4) for b in range(8)]


def test_vanilla_id_is_one_token_per_item(tmp_path):
    tok = VanillaIDTokenizer()
    tok.fit(embeddings(12))
    assert tok.codes.tolist() == [[i] for i in range(12)]
    assert tok.item_tokens(5) == ["<i_5>"] and tok.codebook_sizes == [12]
    assert tok.token_strings() == [f"<i_{i}>" for i in range(12)]
    tok.save(tmp_path / "v")
    assert load_tokenizer(tmp_path / "v").sid_strings() == tok.sid_strings()
    with pytest.raises(NotImplementedError, match="vanilla_id"):
        tok.encode_new(embeddings(2))


def test_standardization_makes_codes_independent_of_embedding_scale():
    x = embeddings(60)
    runs = []
    for data in (x, 0.01 * x + 3.0):  # e.g. unit-norm sentence embeddings vs raw ones
        tok = RQVAEUSMTokenizer(levels=2, codebook_size=[4, 16], epochs=2, **SMALL)
        tok.fit(data)
        runs.append(tok.codes_before_resolution)
    assert torch.equal(runs[0], runs[1])

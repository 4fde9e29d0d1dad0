"""Semantic Convergence's behaviour-aligned codebooks (Eq. 1-4): losses, init, gradients, fit."""

from __future__ import annotations

import math

import pytest
import torch

from semrec.tokenizers import BehaviorCodebookTokenizer, SIDConflictWarning, load_tokenizer
from semrec.tokenizers.behavior_codebook import BehaviorCodebook
from semrec.tokenizers.collisions import collision_rate


def _two_level(residual: str, distance: str) -> BehaviorCodebook:
    """Codebooks B^0 = {(1,0), (0,1)}, B^1 = {(.5,0), (0,.5)}; projection P = identity."""
    model = BehaviorCodebook(2, [2, 2], llm_dim=2, residual=residual, distance_kind=distance)
    with torch.no_grad():
        model.codebooks[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.codebooks[1].copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
        model.projection.weight.copy_(torch.eye(2))
        model.projection.bias.zero_()
    return model


X = torch.tensor([[-0.3, 1.2]])
TARGET = torch.tensor([[1.0, 1.0]])


def test_losses_on_a_hand_computed_two_level_example_with_the_abs_residual():
    # level 0: ||x-(1,0)||^2 = 1.69+1.44 = 3.13, ||x-(0,1)||^2 = .09+.04 = .13 -> code 1
    # E^1 = |(-0.3, 0.2)| = (0.3, 0.2): to (.5,0) .04+.04 = .08, to (0,.5) .09+.09 = .18 -> 0
    model = _two_level("abs", "l2")
    codes, behaviour = model.encode(X)
    assert codes.tolist() == [[1, 0]]
    assert behaviour.item() == pytest.approx(0.13 + 0.08)
    parts = model.losses(X, TARGET)
    assert parts["behaviour"].item() == pytest.approx(0.21)
    # L_L: ||(0,1)-(1,1)||^2 = 1, ||(.5,0)-(1,1)||^2 = .25+1 = 1.25
    assert parts["llm"].item() == pytest.approx(2.25)


def test_the_plain_difference_residual_picks_another_second_code():
    # E^1 = (-0.3, 0.2): to (.5,0) .64+.04 = .68, to (0,.5) .09+.09 = .18 -> code 1
    model = _two_level("difference", "l2")
    codes, behaviour = model.encode(X)
    assert codes.tolist() == [[1, 1]]
    assert behaviour.item() == pytest.approx(0.13 + 0.18)
    # L_L: 1 + ||(0,.5)-(1,1)||^2 = 1 + 1.25
    assert model.losses(X, TARGET)["llm"].item() == pytest.approx(2.25)


def test_cosine_distance_losses():
    model = _two_level("abs", "cosine")
    codes, behaviour = model.encode(X)
    norm = math.hypot(-0.3, 1.2)
    level0 = 1 - 1.2 / norm  # cos to (0,1); to (1,0) it is 1 + 0.3/norm, farther
    level1 = 1 - 0.3 / math.hypot(0.3, 0.2)  # E^1 = (.3,.2): nearer (1,0) in angle
    assert codes.tolist() == [[1, 0]]
    assert behaviour.item() == pytest.approx(level0 + level1, rel=1e-5)
    llm = (1 - 1 / math.sqrt(2)) * 2  # (0,1) and (.5,0) are both 45 degrees from (1,1)
    assert model.losses(X, TARGET)["llm"].item() == pytest.approx(llm, rel=1e-5)


def test_each_level_is_kmeans_initialised_on_its_own_input_residuals():
    # two far clusters on the x axis; inside each, offsets along x or y of size 1
    x = torch.tensor([[11.0, 0.0], [9.0, 0.0], [-10.0, 1.0], [-10.0, -1.0]], dtype=torch.float32)
    model = BehaviorCodebook(2, [2, 2], llm_dim=None, residual="abs", distance_kind="l2")
    model.init_codebooks(x, seed=0)
    level0 = sorted(model.codebooks[0].detach().tolist())
    assert torch.allclose(torch.tensor(level0), torch.tensor([[-10.0, 0.0], [10.0, 0.0]]))
    # level-1 inputs are |x - centroid| = (1,0), (1,0), (0,1), (0,1)
    level1 = sorted(model.codebooks[1].detach().tolist())
    assert torch.allclose(torch.tensor(level1), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_the_llm_alignment_gradient_reaches_the_projection_and_the_codes():
    model = _two_level("abs", "cosine")
    parts = model.losses(X, TARGET)
    parts["llm"].backward()
    assert model.projection.weight.grad is not None
    assert model.projection.weight.grad.abs().sum() > 0
    # only the chosen codes (1 at level 0, 0 at level 1) get a gradient
    assert model.codebooks[0].grad[1].abs().sum() > 0
    assert model.codebooks[0].grad[0].abs().sum() == 0


def test_the_behaviour_loss_reaches_only_the_chosen_code_of_each_level():
    model = _two_level("abs", "l2")
    model.losses(X, None)["behaviour"].backward()
    grads = [codebook.grad for codebook in model.codebooks]
    assert grads[0][1].abs().sum() > 0 and grads[0][0].abs().sum() == 0
    assert grads[1][0].abs().sum() > 0 and grads[1][1].abs().sum() == 0
    assert model.projection.weight.grad is None


def _clustered(n: int = 300, dim: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=generator) * 3
    return centres[torch.arange(n) % 12] + torch.randn(n, dim, generator=generator)


def test_fit_gives_collision_free_sids_that_survive_save_and_load(tmp_path):
    x = _clustered()
    targets = torch.randn(x.shape[0], 24, generator=torch.Generator().manual_seed(1))
    tokenizer = BehaviorCodebookTokenizer(levels=3, codebook_size=16, epochs=15)
    tokenizer.fit(x, llm_targets=targets)
    assert collision_rate(tokenizer.codes) == 0.0
    history = tokenizer.stats()["fit"]["history"]
    assert len(history) == 15 and history[-1]["llm_loss"] < history[0]["llm_loss"]
    # new items are encoded by Eq. 1-2: a fitted item maps to its pre-resolution codes
    loaded = load_tokenizer(tokenizer.save(tmp_path / "tok"))
    assert torch.equal(loaded.codes, tokenizer.codes)
    with pytest.warns(SIDConflictWarning):  # these "new" items are old ones
        assert torch.equal(tokenizer.encode_new(x[:20]), tokenizer.codes_before_resolution[:20])
        assert torch.equal(loaded.encode_new(x[:20]), tokenizer.encode_new(x[:20]))


def test_fit_is_reproducible_from_its_seed():
    x = _clustered()
    first, second = (
        BehaviorCodebookTokenizer(levels=2, codebook_size=32, epochs=5, llm_alignment=False)
        for _ in range(2)
    )
    first.fit(x, seed=3)
    second.fit(x, seed=3)
    assert torch.equal(first.codes, second.codes)


def test_llm_alignment_needs_targets_and_the_ablation_does_not():
    x = _clustered(n=100)
    with pytest.raises(ValueError, match="llm_targets"):
        BehaviorCodebookTokenizer(levels=2, codebook_size=16, epochs=1).fit(x)
    with pytest.raises(ValueError, match=r"n_items=100"):
        BehaviorCodebookTokenizer(levels=2, codebook_size=16, epochs=1).fit(
            x, llm_targets=torch.zeros(99, 4)
        )
    ablation = BehaviorCodebookTokenizer(levels=2, codebook_size=16, epochs=1, llm_alignment=False)
    assert not ablation.needs_llm_targets
    ablation.fit(x)
    assert ablation.model.projection is None


def test_the_encoder_decoder_ablation_learns_to_reconstruct(tmp_path):
    x = _clustered()
    tokenizer = BehaviorCodebookTokenizer(
        levels=2,
        codebook_size=32,
        epochs=40,
        encoder_decoder=True,
        on_overflow="suffix",
        llm_alignment=False,
        encoder_layers=[32],
        code_dim=8,
        lr=3e-3,
    )
    tokenizer.fit(x)
    history = tokenizer.stats()["fit"]["history"]
    assert history[-1]["reconstruction_loss"] < 0.9 * history[0]["reconstruction_loss"]
    assert tokenizer.model.codebooks[0].shape[1] == 8
    loaded = load_tokenizer(tokenizer.save(tmp_path / "ed"))
    with pytest.warns(SIDConflictWarning):
        assert torch.equal(loaded.encode_new(x[:10]), tokenizer.encode_new(x[:10]))


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValueError, match="residual"):
        BehaviorCodebookTokenizer(residual="squared")
    with pytest.raises(ValueError, match="distance"):
        BehaviorCodebookTokenizer(distance="dot")
    with pytest.raises(ValueError, match="allow only 16 distinct"):
        BehaviorCodebookTokenizer(levels=2, codebook_size=4, llm_alignment=False).fit(
            torch.randn(20, 3)
        )

"""The one residual quantiser that RQ-VAE, the behaviour codebook, TTDS and residual k-means share."""

from __future__ import annotations

import warnings

import pytest
import torch

from semrec.tokenizers.behavior_codebook import BehaviorCodebook
from semrec.tokenizers.distances import nearest, pairwise_distances, row_distances
from semrec.tokenizers.quantizer import ResidualQuantizer, upgrade_codebook_keys
from semrec.tokenizers.rqkmeans import ResidualKMeans, RQKMeansTokenizer
from semrec.tokenizers.rqvae import RQVAE
from semrec.tokenizers.ttds import TTDSTokenizer


def set_codebooks(quantizer: ResidualQuantizer, *codebooks: list[list[float]]) -> None:
    with torch.no_grad():
        for target, values in zip(quantizer.codebooks, codebooks):
            target.copy_(torch.tensor(values))


def test_each_level_picks_the_code_nearest_its_residual_and_decode_sums_them() -> None:
    quantizer = ResidualQuantizer([2, 2], 2)
    set_codebooks(quantizer, [[0.0, 0.0], [10.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]])
    z = torch.tensor([[9.0, 1.2], [0.5, -0.8]])
    codes, error = quantizer.encode(z)
    assert codes.tolist() == [[1, 0], [0, 1]]
    # summed distances: level 0 (1 + 1.44, 0.25 + 0.64), level 1 (1 + 0.04, 0.25 + 0.04)
    assert torch.allclose(error, torch.tensor([2.44 + 1.04, 0.89 + 0.29]))
    assert torch.allclose(quantizer.decode(codes), torch.tensor([[10.0, 1.0], [0.0, -1.0]]))
    assert torch.equal(quantizer.quantize(z).codes, codes)


def test_the_abs_residual_rule_is_undone_by_the_signs() -> None:
    quantizer = ResidualQuantizer([2, 2], 2, residual="abs")
    set_codebooks(quantizer, [[0.0, 0.0], [4.0, 4.0]], [[1.0, 1.0], [3.0, 0.0]])
    z = torch.tensor([[3.0, 5.0]])  # level 0: code 1, |(-1, 1)| = (1, 1) -> level 1: code 0
    result = quantizer.quantize(z)
    assert result.codes.tolist() == [[1, 0]]
    assert torch.allclose(result.quantized(), z)  # (4, 4) + (-1, +1) * (1, 1)
    with pytest.raises(ValueError, match="abs"):
        quantizer.decode(result.codes)


def test_the_vq_loss_is_the_codebook_term_plus_beta_commitment_with_stop_gradients() -> None:
    quantizer = ResidualQuantizer([2, 2], 2)
    set_codebooks(quantizer, [[0.0, 0.0], [2.0, 0.0]], [[0.0, 0.5], [0.0, -0.5]])
    z = torch.tensor([[1.5, 0.4], [0.2, -0.1]], requires_grad=True)
    result = quantizer.quantize(z)
    beta = 0.25
    loss = result.vq_loss(beta)
    # by hand: level 0 codes (1, 0), residuals (-0.5, 0.4), (0.2, -0.1); level 1 codes (0, 1)
    r0, c0 = z.detach(), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    r1 = r0 - c0
    c1 = torch.tensor([[0.0, 0.5], [0.0, -0.5]])
    expected = (1 + beta) * ((r0 - c0).pow(2).mean() + (r1 - c1).pow(2).mean())
    assert abs(loss.item() - float(expected)) < 1e-6
    loss.backward()
    # the commitment term alone reaches z: beta * d/dz of both levels' mean squared errors
    n_elements = z.numel()
    grad = beta * 2 * ((r0 - c0) + (r1 - c1)) / n_elements
    assert torch.allclose(z.grad, grad, atol=1e-6)
    # the codebook term alone reaches the codebooks, and only the chosen rows
    assert quantizer.codebooks[0].grad is not None
    assert torch.allclose(
        quantizer.codebooks[0].grad[1], -2 * (r0[0] - c0[0]) / n_elements, atol=1e-6
    )


def test_without_beta_nothing_reaches_the_encoder_and_straight_through_passes_z_gradient() -> None:
    quantizer = ResidualQuantizer([3], 2, init_scale=1.0)
    z = torch.randn(5, 2, requires_grad=True)
    result = quantizer.quantize(z)
    result.vq_loss(0.0).backward()
    assert z.grad is None
    z2 = z.detach().clone().requires_grad_(True)
    out = quantizer.quantize(z2).straight_through(z2)
    assert torch.allclose(out, quantizer.decode(result.codes))
    out.sum().backward()
    assert torch.equal(z2.grad, torch.ones_like(z2))


def test_a_level_may_choose_its_codes_by_another_rule() -> None:
    quantizer = ResidualQuantizer([2, 3], 2, init_scale=1.0)
    z = torch.randn(4, 2)
    always_two = lambda distances: torch.full((distances.shape[0],), 2)  # noqa: E731
    result = quantizer.quantize(z, assign={1: always_two})
    assert result.codes[:, 1].tolist() == [2, 2, 2, 2]
    assert torch.equal(result.codes[:, 0], quantizer.encode(z)[0][:, 0])


def test_kmeans_initialisation_reconstructs_separable_clusters_exactly() -> None:
    coarse = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    fine = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.stack([c + f for c in coarse for f in fine])
    quantizer = ResidualQuantizer([3, 2], 2)
    codes = quantizer.init_kmeans(z, seed=3)
    assert len({tuple(row) for row in codes.tolist()}) == 6
    assert torch.equal(quantizer.encode(z)[0], codes)
    assert torch.allclose(quantizer.decode(codes), z, atol=1e-5)


def test_unused_codes_are_moved_onto_the_worst_fitted_rows() -> None:
    quantizer = ResidualQuantizer([3], 1)
    set_codebooks(quantizer, [[0.0], [50.0], [60.0]])
    z = torch.tensor([[0.0], [1.0], [-7.0], [5.0]])  # every row picks code 0
    assert quantizer.reseed_unused_codes(z) == [2]
    assert sorted(quantizer.codebooks[0].detach().flatten().tolist()) == [-7.0, 0.0, 5.0]
    assert quantizer.reseed_unused_codes(z) == [0]  # each code now has a row; nothing moves


def test_cosine_distances_agree_between_the_pairwise_row_and_nearest_forms() -> None:
    torch.manual_seed(0)
    x, codebook = torch.randn(7, 4), torch.randn(5, 4)
    for kind in ("l2", "cosine"):
        pairwise = pairwise_distances(x, codebook, kind)
        index, best = nearest(x, codebook, kind)
        assert torch.equal(index, pairwise.argmin(dim=1))
        assert torch.allclose(best, pairwise.min(dim=1).values, atol=1e-5)
        assert torch.allclose(row_distances(x, codebook[index], kind), best, atol=1e-5)
    with pytest.raises(ValueError, match="distance must be one of"):
        pairwise_distances(x, codebook, "manhattan")


def test_every_residual_method_delegates_to_the_one_quantizer() -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 8)
    rqvae = RQVAE(8, [4, 4], code_dim=4, hidden_layers=(8,))
    behaviour = BehaviorCodebook(8, [4, 4], llm_dim=None)
    ttds = TTDSTokenizer(levels=2, codebook_size=4, code_dim=4, suffix_size=40)
    ttds.initialize(x)
    rqkmeans = RQKMeansTokenizer(levels=2, codebook_size=[4, 16], collision="none")
    rqkmeans.fit(x)
    for owner in (rqvae, behaviour, ttds, rqkmeans.quantizer):
        assert isinstance(owner.quantizer, ResidualQuantizer), type(owner).__name__


def test_models_saved_with_codebooks_on_the_model_still_load() -> None:
    torch.manual_seed(0)

    def build_rqvae() -> RQVAE:
        return RQVAE(6, [3, 3], code_dim=2, hidden_layers=(4,))

    def build_behaviour() -> BehaviorCodebook:
        return BehaviorCodebook(6, [3, 3], llm_dim=5)

    for build in (build_rqvae, build_behaviour):
        model = build()
        state = model.state_dict()
        legacy = {key.replace("quantizer.codebooks", "codebooks"): v for key, v in state.items()}
        assert "codebooks.0" in legacy
        restored = build()
        restored.load_state_dict(legacy)
        for key, value in restored.state_dict().items():
            assert torch.equal(value, state[key]), key
    state = {"tower.codebooks.1": torch.ones(1), "tower.encoder.0.weight": torch.ones(1)}
    upgrade_codebook_keys(state, "tower.")
    assert set(state) == {"tower.quantizer.codebooks.1", "tower.encoder.0.weight"}


def test_the_old_residual_kmeans_import_path_warns_and_still_works() -> None:
    from semrec.tokenizers import kmeans as kmeans_module

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = kmeans_module.ResidualKMeans
    assert moved is ResidualKMeans
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)

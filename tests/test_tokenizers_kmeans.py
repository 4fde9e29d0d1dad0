"""k-means and residual k-means against brute-force and hand-built references."""

from __future__ import annotations

import pytest
import torch

from semrec.tokenizers.kmeans import _update_centroids, kmeans, nearest
from semrec.tokenizers.rqkmeans import ResidualKMeans


def blobs(centres: torch.Tensor, per_blob: int, spread: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(centres), per_blob, centres.shape[1], generator=g) * spread
    return (centres.unsqueeze(1) + noise).reshape(-1, centres.shape[1])


def test_nearest_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(200, 7, generator=g), torch.randn(13, 7, generator=g)
    index, dist = nearest(x, c)
    brute = ((x.unsqueeze(1) - c.unsqueeze(0)) ** 2).sum(-1)
    assert torch.equal(index, brute.argmin(dim=1))
    assert torch.allclose(dist, brute.min(dim=1).values, atol=1e-4)


def test_nearest_breaks_ties_to_lowest_index():
    index, _ = nearest(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert index.tolist() == [0, 0]


def test_kmeans_recovers_separated_blobs():
    centres = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [-10.0, 0, 0]])
    x = blobs(centres, per_blob=40, spread=0.3)
    result = kmeans(x, 4, seed=3)
    labels = result.assignments.view(4, 40)
    assert all(len(set(row.tolist())) == 1 for row in labels)  # each blob is one cluster
    assert len(set(labels[:, 0].tolist())) == 4  # and the blobs are different clusters
    for blob, cluster in enumerate(labels[:, 0].tolist()):
        assert torch.allclose(result.centroids[cluster], x[blob * 40 : (blob + 1) * 40].mean(0))
    assert result.converged


def test_kmeans_ends_at_a_lloyd_fixed_point_and_is_deterministic():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    result = kmeans(x, 8, seed=11, max_iter=500)
    assert result.converged
    brute = ((x.unsqueeze(1) - result.centroids.unsqueeze(0)) ** 2).sum(-1)
    assert torch.equal(result.assignments, brute.argmin(dim=1))
    for k in range(8):
        members = x[result.assignments == k]
        assert len(members) > 0
        assert torch.allclose(result.centroids[k], members.mean(0), atol=1e-5)
    assert result.inertia == pytest.approx(float(brute.min(dim=1).values.sum()), rel=1e-4)
    again = kmeans(x, 8, seed=11, max_iter=500)
    assert torch.equal(again.assignments, result.assignments)
    assert torch.equal(again.centroids, result.centroids)


def test_kmeans_with_fewer_distinct_points_than_k():
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0], [9.0, 1.0]])
    result = kmeans(x, 6, seed=0)
    assignments = result.assignments.tolist()
    assert assignments[0] == assignments[2]
    assert len(set(assignments)) == 3  # one centroid per distinct point, three left unused
    assert result.inertia == 0.0
    assert torch.equal(result.centroids[result.assignments], x)


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    centroids = torch.tensor([[0.0], [50.0], [100.0]])
    assignments = torch.tensor([0, 0, 0])
    distances = torch.tensor([0.0, 1.0, 100.0])  # squared distances to centroid 0
    updated = _update_centroids(x, assignments, distances, centroids)
    assert updated[0].item() == pytest.approx(11 / 3)
    assert updated[1].item() == 10.0  # farthest point
    assert updated[2].item() == 1.0  # next farthest


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="k >= 1"):
        kmeans(torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.zeros(3), 2)


def two_level_points() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16 points = one of 4 far-apart centres + one of 4 small zero-mean offsets."""
    big = torch.tensor([[100.0, 0.0], [0.0, 100.0], [-100.0, 0.0], [0.0, -100.0]])
    small = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [1.0, -2.0], [-1.0, -2.0]])
    points = (big.unsqueeze(1) + small.unsqueeze(0)).reshape(16, 2)
    big_id = torch.arange(4).repeat_interleave(4)
    small_id = torch.arange(4).repeat(4)
    return points, big_id, small_id


def same_partition(codes: torch.Tensor, labels: torch.Tensor) -> bool:
    pairs = set(zip(codes.tolist(), labels.tolist()))
    return len(pairs) == len(set(codes.tolist())) == len(set(labels.tolist()))


def test_residual_kmeans_two_level_hand_example():
    points, big_id, small_id = two_level_points()
    quantizer = ResidualKMeans(2, 4)
    codes = quantizer.fit(points, seed=0)
    assert codes.shape == (16, 2)
    assert same_partition(codes[:, 0], big_id)  # level 1 finds the big centres
    assert same_partition(codes[:, 1], small_id)  # level 2 the shared small offsets
    assert torch.equal(quantizer.encode(points), codes)
    assert torch.allclose(quantizer.decode(codes), points, atol=1e-4)
    errors = [
        float((points - quantizer.decode(codes[:, :level])).pow(2).sum(1).mean())
        for level in range(3)
    ]
    assert errors[0] == pytest.approx(10005.0)  # 100^2 + 1 + 4
    assert errors[1] == pytest.approx(5.0, rel=1e-4)  # only the small offsets remain
    assert errors[2] == pytest.approx(0.0, abs=1e-4)


def test_residual_kmeans_state_dict_round_trip_and_checks():
    points, _, _ = two_level_points()
    quantizer = ResidualKMeans(2, [4, 3])
    quantizer.fit(points, seed=1)
    restored = ResidualKMeans(2, [4, 3])
    restored.load_state_dict(quantizer.state_dict())
    assert torch.equal(restored.encode(points + 0.3), quantizer.encode(points + 0.3))
    with pytest.raises(ValueError, match="codebook.1"):
        ResidualKMeans(2, [4, 5]).load_state_dict(quantizer.state_dict())
    with pytest.raises(ValueError, match="2 sizes but there are 3 levels"):
        ResidualKMeans(3, [4, 5])
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        quantizer.encode(torch.zeros(3, 5))


def test_decode_treats_minus_one_as_absent_level():
    points, _, _ = two_level_points()
    quantizer = ResidualKMeans(2, 4)
    codes = quantizer.fit(points, seed=0)
    partial = codes.clone()
    partial[:, 1] = -1
    assert torch.allclose(quantizer.decode(partial), quantizer.decode(codes[:, :1]))

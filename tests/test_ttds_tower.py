"""The TTDS tower as a residual-quantiser autoencoder (issue #28): gradients stay local,
and the paper's warm-up and joint refreshes keep the codes apart."""

from __future__ import annotations

import torch

from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.sid_reader import LLMSIDReader
from semrec.models.vocabulary import add_sid_tokens
from semrec.tokenizers import TTDSTokenizer
from semrec.tokenizers.collisions import collision_rate
from semrec.tokenizers.quantizer import ResidualQuantizer

READER_WIDTH = 32


def clustered(per_centre: int = 8, dim: int = READER_WIDTH, seed: int = 0) -> torch.Tensor:
    """16 coarse centres, each with the same ``per_centre`` fine offsets: two-level structure
    that residual k-means recovers without a collision, so the tower's codes can too."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(16, 1, dim, generator=g) * 10
    fine = torch.randn(1, per_centre, dim, generator=g) * 1.5
    x = (coarse + fine).reshape(-1, dim)
    return x + torch.randn(x.shape, generator=g) * 0.05


def tower(**params) -> TTDSTokenizer:
    """Three levels of 16 codes: room for 4,096 SIDs, so (as in the paper's catalogues) the
    codes can keep the rows apart and a collapse shows."""
    return TTDSTokenizer(**{"levels": 3, "codebook_size": 16, "suffix_size": 32, **params})


def frozen_reader(tok: TTDSTokenizer, init: str = "mean_resizing") -> LLMSIDReader:
    """The tiny LLM reading the tower's SID tokens, frozen as in the warm-up."""
    hf = tiny_tokenizer()
    model = tiny_llama(len(hf), hidden_size=READER_WIDTH)
    add_sid_tokens(model, hf, tok.token_strings(), init=init, seed=0)
    model.eval().requires_grad_(False)
    levels = [hf.convert_tokens_to_ids(level) for level in tok.level_token_strings()]
    return LLMSIDReader(model, levels[: tok.n_levels])


def grads(tok: TTDSTokenizer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    tok.zero_grad(set_to_none=True)
    loss.backward()
    return {
        name: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in tok.named_parameters()
    }


def test_only_chosen_codes_get_gradient_and_l_id_trains_the_reader_not_the_encoder() -> None:
    torch.manual_seed(0)
    tok = tower()
    tok.initialize(clustered(per_centre=6))
    reader = frozen_reader(tok)
    rows = torch.arange(0, 96, 6)  # 16 rows: most codes of each level go unchosen
    codes = tok.base_codes[rows]

    everything = grads(tok, tok.loss(rows, reader)["total"])
    for level in range(tok.n_levels):
        grad = everything[f"quantizer.codebooks.{level}"]
        unchosen = torch.ones(tok.codebook_size, dtype=torch.bool)
        unchosen[codes[:, level]] = False
        assert unchosen.any()
        assert grad[unchosen].abs().max() == 0, f"level {level}: an unchosen code moved"
        assert grad[~unchosen].abs().sum() > 0

    parts = tok.loss(rows, reader)
    assert parts["id"] > 0 and parts["reconstruction"] > 0
    without_id = grads(tok, parts["total"] - parts["id"])
    for name in everything:
        if name.startswith(("encoder.", "decoder.", "quantizer.")):
            # the encoder learns from reconstruction and commitment alone
            assert torch.allclose(everything[name], without_id[name], atol=1e-7), name


def test_a_local_path_from_l_id_reaches_the_encoder_through_the_chosen_codes_only() -> None:
    torch.manual_seed(0)
    tok = tower(id_to_tower=0.01)
    tok.initialize(clustered(per_centre=6))
    reader = frozen_reader(tok)
    rows = torch.arange(0, 96, 6)
    parts = tok.loss(rows, reader)
    id_only = grads(tok, parts["id"])
    assert id_only["encoder.0.weight"].abs().sum() > 0
    codes = tok.base_codes[rows]
    for level in range(tok.n_levels):
        unchosen = torch.ones(tok.codebook_size, dtype=torch.bool)
        unchosen[codes[:, level]] = False
        assert id_only[f"quantizer.codebooks.{level}"][unchosen].abs().max() == 0


def static_rate(tok: TTDSTokenizer) -> float:
    """Static residual k-means with the tower's sizes on the same standardised inputs."""
    x = (tok.inputs - tok.inputs.mean(dim=0)) / tok.inputs.std(dim=0, unbiased=False)
    static = ResidualQuantizer([tok.codebook_size] * tok.n_levels, x.shape[1])
    return collision_rate(static.init_kmeans(x, tok.seed, max_iter=tok.kmeans_iters))


def check_warm_up(tok: TTDSTokenizer, inputs: torch.Tensor, reader: LLMSIDReader) -> None:
    """The paper's warm-up (lr 1e-3, 50 steps) is accepted and keeps the codes apart."""
    tok.initialize(inputs, reader_dim=READER_WIDTH)
    tok.warm_up(reader, steps=50, lr=1e-3, batch_size=64)
    last = tok.refreshes[-1]
    assert last["accepted"], last
    assert last["collision_rate_before_suffix"] <= static_rate(tok) + 0.05, last
    level_one = tok.base_codes[:, 0].unique().numel() / tok.codebook_size
    assert level_one >= 0.8, f"only {level_one:.0%} of the level-1 codes in use"
    # the refresh records the same static rate beside its own
    assert abs(last["static_collision_rate"] - static_rate(tok)) < 1e-9


def test_the_papers_warm_up_is_accepted_and_collides_about_as_little_as_static_kmeans() -> None:
    tok = tower()
    check_warm_up(tok, clustered(), frozen_reader(tok))


def test_the_warm_up_holds_with_random_sid_rows_and_a_reader_of_another_width() -> None:
    tok = tower()
    inputs = clustered(dim=48)  # e.g. sentence embeddings read by a scratch backbone
    check_warm_up(tok, inputs, frozen_reader(tok, init="random"))
    assert tok.id_head is not None


def test_joint_steps_with_refreshes_are_all_accepted_near_the_static_rate() -> None:
    tok = tower()
    inputs = clustered()
    reader = frozen_reader(tok)
    tok.initialize(inputs, reader_dim=READER_WIDTH)
    tok.warm_up(reader, steps=50, lr=1e-3, batch_size=64)
    optimizer = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=5e-4)
    g = torch.Generator().manual_seed(1)
    for step in range(1, 201):
        rows = torch.randint(tok.n_items, (32,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        tok.loss(rows, reader)["total"].backward()
        optimizer.step()
        if step % 50 == 0:
            assert tok.refresh_codes(step=step) is not None, tok.refreshes[-1]
    joint = [r for r in tok.refreshes if r["step"]]
    assert len(joint) == 4 and all(r["accepted"] for r in joint)
    static = static_rate(tok)
    assert all(r["collision_rate_before_suffix"] <= static + 0.05 for r in joint), joint
    assert collision_rate(tok.base_codes) == joint[-1]["collision_rate_before_suffix"]

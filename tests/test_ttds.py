"""TTDS: the dynamic tokenizer protocol, the TTDS tower, joint training and its tasks."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pytest
import torch

from semrec.config import load_config
from semrec.data.synthetic import load_synthetic
from semrec.factories.decoding import sid_trie
from semrec.models.adapters import apply_lora
from semrec.models.backbone import tiny_llama, tiny_tokenizer
from semrec.models.sid_reader import LLMSIDReader
from semrec.models.vocabulary import add_sid_tokens
from semrec.pipeline import Run
from semrec.prompts.sid_placeholders import SIDPlaceholders
from semrec.tasks import NextUserTask, TaskContext, TaskDataError
from semrec.tasks.high_order import CommentTask, item_audiences
from semrec.tokenizers import SIDConflictWarning, TTDSTokenizer, load_tokenizer

TTDS_TINY = Path(__file__).resolve().parents[1] / "experiments" / "ttds_tiny.yaml"


def clustered(n: int = 40, dim: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(5, dim, generator=g) * 3
    return centres[torch.arange(n) % 5] + torch.randn(n, dim, generator=g) * 0.3


def tower(**params) -> TTDSTokenizer:
    return TTDSTokenizer(**{"levels": 2, "codebook_size": 8, "suffix_size": 16, **params})


# ------------------------------------------------------------------ the tokenizer


def test_the_initial_codes_are_unique_with_the_suffix_and_the_vocabulary_is_fixed():
    tok = tower()
    assert len(tok.token_strings()) == 8 + 8 + 16  # known before any code exists
    tok.initialize(clustered())
    stats = tok.stats()
    assert stats["collision_rate_after"] == 0.0 and stats["prefix_free"]
    assert stats["levels"] == 3 and tok.token(2, 0) == "<p_0>"  # the paper's suffix token
    lengths = {len(tok.item_tokens(i)) for i in range(tok.n_items)}
    assert lengths <= {2, 3}


def test_a_refresh_reports_the_changed_rows_and_refuses_an_overflowing_suffix():
    # without the codebook upkeep before a refresh, so that the collapse planted below stays
    tok = tower(suffix_size=2, lloyd_iters=0, reseed_dead_codes=False)
    tok.initialize(clustered(n=10))
    before = tok.codes.clone()
    assert tok.refresh_codes(step=1).numel() == 0  # nothing moved
    with torch.no_grad():
        tok.quantizer.codebooks[0][:] = 0.0  # every row to code 0 of level 0, then one level-1 code
        tok.quantizer.codebooks[1][:] = 0.0
    assert tok.refresh_codes(step=2) is None  # 10 rows in one group > suffix_size 2
    assert torch.equal(tok.codes, before)
    assert tok.stats()["fit"]["refreshes"][-1] == {
        "step": 2,
        "collision_rate_before_suffix": 1.0,
        "largest_group": 10,
        "accepted": False,
        "changed_fraction": 0.0,
        "changed_by_level": None,
        "static_collision_rate": tok.static_collision_rate(),
    }


def test_save_and_load_restore_parameters_inputs_and_codes(tmp_path):
    tok = tower()
    tok.initialize(clustered())
    with torch.no_grad():
        tok.quantizer.codebooks[1].add_(0.5)
    tok.refresh_codes(step=3)
    tok.save(tmp_path / "t")
    loaded = load_tokenizer(tmp_path / "t")
    assert isinstance(loaded, TTDSTokenizer)
    assert torch.equal(loaded.codes, tok.codes)
    assert torch.equal(loaded.assign(tok.inputs), tok.assign(tok.inputs))
    assert loaded.stats() == tok.stats()
    copy = tower()  # an uninitialised tokenizer of the same config
    copy.load_state_from(tmp_path / "t")
    assert torch.equal(copy.codes, tok.codes) and copy.refreshes == tok.refreshes


def test_l_id_gradient_reaches_the_lora_weights_and_not_the_tower():
    hf = tiny_tokenizer()
    model = tiny_llama(len(hf), hidden_size=32)
    tok = tower()
    ids = add_sid_tokens(model, hf, tok.token_strings(), init="random", seed=0)
    model = apply_lora(model, ids, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    tok.initialize(clustered(dim=32))
    levels = [hf.convert_tokens_to_ids(level) for level in tok.level_token_strings()[:2]]
    parts = tok.loss(torch.arange(16), LLMSIDReader(model, levels))
    parts["id"].backward()
    assert float(parts["id"].detach()) > 0
    for name, param in tok.named_parameters():  # L_ID trains the reader (issue #28)
        assert param.grad is None or param.grad.abs().sum() == 0, name
    lora = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert lora and all(g is not None and g.abs().sum() > 0 for g in lora.values())


def test_the_forward_pass_of_the_sid_reader_is_exactly_the_chosen_tokens():
    hf = tiny_tokenizer()
    model = tiny_llama(len(hf), hidden_size=32)
    tok = tower()
    add_sid_tokens(model, hf, tok.token_strings(), init="random", seed=0)
    levels = [hf.convert_tokens_to_ids(level) for level in tok.level_token_strings()[:2]]
    codes = torch.tensor([[3, 5], [0, 7]])
    weights = [torch.nn.functional.one_hot(codes[:, m], 8).float() for m in range(2)]
    read = LLMSIDReader(model, levels)(weights)
    token_ids = torch.tensor([[levels[0][3], levels[1][5]], [levels[0][0], levels[1][7]]])
    with torch.no_grad():
        direct = model.model(input_ids=token_ids).last_hidden_state.mean(dim=1)
    assert torch.allclose(read.detach(), direct, atol=1e-5)


# ------------------------------------------------------------------ placeholders


def test_placeholders_resolve_to_the_current_codes_at_every_call():
    tok = tower()
    tok.initialize(clustered())
    placeholders = SIDPlaceholders(tok)
    text = f"history {placeholders.item_sids()[4]}, {placeholders.item_sids()[7]}"
    first = placeholders.resolve(text)
    assert first == f"history {tok.sid_strings()[4]}, {tok.sid_strings()[7]}"
    with torch.no_grad():
        tok.quantizer.codebooks[0].mul_(-1.0)
    tok.refresh_codes(step=1)
    assert placeholders.resolve(text) == f"history {tok.sid_strings()[4]}, {tok.sid_strings()[7]}"
    assert SIDPlaceholders.mentioned([text, "none"]) == {"items": [4, 7], "users": []}
    with pytest.raises(ValueError, match="gives users no SIDs"):
        placeholders.resolve("\u27e6u1\u27e7")


# ------------------------------------------------------------------ tasks


def _context(**extra) -> TaskContext:
    from semrec.data.split import leave_one_out

    dataset = load_synthetic()
    split = leave_one_out(dataset, max_history=5)
    return TaskContext(
        dataset,
        split,
        [f"<i{i}>" for i in range(dataset.num_items)],
        user_sids=[f"<u{u}>" for u in range(dataset.num_users)],
        **extra,
    )


def test_next_user_pairs_follow_each_items_training_audience_in_time():
    ctx = _context()
    audiences = item_audiences(ctx)
    # only training interactions: no user's valid or test item
    held_out = {(ex.user, ex.target) for ex in ctx.split.valid + ctx.split.test}
    assert not any((u, i) in held_out for i, users in enumerate(audiences) for u in users)
    assert sum(map(len, audiences)) == sum(len(s) for s in ctx.split.train_sequences)
    task = NextUserTask(max_users=3)
    samples = task.train_samples(ctx, random.Random(0))
    assert len(samples) == sum(max(0, len(a) - 1) for a in audiences)
    item = next(i for i, a in enumerate(audiences) if len(a) >= 5)
    users = audiences[item]
    expected = task.prompt(ctx, item, users[:4], 0)
    assert ", ".join(f"<u{u}>" for u in users[1:4]) in expected  # the last max_users only
    with pytest.raises(ValueError, match="answer"):
        NextUserTask(user_sid_in_prompt=True)


def test_the_comment_task_names_the_missing_reviews():
    with pytest.raises(TaskDataError, match="user_text"):
        CommentTask().train_samples(_context(), random.Random(0))


# ------------------------------------------------------------------ joint training runs


class TrieMatchesCodes(L.Callback):
    """After every training step: the module's trie spells exactly the current codes."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.checked = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        tokenizer = module.joint.items
        expected = sid_trie(tokenizer, tokenizer.codes, self.hf_tokenizer).sequences
        assert torch.equal(module.current_trie().sequences, expected)
        self.checked += 1


def _fit(run_dir: Path, *overrides: str, callbacks=()) -> Run:
    run = Run(
        load_config(TTDS_TINY, list(overrides)), run_dir, echo=lambda _: None, callbacks=callbacks
    )
    run.fit()
    return run


def test_joint_training_changes_the_codes_and_the_trie_follows(tmp_path):
    checker = TrieMatchesCodes(None)
    run = Run(load_config(TTDS_TINY), tmp_path / "r", echo=lambda _: None, callbacks=[checker])
    original = run.model_stage.build_model

    def build_model():
        built = original()
        checker.hf_tokenizer = built[1]
        return built

    run.model_stage.build_model = build_model
    metrics = run.fit()
    assert checker.checked > 0
    refreshes = run.tokenizer.stats()["fit"]["refreshes"]
    during = [r for r in refreshes if r["step"] and r["accepted"]]
    assert during and any(r["changed_fraction"] > 0 for r in during)
    assert metrics["test/invalid_rate"] == 0.0
    assert "next_user/test/hr@10" in metrics and "next_user_popularity/test/hr@10" in metrics
    # the adapter holds the codes of the weights it was saved with; a read-only run reloads them
    saved = load_tokenizer(tmp_path / "r" / "adapter" / "items")
    assert torch.equal(saved.codes, run.tokenizer.codes)
    test_run = Run(load_config(TTDS_TINY), tmp_path / "r", echo=lambda _: None, read_only=True)
    again = test_run.test()
    assert torch.equal(test_run.tokenizer.codes, saved.codes)
    assert again["test/hr@10"] == metrics["test/hr@10"]


def test_a_run_without_refreshes_keeps_the_static_codes_of_ttss(tmp_path):
    static = _fit(tmp_path / "ttss", "train.joint.enabled=false", "train.epochs=2")
    frozen = _fit(
        tmp_path / "dyn",
        "train.joint.refresh_every_n_steps=null",
        "train.epochs=2",
    )
    assert torch.equal(static.tokenizer.codes, frozen.tokenizer.codes)
    assert torch.equal(static.user_tokenizer.codes, frozen.user_tokenizer.codes)
    # joint training did move the tokenizer's parameters; only the codes were kept
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(static.tokenizer.parameters(), frozen.tokenizer.parameters())
    )
    assert moved


# ------------------------------------------------------------------ LSH


def test_lsh_codes_are_the_sign_bits_of_the_projections():
    from semrec.tokenizers.lsh import hyperplanes, lsh_codes

    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    planes = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one level, bits from x and y
    codes = lsh_codes(x, planes, torch.zeros(2))
    assert codes.tolist() == [[1], [0], [2]]  # bit 0: x > 0, bit 1: y > 0
    assert torch.equal(hyperplanes(4, 2, 3, seed=1), hyperplanes(4, 2, 3, seed=1))


def test_static_lsh_round_trips_and_dynamic_lsh_follows_its_inputs(tmp_path):
    from semrec.tokenizers import DynamicLSHTokenizer, LSHTokenizer

    x = clustered(dim=16)
    static = LSHTokenizer(levels=2, bits=3, seed=1)
    static.fit(x)
    assert static.stats()["collision_rate_after"] == 0.0
    static.save(tmp_path / "lsh")
    with pytest.warns(SIDConflictWarning):  # existing items again: they collide, as they should
        again = load_tokenizer(tmp_path / "lsh").encode_new(x[:5])
    assert torch.equal(again[:, :2], static.codes_before_resolution[:5, :2])

    dynamic = DynamicLSHTokenizer(levels=2, bits=3, seed=1)
    dynamic.initialize(x)
    assert dynamic.warm_up(None, steps=10) == []  # nothing to learn
    assert torch.equal(dynamic.base_codes, static.codes_before_resolution[:, :2])
    dynamic.set_inputs(-x)  # recomputed inputs: the codes follow them at the next refresh
    assert dynamic.refresh_codes(step=5).numel() > 0


def test_compact_windows_of_changing_codes_match_the_static_ones_for_the_same_codes():
    from semrec.data.split import leave_one_out
    from semrec.prompts.compact import CompactSequences

    split = leave_one_out(load_synthetic(), max_history=5)
    table = [[10 + i % 4, 20 + i % 3] for i in range(split.num_items)]
    current = {"table": table}
    args = {"sep_id": 3, "pad_id": 1, "max_history": 5, "window_items": 4}
    static = CompactSequences(split, table, **args)
    dynamic = CompactSequences(split, lambda: current["table"], **args)
    plans = dynamic.epoch_items(0)[:6]
    encoded = dynamic.encode_pending(dynamic.collate(plans))
    expected = static.collate(static.epoch_items(0)[:6])
    for key in ("input_ids", "labels", "attention_mask", "position_ids"):
        assert torch.equal(encoded[key], expected[key]), key
    assert encoded["sid_items"].tolist() == [i for plan in plans for i in plan.items]
    current["table"] = [[10, 20, 30] for _ in table]  # new codes: new tokens, same plans
    assert (
        dynamic.encode_pending(dynamic.collate(plans))["input_ids"].shape[1]
        > (expected["input_ids"].shape[1])
    )

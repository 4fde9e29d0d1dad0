"""Load on ``semrec serve``: cache hits and micro-batched live decoding, against direct calls.

Run: ``python benchmarks/serve_load.py`` (``--dir EXPORT --cache TOPK``, ``--requests``,
``--concurrency``, ``--k``, ``--max-batch``, ``--max-wait-ms``, ``--threads``). Without
``--dir`` it trains the tiny run (3 epochs), exports it and writes its top-K cache in a
temporary directory first (about 30 s). Prints one JSON line per mode.

The app (:func:`semrec.serving.http.create_app`) runs under uvicorn on an ephemeral
loopback port in a thread of this process; ``--concurrency`` httpx clients send the
requests, each as soon as its previous answer came:

- ``cache``: ``--requests`` ``{"user": u, "k": K}`` over the cached users, in turn (only
  with a cache);
- ``live``: ``--requests`` ``{"history": h, "k": K}``, ``h`` 2-8 catalogue items drawn with
  a fixed seed, decoded in micro-batches; its line also has the baseline, the same
  histories decoded one at a time by ``Recommender.recommend`` (no HTTP, same process), and
  the ratio of the two throughputs.

Each mode first sends ``--concurrency`` untimed requests. Latencies are per request as the
client sees them. Client, server and decoder share this process and the machine's CPUs:
the numbers are for loopback on this machine, whose CPU is named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from semrec.machine import cpu_name  # noqa: E402
from semrec.serving.http import create_app, running_in_background  # noqa: E402
from semrec.serving.precache import read_predictions  # noqa: E402
from semrec.serving.recommender import load_recommender  # noqa: E402
from semrec.serving.topk_cache import TopKCache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = ["train.epochs=3", "train.check_val_every_n_epoch=3", "eval.baselines=[]"]


def build_tiny(root: Path, k: int) -> tuple[Path, Path]:
    """Train, export and pre-cache (top ``k``) the tiny run under ``root``."""
    from semrec.config import load_config
    from semrec.pipeline import Run
    from semrec.serving.export import export_run
    from semrec.serving.predict import predict_top_k

    def quiet(_: str) -> None:
        pass

    config = load_config(ROOT / "experiments" / "tiny.yaml", TINY_OVERRIDES)
    Run(config, root / "run", echo=quiet).fit()
    stored = Run(load_config(root / "run" / "config.yaml"), root / "run", read_only=True)
    export_run(stored, root / "export", echo=quiet)
    cache = predict_top_k(stored, k=k, output=root / "topk.jsonl", echo=quiet)
    return root / "export", cache.path


def latency_stats(latencies: list[float], seconds: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests_per_s": round(len(latencies) / seconds, 1),
    }


async def load(url: str, modes: dict[str, list[dict]], concurrency: int, batcher) -> dict:
    """Each mode's bodies sent by ``concurrency`` clients over the same connections, after as
    many untimed ones: latency percentiles, throughput and the live batches it took."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(queue, latencies: list[float]) -> None:
            for body in queue:  # the clients share one iterator: each body is sent once
                start = time.perf_counter()
                response = await client.post("/recommend", json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()

        async def clients(requests: list[dict]) -> tuple[list[float], float]:
            queue, latencies = iter(requests), []
            start = time.perf_counter()
            await asyncio.gather(*(send(queue, latencies) for _ in range(concurrency)))
            return latencies, time.perf_counter() - start

        results = {}
        for mode, bodies in modes.items():
            await clients(bodies[:concurrency])  # warm-up: connections, first decodes
            batches, decoded = batcher.batches, batcher.decoded
            stats = latency_stats(*await clients(bodies))
            batches, decoded = batcher.batches - batches, batcher.decoded - decoded
            mean = round(decoded / batches, 2) if batches else None
            results[mode] = {**stats, "batches": batches, "mean_batch_size": mean}
    return results


def direct(recommender, histories: list[list[str]], k: int) -> dict:
    """The baseline: each history decoded alone by ``recommender.recommend``."""
    latencies = []
    start = time.perf_counter()
    for history in histories:
        began = time.perf_counter()
        recommender.recommend(history, k)
        latencies.append(time.perf_counter() - began)
    return latency_stats(latencies, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="a `semrec export` (default: build the tiny one)")
    parser.add_argument("--cache", help="its top-K file from `semrec predict`")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at a time")
    parser.add_argument("--k", type=int, default=5, help="items per request (default 5)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the live histories")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="semrec-serve-bench-") as scratch:
        directory, cache_path = args.dir, args.cache
        if directory is None:
            directory, cache_path = build_tiny(Path(scratch), args.k)
        recommender = load_recommender(directory)
        cache = TopKCache(cache_path) if cache_path is not None else None
        app = create_app(recommender, cache, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
        n, rng = args.requests, random.Random(args.seed)
        histories = [
            rng.sample(recommender.item_ids, rng.randint(2, min(8, recommender.num_items - 1)))
            for _ in range(n)
        ]
        common = {
            "benchmark": "serve",
            "requests": args.requests,
            "concurrency": args.concurrency,
            "k": args.k,
            "items": recommender.num_items,
            "model": recommender.info.get("run", {}).get("name"),
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
        }
        modes = {}
        if cache is not None:
            users = [record["user"] for record in read_predictions(cache_path)]
            modes["cache"] = [{"user": users[i % len(users)], "k": args.k} for i in range(n)]
        modes["live"] = [{"history": history, "k": args.k} for history in histories]
        with running_in_background(app) as url:
            results = asyncio.run(load(url, modes, args.concurrency, app.state.batcher))
        baseline = direct(recommender, histories, args.k)  # the server is stopped: no sharing
        if "cache" in results:
            print(json.dumps({**common, "mode": "cache", **results["cache"]}), flush=True)
        stats = results["live"]
        live = {
            **common,
            "mode": "live",
            **stats,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "direct_p50_ms": baseline["p50_ms"],
            "direct_requests_per_s": baseline["requests_per_s"],
            "throughput_vs_direct": round(stats["requests_per_s"] / baseline["requests_per_s"], 2),
        }
        print(json.dumps(live), flush=True)


if __name__ == "__main__":
    main()

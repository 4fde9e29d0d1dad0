"""Collaborative baselines on MovieLens-100k against RecBole 1.2.1's numbers on the same split.

Run: ``python benchmarks/cf_ml100k.py`` (``--models sasrec``, ``--seeds 2020 1 2``,
``--verbose``; see ``--help``). One thread by default: about 20 minutes per SASRec fit and
10 per GRU4Rec fit. Data: the ml-100k atomic files embedded in the ``recbole`` wheel,
leave-one-out with histories capped at 20, no filtering; full ranking over all 1,682 items
for all 943 test users, no history masking (RecBole's protocol for sequential models).
Models: popularity, SASRec and GRU4Rec with RecBole's defaults (Adam 1e-3, batch 2048,
CE over all items, early stopping on valid NDCG@10 with patience 10, best weights kept).

Prints one JSON line per model and seed: HR@{1,5,10}, NDCG@{5,10}, the standard error of HR@10
(``sqrt(p (1 - p) / n)``), epochs run and the best one, seconds per epoch and in all, the
CPU, RecBole's reference HR@10 / NDCG@10 and how many standard errors ours lies from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from semrec.data import leave_one_out, load_dataset  # noqa: E402
from semrec.evaluation.baselines import BASELINES  # noqa: E402
from semrec.machine import cpu_name  # noqa: E402

KS = [1, 5, 10]
RECBOLE = {  # RecBole 1.2.1 on this split (see /work/shared/DESIGN.md)
    "popularity": {"hr@10": 0.050, "ndcg@10": 0.023},
    "sasrec": {"hr@10": 0.125, "ndcg@10": 0.060},
    "gru4rec": {"hr@10": 0.121, "ndcg@10": 0.063},
}


def echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_case(name: str, params: dict, split, threads: int) -> dict:
    """Fit (where the model learns) and evaluate one baseline; the JSON row for it."""
    baseline = BASELINES.get(name)(**params)
    start = time.perf_counter()
    metrics = baseline.evaluate(split, {"valid": split.valid, "test": split.test}, KS)
    wall = time.perf_counter() - start
    n = len(split.test)
    hr10 = metrics["test/hr@10"]
    se = math.sqrt(hr10 * (1 - hr10) / n)
    reference = RECBOLE[name]
    row = {
        "model": name,
        **{
            f"test/{key}": round(metrics[f"test/{key}"], 4)
            for key in ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10")
        },
        "test/se_hr@10": round(se, 4),
        "valid/ndcg@10": round(metrics["valid/ndcg@10"], 4),
        "users": n,
        "recbole/hr@10": reference["hr@10"],
        "recbole/ndcg@10": reference["ndcg@10"],
        "hr@10_diff_in_se": round((hr10 - reference["hr@10"]) / se, 2),
        "ndcg@10_diff": round(metrics["test/ndcg@10"] - reference["ndcg@10"], 4),
        "wall_s": round(wall, 1),
        "cpu": cpu_name(),
        "threads": threads,
    }
    if "fit/epochs" in metrics:
        epochs = int(metrics["fit/epochs"])
        row.update(
            epochs=epochs,
            best_epoch=int(metrics["fit/best_epoch"]),
            s_per_epoch=round(baseline.fit_seconds / max(1, epochs), 2),
            params={k: v for k, v in params.items() if k not in ("echo", "num_threads")},
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(RECBOLE), choices=list(RECBOLE))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020], help="one case each")
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--valid-metric", default="ndcg@10")
    parser.add_argument("--verbose", action="store_true", help="one line per validation, on stderr")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = leave_one_out(load_dataset("ml-100k"), max_history=20)
    for name in args.models:
        if name == "popularity":  # nothing learned, nothing seeded
            print(json.dumps(run_case(name, {}, split, args.threads)), flush=True)
            continue
        for seed in args.seeds:
            params = dict(
                seed=seed,
                max_epochs=args.max_epochs,
                patience=args.patience,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                valid_metric=args.valid_metric,
                num_threads=args.threads,
                echo=echo if args.verbose else None,
            )
            print(json.dumps(run_case(name, params, split, args.threads)), flush=True)


if __name__ == "__main__":
    main()

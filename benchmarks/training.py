"""LLM training step: semrec's against a plain Hugging Face + PEFT loop, in one run.

Run: ``python benchmarks/training.py`` (``--steps``, ``--config``, ``--threads``). Prints
one JSON object.

Both loops train the same model (the config's backbone with its LoRA and SID tokens;
default the quickstart's SmolLM2-135M), on the same training pairs (the first
``steps x batch_size`` pairs of the quickstart's epoch 0), with the same batch size,
optimizer (AdamW) and precision (the config's ``train.precision``, resolved for this
machine). They differ only in what semrec changes:

- ``plain``: the usual fine-tuning loop: batches in the epoch's order, padded to the
  batch's longest pair, ``model(**batch).loss`` (logits at every position);
- ``semrec``: :func:`semrec.data.datamodule.epoch_batches` with length bucketing, and
  :func:`semrec.models.loss.response_loss` (the output layer only at labelled positions).

Each loop first runs ``--warmup`` untimed steps, then the timed ones; the two loops
alternate ``--repeats`` times from the same initial weights and each reports its best
time. The rates count useful tokens only: ``real`` tokens are the non-padding ones,
``labelled`` the response tokens (neither padding nor ignored by the loss), each counted
over the loop's own timed batches (its warm-up batches are other pairs of the same set).
The CPU is named in the output: the ratio depends on it (AMX-BF16 or not).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from machine import cpu_name, has_amx_bf16  # noqa: E402  (benchmarks/machine.py)

from semrec.config import load_config  # noqa: E402
from semrec.data.datamodule import epoch_batches  # noqa: E402
from semrec.models.loss import response_loss  # noqa: E402
from semrec.models.prompting import IGNORE_INDEX  # noqa: E402
from semrec.pipeline import Run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_loop(model, batches, loss_fn, autocast: bool, warmup: int) -> float:
    """Seconds for the timed batches of one training loop (after ``warmup`` steps)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    start = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def hf_loss(model, batch) -> torch.Tensor:
    return model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config(
        args.config, [f"run_dir={ROOT / 'runs' / 'bench_training'}", *args.overrides]
    )
    run = Run(config, echo=lambda line: print(line, file=sys.stderr))
    model, hf_tokenizer, _ = run.build_model()
    training = run.datamodule(hf_tokenizer).training
    size = config.train.batch_size
    pairs = list(training.epoch_items(0))[: (args.steps + args.warmup) * size]
    if len(pairs) < (args.steps + args.warmup) * size:
        raise SystemExit(f"the epoch has only {len(pairs)} pairs; lower --steps")
    plain_batches = [training.collate(pairs[i : i + size]) for i in range(0, len(pairs), size)]
    order = epoch_batches([len(ids) for ids, _ in pairs], size, config.seed)
    semrec_batches = [training.collate([pairs[i] for i in batch]) for batch in order]
    precision = run.precision
    autocast = precision == "bf16-mixed"
    if precision not in ("32", "bf16-mixed"):
        raise SystemExit(f"train.precision {precision!r}: this benchmark runs 32 or bf16-mixed")

    def useful(batches, start: int) -> dict[str, int]:
        timed = batches[start:]
        return {
            "real": int(sum(b["attention_mask"].sum() for b in timed)),
            "labelled": int(sum((b["labels"] != IGNORE_INDEX).sum() for b in timed)),
            "padded": int(sum(b["input_ids"].numel() for b in timed)),
        }

    initial = copy.deepcopy({n: p.detach().clone() for n, p in model.named_parameters()})
    times: dict[str, list[float]] = {"plain": [], "semrec": []}
    for _ in range(args.repeats):
        for name, batches, loss_fn in (
            ("plain", plain_batches, hf_loss),
            ("semrec", semrec_batches, response_loss),
        ):
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(initial[n])
            times[name].append(run_loop(model, batches, loss_fn, autocast, args.warmup))

    result = {
        "benchmark": "training_step",
        "cpu": cpu_name(),
        "amx_bf16": has_amx_bf16(),
        "threads": torch.get_num_threads(),
        "backbone": config.model.backbone,
        "precision": precision,
        "batch_size": size,
        "timed_steps": args.steps,
        "repeats": args.repeats,
    }
    for name, batches in (("plain", plain_batches), ("semrec", semrec_batches)):
        seconds = min(times[name])
        counts = useful(batches, args.warmup)
        result[name] = {
            "seconds": round(seconds, 3),
            "real_tokens_per_s": round(counts["real"] / seconds, 1),
            "labelled_tokens_per_s": round(counts["labelled"] / seconds, 1),
            "padding_fraction": round(1 - counts["real"] / counts["padded"], 3),
            "all_seconds": [round(t, 3) for t in times[name]],
        }
    result["ratio_real_tokens_per_s"] = round(
        result["semrec"]["real_tokens_per_s"] / result["plain"]["real_tokens_per_s"], 3
    )
    result["ratio_labelled_tokens_per_s"] = round(
        result["semrec"]["labelled_tokens_per_s"] / result["plain"]["labelled_tokens_per_s"], 3
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What training a TTDS tokenizer with the LLM costs per step, against static SIDs, in one run.

Run: ``python benchmarks/joint_step.py`` (``--config``, ``--steps``, ``--threads``, config
overrides). Prints one JSON object.

Both loops train the same model (the config's backbone, LoRA and SID tokens; default the
TTDS config's SmolLM2-135M) on the same batches of the config's epoch 0, tokenized with
the same codes, with the same optimizer (AdamW) and precision:

- ``static``: the LLM's loss only (what TTSS trains);
- ``joint``: the LLM's loss plus ``alpha * L_DM`` over the rows each batch mentions, the
  tokenizer's parameters in the optimizer too (what TTDS trains between refreshes).

The loops alternate ``--repeats`` times from the same initial weights; each reports its
best time over the timed steps. Separately it times one refresh of every tower (re-derive
all codes) and one recomputation of their inputs by the backbone (Eq. 6), the two periodic
costs, which ``train.joint.refresh_every_n_steps`` and ``recompute_inputs_every_n_steps``
spread over their intervals. The warm-up is skipped (``train.joint.warmup_steps=0``): it is
a one-off cost, not a per-step one. The CPU is named: ratios depend on it.
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

from semrec.config import load_config  # noqa: E402
from semrec.factories.joint import representer  # noqa: E402
from semrec.factories.training import resolve_precision  # noqa: E402
from semrec.machine import cpu_name, has_amx_bf16  # noqa: E402
from semrec.models.loss import response_loss  # noqa: E402
from semrec.pipeline import Run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed_loop(model, joint, batches, *, with_joint: bool, autocast: bool, warmup: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if with_joint and joint.trainable_parameters():
        groups.append({"params": joint.trainable_parameters(), "lr": joint.schedule.lr})
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    model.train()
    start = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = response_loss(model, batch)
            if with_joint:
                loss = loss + joint.loss(batch, model, step=1)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "ttds_ml100k.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(
        args.config,
        [
            f"run_dir={ROOT / 'runs' / 'bench_joint_step'}",
            "train.joint.warmup_steps=0",
            *args.overrides,
        ],
    )
    run = Run(config, echo=lambda line: print(line, file=sys.stderr))
    model, hf_tokenizer, _ = run.build_model()
    joint = run.tokenizers.prepare_joint(model, hf_tokenizer)
    if joint is None:
        raise SystemExit(f"{args.config}: no tokenizer is trained with the LLM (train.joint)")
    training = run.model_stage.datamodule(hf_tokenizer).training
    size, needed = config.train.batch_size, (args.steps + args.warmup)
    items = list(training.epoch_items(0))[: needed * size]
    if len(items) < needed * size:
        raise SystemExit(f"the epoch has only {len(items)} items; lower --steps")
    batches = [
        training.encode_pending(training.collate(items[i : i + size]))
        for i in range(0, len(items), size)
    ]
    precision = resolve_precision(config.train)
    if precision not in ("32", "bf16-mixed"):
        raise SystemExit(f"train.precision {precision!r}: this benchmark runs 32 or bf16-mixed")
    autocast = precision == "bf16-mixed"

    def snapshot():
        return copy.deepcopy(
            {
                n: p.detach().clone()
                for n, p in [*model.named_parameters(), *joint.named_parameters()]
            }
        )

    initial = snapshot()
    parameters = dict([*model.named_parameters(), *joint.named_parameters()])
    times: dict[str, list[float]] = {"static": [], "joint": []}
    for _ in range(args.repeats):
        for name in ("static", "joint"):
            with torch.no_grad():
                for n, p in parameters.items():
                    p.copy_(initial[n])
            times[name].append(
                timed_loop(
                    model,
                    joint,
                    batches,
                    with_joint=name == "joint",
                    autocast=autocast,
                    warmup=args.warmup,
                )
            )
    static, joint_s = min(times["static"]) / args.steps, min(times["joint"]) / args.steps
    tokenizers = joint.tokenizers
    result = {
        "benchmark": "joint_step",
        "cpu": cpu_name(),
        "amx_bf16": has_amx_bf16(),
        "threads": torch.get_num_threads(),
        "config": Path(args.config).name,
        "backbone": config.model.backbone,
        "precision": precision,
        "batch_size": size,
        "towers": sorted(tokenizers),
        "rows_per_step": config.train.joint.rows_per_step,
        "timed_steps": args.steps,
        "static_s_per_step": round(static, 3),
        "joint_s_per_step": round(joint_s, 3),
        "ratio_joint_to_static": round(joint_s / static, 3),
        "all_seconds": times,
        "refresh_s": {
            name: seconds(lambda t=tok: t.refresh_codes(step=1)) for name, tok in tokenizers.items()
        },
    }
    if config.train.joint.inputs == "backbone":
        represent = representer(config, hf_tokenizer)

        def recompute() -> None:
            for name, texts in run.tokenizers.joint_texts().items():
                tokenizers[name].set_inputs(represent(model, texts))

        result["recompute_inputs_s"] = seconds(recompute)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

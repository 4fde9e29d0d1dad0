"""LLM training step: a plain HF + PEFT loop, semrec's text step and its windows, in one run.

Run: ``python benchmarks/training.py`` (``--steps``, ``--config``, ``--threads``,
``--keep-layers``). Prints one JSON object.

Every case trains the config's backbone (default the quickstart's SmolLM2-135M) with its
LoRA and SID tokens, with the same batch size, optimizer (AdamW) and precision (the
config's ``train.precision``, resolved for this machine), on the same users' training
prefixes. They differ only in what semrec changes:

- ``plain``: the usual fine-tuning loop over text prompts (``model.prompt_format: text``):
  batches in the epoch's order, padded to the batch's longest pair, ``model(**batch).loss``
  (logits at every position); one prompt is one target;
- ``text``: the same pairs through :func:`semrec.prompts.datamodule.epoch_batches` (length
  bucketing) and :func:`semrec.models.loss.response_loss` (the output layer only at
  labelled positions);
- ``windows``: ``model.prompt_format: compact``: one window of a user's sequence scores
  up to ``model.compact_window`` targets in one pass (``semrec.prompts.compact``);
- ``text_packed``: the same pairs packed into sequences of ``--pack-tokens`` tokens
  (``train.pack_tokens``: each pair attends only to itself), ``--pack-batch`` packs a step;
- ``windows_keep_N``: the same windows on the backbone's first ``N`` layers
  (``model.keep_layers``), for each ``--keep-layers`` value;
- ``windows_keep_N_upper_lora``: those windows with LoRA only in the upper half of the
  layers and the SID rows frozen at their item-text initialisation (``model.lora.layers``,
  ``model.lora.new_tokens: frozen``, ``model.semantic_init``), so the backward pass stops
  at the middle (with the SID softmax);
- ``..._sid_softmax``: each windows case with the training softmax over the SID tokens only
  (``train.softmax: sid_tokens``: the output layer computes 768 rows instead of 49k).

Each case first runs ``--warmup`` untimed steps, then the timed ones; cases alternate
``--repeats`` times from their initial weights and each reports its best time. The rates
count useful work over the case's own timed batches: ``targets`` are the items whose SID
is learnt (one per text pair, every target of a window), ``labelled`` tokens the ones the
loss scores, ``real`` tokens the non-padding ones. The CPU is named in the output: ratios
depend on it (AMX-BF16 or not).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from semrec.config import load_config  # noqa: E402
from semrec.factories.training import resolve_precision  # noqa: E402
from semrec.machine import cpu_name, has_amx_bf16  # noqa: E402
from semrec.models.loss import response_loss  # noqa: E402
from semrec.models.prompting import IGNORE_INDEX  # noqa: E402
from semrec.pipeline import Run  # noqa: E402
from semrec.prompts.datamodule import epoch_batches  # noqa: E402

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


def batch_counts(batch) -> dict[str, int]:
    mask = batch["attention_mask"]
    real = int(batch["tokens"]) if "tokens" in batch else int(mask.sum())
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    targets = int(batch["examples"]) if "examples" in batch else batch["input_ids"].shape[0]
    return {
        "real": real,
        "labelled": labelled,
        "targets": targets,
        "padded": batch["input_ids"].numel(),
    }


def build(config_path: str, overrides: list[str]):
    """(model, training source, precision, config, SID token ids) of the config with
    ``overrides``."""
    config = load_config(config_path, [f"run_dir={ROOT / 'runs' / 'bench_training'}", *overrides])
    run = Run(config, echo=lambda line: print(line, file=sys.stderr))
    model, hf_tokenizer, sid_ids = run.build_model()
    training = run.model_stage.datamodule(hf_tokenizer).training
    return model, training, resolve_precision(config.train), config, sid_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--window", type=int, default=32, help="model.compact_window")
    parser.add_argument(
        "--keep-layers", default="8", help="comma-separated model.keep_layers cases ('' for none)"
    )
    parser.add_argument("--pack-tokens", type=int, default=512, help="train.pack_tokens")
    parser.add_argument("--pack-batch", type=int, default=2, help="packs per step")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=4")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    needed = args.steps + args.warmup
    text = [
        "model.prompt_format=text",
        "model.keep_layers=null",
        "model.compact_instruction=null",
        "model.compact_title_tokens=0",
        "train.max_train_samples=2000",  # the pairs are a random sample of all prefixes
        "train.distill=null",  # distillation needs windows (and is not what is timed here)
        *args.overrides,
    ]
    model, training, precision, config, _ = build(args.config, text)
    size = config.train.batch_size
    pairs = list(training.epoch_items(0))[: needed * size]
    if len(pairs) < needed * size:
        raise SystemExit(f"the epoch has only {len(pairs)} pairs; lower --steps")
    cases = {
        "plain": (
            model,
            [training.collate(pairs[i : i + size]) for i in range(0, len(pairs), size)],
            hf_loss,
        ),
        "text": (
            model,
            [
                training.collate([pairs[i] for i in batch])
                for batch in epoch_batches([len(ids) for ids, _ in pairs], size, config.seed)
            ],
            response_loss,
        ),
    }
    # the same sample of pairs, packed (train.pack_tokens), through the text source itself
    _, packed, _, _, _ = build(args.config, [*text, f"train.pack_tokens={args.pack_tokens}"])
    packs = list(packed.epoch_items(0))
    order = epoch_batches([packed.length(p) for p in packs], args.pack_batch, config.seed)
    cases["text_packed"] = (
        model,
        [packed.collate([packs[i] for i in batch]) for batch in order[:needed]],
        response_loss,
    )
    depths = [None] + [int(n) for n in args.keep_layers.split(",") if n.strip()]
    for depth in depths:
        windowed = [
            "model.prompt_format=compact",
            f"model.compact_window={args.window}",
            f"model.keep_layers={'null' if depth is None else depth}",
            *args.overrides,
        ]
        model_w, windows, _, _, sid_ids = build(args.config, windowed)
        items = list(windows.epoch_items(0))
        order = epoch_batches([windows.length(w) for w in items], size, config.seed)[:needed]
        batches = [windows.collate([items[i] for i in batch]) for batch in order]
        name = "windows" if depth is None else f"windows_keep_{depth}"
        cases[name] = (model_w, batches, response_loss)
        # the same windows with the softmax over the SID tokens only (train.softmax)
        output_ids = torch.tensor(sorted(sid_ids))
        cases[f"{name}_sid_softmax"] = (
            model_w,
            batches,
            functools.partial(response_loss, output_ids=output_ids),
        )
        if depth is None:
            continue
        # LoRA only in the upper half, SID rows frozen: nothing below the middle trains
        upper = [
            *windowed,
            f"model.lora.layers=[{','.join(str(n) for n in range(depth // 2, depth))}]",
            "model.lora.new_tokens=frozen",
            # frozen rows must start apart (from text), or every SID scores the same
            "model.semantic_init.enabled=true",
            "model.semantic_init.source=item_texts",
        ]
        model_u, _, _, _, _ = build(args.config, upper)
        cases[f"{name}_upper_lora"] = (
            model_u,
            batches,
            functools.partial(response_loss, output_ids=output_ids),
        )
    autocast = precision == "bf16-mixed"
    if precision not in ("32", "bf16-mixed"):
        raise SystemExit(f"train.precision {precision!r}: this benchmark runs 32 or bf16-mixed")

    initial = {
        name: {n: p.detach().clone() for n, p in case[0].named_parameters()}
        for name, case in cases.items()
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (case_model, batches, loss_fn) in cases.items():
            with torch.no_grad():
                for n, p in case_model.named_parameters():
                    p.copy_(initial[name][n])
            times[name].append(run_loop(case_model, batches, loss_fn, autocast, args.warmup))

    result = {
        "benchmark": "training_step",
        "cpu": cpu_name(),
        "amx_bf16": has_amx_bf16(),
        "threads": torch.get_num_threads(),
        "backbone": config.model.backbone,
        "precision": precision,
        "batch_size": size,
        "compact_window": args.window,
        "timed_steps": args.steps,
        "repeats": args.repeats,
    }
    for name, (_, batches, _) in cases.items():
        seconds = min(times[name])
        counts = {k: 0 for k in ("real", "labelled", "targets", "padded")}
        for batch in batches[args.warmup :]:
            for key, value in batch_counts(batch).items():
                counts[key] += value
        result[name] = {
            "seconds": round(seconds, 3),
            "targets_per_s": round(counts["targets"] / seconds, 2),
            "real_tokens_per_s": round(counts["real"] / seconds, 1),
            "labelled_tokens_per_s": round(counts["labelled"] / seconds, 1),
            "padding_fraction": round(1 - counts["real"] / counts["padded"], 3),
            "all_seconds": [round(t, 3) for t in times[name]],
        }
    base = result["plain"]["targets_per_s"]
    result["targets_per_s_vs_plain"] = {
        name: round(result[name]["targets_per_s"] / base, 2) for name in cases
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

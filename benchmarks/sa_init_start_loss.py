"""Loss of the untrained model by SA-Init depth (TS-Rec Figure 4's starting point).

Builds the model of a TS-Rec config (SID tokens, SA-Init, LoRA at its zero init) once per
depth, default init included, and prints as JSON the mean loss per response token on the
same random sample of training pairs of each task (with the config's templates). No training happens::

    python benchmarks/sa_init_start_loss.py --config experiments/tsrec_ml100k.yaml
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile

import torch

from semrec.config import load_config
from semrec.pipeline import Run
from semrec.tasks import TASKS


def response_loss(model, formatter, samples, batch_size: int = 16) -> float:
    """Mean cross-entropy per response token (EOS included) under teacher forcing."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            pairs = [
                formatter.encode_pair(s.prompt, s.response)
                for s in samples[start : start + batch_size]
            ]
            batch = formatter.collate_pairs(pairs)
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1]
            target = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"
            ).item()
            tokens += int((target != -100).sum())
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/tsrec_ml100k.yaml")
    parser.add_argument("--tasks", nargs="+", default=["seq", "mut_text2sid"])
    parser.add_argument("--pairs", type=int, default=64, help="sampled pairs per task")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_config(args.config)
    levels = base.items.tokenizer.params.get("levels", 3)
    settings = {"default init": ["model.semantic_init.enabled=false"]}
    for depth in range(1, levels + 1):
        settings[f"SA-Init {depth}"] = [
            "model.semantic_init.enabled=true",
            f"model.semantic_init.depth={depth}",
        ]
    results = {}
    with tempfile.TemporaryDirectory() as run_dir:
        for label, overrides in settings.items():
            run = Run(load_config(args.config, overrides), run_dir, echo=lambda _: None)
            model, hf_tokenizer, _ = run.build_model()
            model.eval()
            formatter = run.model_stage.formatter(hf_tokenizer)
            ctx = run.model_stage.datamodule(hf_tokenizer).ctx
            results[label] = {}
            for name in args.tasks:
                # the config's own task (its templates) when it has one of that name
                task = next((t for t, _ in run.tasks if t.name == name), None) or TASKS.get(name)()
                samples = task.train_samples(ctx, random.Random(0))
                samples = random.Random(1).sample(samples, min(args.pairs, len(samples)))
                results[label][name] = round(response_loss(model, formatter, samples), 3)
    print(
        json.dumps({"config": args.config, "pairs_per_task": args.pairs, "loss": results}, indent=1)
    )


if __name__ == "__main__":
    main()

"""Command line: ``semrec fit|test|tokenize|annotate|predict|add-items|export|serve|compare|convert``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from semrec.config import ConfigError, load_config

EPILOG = """examples:
  semrec fit --config experiments/quickstart.yaml
  semrec fit --config experiments/quickstart.yaml train.epochs=2 tokenizer.params.levels=4
  semrec tokenize --config experiments/quickstart.yaml
  semrec annotate --config experiments/lcrec_ml100k.yaml --kind preference
  semrec annotate --config experiments/tsrec_ml100k.yaml --kind token_semantics
  semrec fit --config experiments/quickstart.yaml --resume   # after a crash
  semrec fit --config experiments/ml100k_scratch.yaml --seeds 0,1,2
  semrec test --run runs/quickstart
  semrec test --run runs/quickstart eval.max_test_users=null eval.exact_ranking=true
  semrec predict --run runs/meituan_ml100k --k 20            # pre-cache every user's top 20
  semrec predict --run runs/meituan_ml100k --k 10 --users 196,186
  semrec predict --run runs/meituan_ml100k --k 20 --workers 2  # 2 processes, one file
  torchrun --nproc-per-node 4 -m semrec.cli predict --run runs/x --k 20 --shard auto
  semrec add-items --run runs/meituan_ml100k --items new_items.json
  semrec export --run runs/quickstart --out exports/quickstart [--merge]
  semrec serve --dir exports/quickstart --cache runs/quickstart/predictions/top20.jsonl --port 8000
  semrec compare --config experiments/tiny.yaml --sweep items.tokenizer.name=rqkmeans,random_ids \\
      --seeds 0,1 --out runs/compare_tiny
  semrec convert --from amazon2018 --path data/amazon --name Beauty --to lcrec_json --out data/beauty
  semrec convert --from amazon2023 --path data/a23 --name All_Beauty --to recbole --out data/rb \\
      --option kcore=10 --option on_bad_line=skip
"""


#: Takes the lock of a directory the command writes, for the rest of the command.
Hold = Callable[[str | Path], None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semrec",
        description="LLM-based generative recommendation with semantic IDs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, needs_config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if needs_config:  # the others name their run with --run; no --run-dir to ignore
            sub.add_argument("--config", "-c", required=True, help="experiment YAML")
            sub.add_argument(
                "--run-dir", help="run directory (default: config run_dir or runs/<name>)"
            )
        sub.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
        return sub

    fit = add("fit", "encode -> tokenize -> train -> test; writes the run directory")
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted training from run_dir/checkpoints (same config)",
    )
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain a run directory whose model was trained with another config, replacing "
        "its adapter and metrics (without it such a fit is refused)",
    )
    fit.add_argument(
        "--seeds",
        type=_seed_list,
        help="run the config once per seed (e.g. 0,1,2) into run_dir/seed-<n>/ and write "
        "seeds.md / seeds.json (mean ± std over seeds) in run_dir",
    )
    tokenize = add("tokenize", "fit only the item tokenizer and print its statistics")
    tokenize.add_argument(
        "--plot",
        action="store_true",
        help="also draw code usage, entropy and collisions to <run>/tokenizer/diagnostics.png",
    )
    annotate = add(
        "annotate",
        "generate LLM-written texts (intentions, preferences, SID token semantics) for tasks",
    )
    annotate.add_argument(
        "--kind", required=True, choices=["intention", "preference", "token_semantics"]
    )
    test = add(
        "test",
        "evaluate a finished run on the test users; overrides may change evaluation only, "
        "and nothing but the metrics files is written",
        needs_config=False,
    )
    test.add_argument("--run", required=True, help="run directory written by `semrec fit`")
    predict = add(
        "predict",
        "pre-cache every (or each given) user's top-K items from a trained run as JSONL "
        "(and Parquet with pyarrow); a killed predict continues where it stopped",
        needs_config=False,
    )
    predict.add_argument("--run", required=True, help="run directory written by `semrec fit`")
    predict.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    predict.add_argument("--users", type=_id_list, help="comma-separated user ids (default: all)")
    predict.add_argument("--users-file", help="file with one user id per line")
    predict.add_argument("--batch-size", type=int, default=32, help="users per beam search")
    predict.add_argument("--output", help="JSONL path (default: <run>/predictions/top<K>.jsonl)")
    predict.add_argument(
        "--keep-seen",
        action="store_true",
        help="allow items the user already interacted with (excluded by default)",
    )
    predict.add_argument(
        "--workers",
        type=int,
        default=1,
        help="predict in this many processes side by side (shards of the users, merged into "
        "one file; each gets cores/N threads)",
    )
    predict.add_argument(
        "--shard",
        type=_shard,
        help="I/N: only shard I of N (0-based) into <output>.shard-I-of-N.jsonl; 'auto' "
        "takes RANK/WORLD_SIZE from torchrun, and rank 0 merges the shards at the end",
    )
    predict.add_argument(
        "--merge-shards",
        type=int,
        metavar="N",
        help="only merge the N finished shard files (of --shard I/N runs) into the output",
    )
    predict.add_argument("--device", help="where the model decodes, e.g. cuda:0 (default: cpu)")
    predict.add_argument(
        "--threads", type=int, help="torch threads (default: the run's train.num_threads)"
    )
    add_items = add(
        "add-items",
        "give new items SIDs from the trained tokenizer (no retraining) so that a trained "
        "run can recommend them",
        needs_config=False,
    )
    add_items.add_argument("--run", required=True, help="run directory written by `semrec fit`")
    add_items.add_argument("--items", required=True, help="JSON list of new item records")
    export = add(
        "export",
        "write a finished run as a directory semrec.load_recommender serves from (adapter or "
        "merged/full model, tokenizer, SID table, trie, semrec.json); overrides may change "
        "evaluation keys (eval.num_beams, ...) only",
        needs_config=False,
    )
    export.add_argument("--run", required=True, help="run directory written by `semrec fit`")
    export.add_argument(
        "--out",
        required=True,
        help="new or empty directory (or an earlier export, with --overwrite)",
    )
    export.add_argument(
        "--merge",
        action="store_true",
        help="merge the LoRA adapter into the backbone and save the full model",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --out (files an export does not write are kept)",
    )
    serve = commands.add_parser(
        "serve",
        help="serve a `semrec export` over HTTP: POST /recommend (cached users, live "
        "histories decoded in micro-batches), GET /health; needs semrec[serve]",
        description="Serve a `semrec export` directory as an HTTP JSON service (FastAPI + "
        'uvicorn): POST /recommend with {"user": ID} answers from the --cache file, with '
        '{"history": [item ids]} by live decoding, batched over concurrent requests; '
        "GET /health.",
    )
    serve.add_argument("--dir", required=True, help="directory written by `semrec export`")
    serve.add_argument("--cache", help="top-K file written by `semrec predict` (JSONL or Parquet)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=2_000_000,
        help="larger request bodies get a 413 before they are read (default 2 MB)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=16, help="live requests per beam search (default 16)"
    )
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a live request waits for batch-mates (default 5 ms)",
    )
    compare = commands.add_parser(
        "compare",
        help="run configs (or one config with sweeps) over seeds; write a table, CSV and plot",
        description="Run every (config variant, seed) cell into OUT/cells/ (finished cells are "
        "skipped, killed ones resume), then write compare.md / compare.csv / compare.png with "
        "mean ± std over seeds and paired significance tests against a reference row.",
    )
    compare.add_argument(
        "--config", "-c", action="append", required=True, help="experiment YAML (repeatable)"
    )
    compare.add_argument(
        "--sweep",
        action="append",
        default=[],
        help="key=v1,v2: one row per value (repeatable: the product of the sweeps)",
    )
    compare.add_argument("--seeds", type=_seed_list, default=[0], help="e.g. 0,1,2 (default 0)")
    compare.add_argument("--out", required=True, help="output directory")
    compare.add_argument(
        "--reference", help="row (or baseline, e.g. sasrec) the others are tested against"
    )
    compare.add_argument(
        "--metrics", help="table metrics, e.g. hr@10,ndcg@10 (default: HR/NDCG at eval.ks)"
    )
    compare.add_argument(
        "--significance",
        default="hr@10,ndcg@10",
        help="metrics of the paired tests (default hr@10,ndcg@10)",
    )
    compare.add_argument(
        "--overlap-k",
        type=int,
        default=10,
        help="k of the hit-overlap table (users hit by one method, the other, both; default 10)",
    )
    compare.add_argument("overrides", nargs="*", help="config overrides for every row")
    convert = commands.add_parser(
        "convert",
        help="load a dataset source and write it as RecBole atomic files, LC-Rec JSON or "
        "MiniOneRec CSV",
        description="Load a dataset source (any DATASET_LOADERS entry, with its options) and "
        "write it in another tool's format; the files appear together or not at all.",
    )
    convert.add_argument("--from", dest="source", required=True, help="dataset source")
    convert.add_argument("--path", help="directory holding the source files")
    convert.add_argument("--name", help="dataset name / category (default: the directory's)")
    convert.add_argument("--to", required=True, choices=["recbole", "lcrec_json", "minionerec_csv"])
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files an earlier conversion left in --out (without it they are refused)",
    )
    convert.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=VALUE",
        help="a loader option (YAML value, repeatable), e.g. kcore=10, dedup=all",
    )
    convert.add_argument(
        "--max-history", type=int, help="minionerec_csv: history items kept per row (default 20)"
    )
    return parser


def _shard(text: str) -> tuple[int, int] | str:
    if text == "auto":
        return text
    try:
        shard, shards = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N such as 0/4, or auto") from None
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"{text!r}: needs 0 <= I < N")
    return shard, shards


def predict(args: argparse.Namespace) -> None:
    """``semrec predict``: one process, ``--workers`` processes, or one shard (``--shard``)."""
    from semrec.serving.predict import merge_predictions, predict_in_workers, predict_top_k

    run = _trained_run(Path(args.run), args.overrides)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    request = {
        "k": args.k,
        "users": _requested_users(args),
        "output": args.output,
        "exclude_seen": not args.keep_seen,
    }
    if args.merge_shards:
        path = merge_predictions(run, args.merge_shards, **request)
        print(f"[predict] merged {args.merge_shards} shards into {path}")
        return
    if args.workers > 1:
        if args.shard is not None:
            raise ValueError("--workers and --shard exclude each other")

        def worker(shard: int, shards: int, threads: int) -> list[str]:
            return [
                *(sys.executable, "-m", "semrec.cli", *args.argv),
                *("--workers", "1", "--shard", f"{shard}/{shards}", "--threads", str(threads)),
            ]

        path = predict_in_workers(run, args.workers, worker, **request)
        print(f"[predict] merged {args.workers} shards into {path}")
        return
    options = {"batch_size": args.batch_size, "device": args.device}
    if args.shard != "auto":
        predict_top_k(run, **request, **options, shard_of=args.shard)
        return
    import os

    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        predict_top_k(run, **request, **options)
        return
    from datetime import timedelta

    # torchrun's environment; the barrier below waits for the slowest shard, however long
    dist.init_process_group(backend="gloo", timeout=timedelta(days=7))
    rank = dist.get_rank()
    if args.device is None and torch.cuda.is_available():
        options["device"] = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    try:
        predict_top_k(run, **request, **options, shard_of=(rank, world))
        dist.barrier()
        if rank == 0:
            path = merge_predictions(run, world, **request)
            print(f"[predict] merged {world} shards into {path}")
    finally:
        dist.destroy_process_group()


def _id_list(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ids like 196,186")
    return ids


def _stored_run(run_dir: Path, overrides: list[str]):
    """A read-only :class:`~semrec.pipeline.Run` of a finished run directory (``semrec test``)."""
    from semrec.pipeline import Run, RunError

    stored_file = run_dir / "config.yaml"
    if not stored_file.is_file():
        raise RunError(f"{run_dir} has no config.yaml: not a semrec run directory")
    return Run(load_config(stored_file, overrides), run_dir, read_only=True)


def _trained_run(run_dir: Path, overrides: list[str]):
    """The :class:`~semrec.pipeline.trained.TrainedRun` of a finished run directory (serving)."""
    from semrec.pipeline.trained import TrainedRun

    return TrainedRun.load(run_dir, overrides)


def _requested_users(args) -> list[str] | None:
    users = list(args.users or [])
    if args.users_file:
        path = Path(args.users_file)
        if not path.is_file():
            raise FileNotFoundError(f"--users-file {path}: not found")
        users += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return users or None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _option(text: str) -> tuple[str, object]:
    """``kcore=10`` -> ("kcore", 10); the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. kcore=10")
    try:
        return key.strip(), yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML") from None


def convert_dataset(args: argparse.Namespace) -> int:
    """``semrec convert``: load ``--from`` (with ``--option``s) and write ``--to`` into ``--out``."""
    from semrec.data.writers import convert

    dataset, paths = convert(
        args.source,
        args.path,
        args.name,
        args.to,
        args.out,
        options=dict(args.option),
        writer_options={} if args.max_history is None else {"max_history": args.max_history},
        overwrite=args.overwrite,
    )
    print(
        f"[convert] {args.source} {dataset.name}: {dataset.num_users} users, "
        f"{dataset.num_items} items, {dataset.num_interactions} interactions -> {args.to}"
    )
    for path in paths:
        print(f"  {path}")
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: expected integers like 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers like 0,1,2")
    return seeds


def fit_seeds(
    config, run_dir: str | None, seeds: list[int], resume: bool, overwrite: bool = False
) -> dict:
    """``semrec fit --seeds``: one run per seed, then the mean ± std table over seeds."""
    from semrec.artifacts import atomic_write, write_json
    from semrec.compare import run_cell
    from semrec.distributed import is_rank_zero
    from semrec.evaluation.seeds import seed_summary, seeds_table
    from semrec.factories.training import multi_process

    if multi_process(config.train):
        raise ValueError(
            "fit --seeds runs its seeds one after another in each process, and the others "
            "would wait on rank 0's baselines and report; with train.devices > 1 run one "
            "`semrec fit ... seed=N` per seed"
        )
    base = Path(run_dir) if run_dir is not None else config.resolved_run_dir()
    per_seed = {}
    for seed in seeds:
        print(f"[seeds] seed {seed} -> {base / f'seed-{seed}'}")
        seeded = config.model_copy(update={"seed": seed})
        seed_dir = base / f"seed-{seed}"
        # --resume continues the seeds a kill interrupted; the others start (or are reused)
        interrupted = resume and any((seed_dir / "checkpoints").glob("*.ckpt"))
        per_seed[seed] = run_cell(seeded, seed_dir, interrupted, overwrite=overwrite)
    if not is_rank_zero():  # another process of a multi-process run: rank 0 reports
        return {}
    summary = seed_summary(per_seed)
    write_json(base / "seeds.json", {"seeds": seeds, "metrics": summary})
    table = seeds_table(summary, config.eval.ks, seeds)
    with atomic_write(base / "seeds.md") as fh:
        fh.write(table + "\n")
    print(table)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # for worker processes
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # bitsandbytes >= 0.49 logs a warning when the optional `kernels` package (fused CPU
        # 4-bit kernels) is absent; it then uses its built-in CPU path, which QLoRA here uses.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if args.command == "convert":  # needs none of the model stack imported below
        from semrec.run_lock import DirectoryInUseError, directory_lock

        try:
            with directory_lock(args.out):
                return convert_dataset(args)
        except DirectoryInUseError as err:
            print(f"semrec: error: {err}", file=sys.stderr)
            return 2
        except (ValueError, KeyError, OSError) as err:
            if args.verbose:
                raise
            print(f"semrec: error: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
    from semrec.pipeline import RunError
    from semrec.run_lock import directory_lock
    from semrec.serving import PredictionError

    if not args.verbose:
        import lightning  # noqa: F401  (sets its loggers to INFO on import; quieten after)

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)

    try:
        with contextlib.ExitStack() as locks:
            return _dispatch(args, lambda directory: locks.enter_context(directory_lock(directory)))
    except (ConfigError, RunError, PredictionError) as err:
        print(f"semrec: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, OSError, RuntimeError, MemoryError) as err:
        if args.verbose:
            raise
        print(f"semrec: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _test(args, hold: Hold) -> None:
    hold(args.run)
    run = _stored_run(Path(args.run), args.overrides)
    run.write_report(run.test())


def _predict(args, hold: Hold) -> None:
    if args.shard is None:  # shards write their own files, side by side by design
        hold(args.run)
    predict(args)


def _add_items(args, hold: Hold) -> None:
    from semrec.serving.new_items import add_items

    hold(args.run)
    add_items(_trained_run(Path(args.run), args.overrides), args.items)


def _export(args, hold: Hold) -> None:
    from semrec.serving.export import export_run

    hold(args.run)
    hold(args.out)
    export_run(
        _trained_run(Path(args.run), args.overrides),
        args.out,
        merge=args.merge,
        overwrite=args.overwrite,
    )


def _serve(args, hold: Hold) -> None:
    from semrec.serving.http import serve

    serve(
        args.dir,
        args.cache,
        args.host,
        args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_request_bytes=args.max_request_bytes,
    )


def _compare(args, hold: Hold) -> None:
    from semrec.compare import compare

    hold(args.out)
    compare(
        args.config,
        args.seeds,
        args.out,
        sweeps=args.sweep,
        overrides=args.overrides,
        metrics=None if args.metrics is None else _names(args.metrics),
        significance_metrics=_names(args.significance),
        reference=args.reference,
        overlap_k=args.overlap_k,
    )


def _new_run(args, hold: Hold):
    """The writable run of ``--config`` (with overrides) in ``--run-dir``, locked."""
    from semrec.pipeline import Run

    run = Run(load_config(args.config, args.overrides), args.run_dir)
    hold(run.run_dir)
    return run


def _fit(args, hold: Hold) -> None:
    if args.seeds:
        config = load_config(args.config, args.overrides)
        hold(args.run_dir or config.resolved_run_dir())
        fit_seeds(config, args.run_dir, args.seeds, args.resume, args.overwrite)
        return
    _new_run(args, hold).fit(resume=args.resume, overwrite=args.overwrite)


def _annotate(args, hold: Hold) -> None:
    _new_run(args, hold).annotate(args.kind)


def _tokenize(args, hold: Hold) -> None:
    run = _new_run(args, hold)
    run.tokenize()
    print(run.tokenizer_report())
    print(f"[tokenize] SID table and stats in {run.run_dir / 'tokenizer'}")
    if args.plot:
        for path in run.plot_tokenizers():
            print(f"[tokenize] diagnostics: {path}")


#: Every command but ``convert`` (which needs none of the model stack): (args, hold) -> None,
#: where ``hold(directory)`` takes the lock of a directory the command writes.
COMMANDS: dict[str, Callable[[argparse.Namespace, Hold], None]] = {
    "fit": _fit,
    "annotate": _annotate,
    "tokenize": _tokenize,
    "test": _test,
    "predict": _predict,
    "add-items": _add_items,
    "export": _export,
    "serve": _serve,
    "compare": _compare,
}


def _dispatch(args, hold: Hold) -> int:
    """Run the command of ``args`` (all but ``convert``) from :data:`COMMANDS`."""
    COMMANDS[args.command](args, hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())

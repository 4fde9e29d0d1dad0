"""Command line: ``semrec fit|test|tokenize --config X.yaml [key.path=value ...]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from semrec.config import ConfigError, load_config

EPILOG = """examples:
  semrec fit --config experiments/quickstart.yaml
  semrec fit --config experiments/quickstart.yaml train.epochs=2 tokenizer.params.levels=4
  semrec tokenize --config experiments/quickstart.yaml
  semrec annotate --config experiments/lcrec_ml100k.yaml --kind preference
  semrec annotate --config experiments/tsrec_ml100k.yaml --kind token_semantics
  semrec test --run runs/quickstart
"""


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
        if needs_config:
            sub.add_argument("--config", "-c", required=True, help="experiment YAML")
        sub.add_argument("--run-dir", help="run directory (default: config run_dir or runs/<name>)")
        sub.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
        return sub

    add("fit", "encode -> tokenize -> train -> test; writes the run directory")
    add("tokenize", "fit only the item tokenizer and print its statistics")
    annotate = add(
        "annotate",
        "generate LLM-written texts (intentions, preferences, SID token semantics) for tasks",
    )
    annotate.add_argument(
        "--kind", required=True, choices=["intention", "preference", "token_semantics"]
    )
    test = add("test", "evaluate a finished run on the test users", needs_config=False)
    test.add_argument("--run", required=True, help="run directory written by `semrec fit`")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from semrec.pipeline import Run, RunError

    if not args.verbose:
        import lightning  # noqa: F401  (sets its loggers to INFO on import; quieten after)

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)

    try:
        if args.command == "test":
            run_dir = Path(args.run)
            if not (run_dir / "config.yaml").is_file():
                raise RunError(f"{run_dir} has no config.yaml: not a semrec run directory")
            config = load_config(run_dir / "config.yaml", args.overrides)
            run = Run(config, run_dir)
            run.write_report(run.test())
            return 0
        config = load_config(args.config, args.overrides)
        run = Run(config, args.run_dir)
        if args.command == "annotate":
            run.annotate(args.kind)
        elif args.command == "tokenize":
            run.write_config()
            print(run.tokenizer_report())
            print(f"[tokenize] SID table and stats in {run.run_dir / 'tokenizer'}")
        else:
            run.fit()
        return 0
    except (ConfigError, RunError) as err:
        print(f"semrec: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"semrec: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

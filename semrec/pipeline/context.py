"""What every stage of a run shares: the config, the run directory, the echo and the timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from semrec.config import MODEL_KEYS, ExperimentConfig
from semrec.distributed import is_rank_zero
from semrec.errors import RunError
from semrec.run_directory import RunDirectory


class RunContext:
    """One run's config and directory, seen the same way by each of its stages.

    ``read_only`` (``semrec test``, serving) writes nothing but outputs and may differ from
    the stored config in evaluation keys only: :attr:`stage_config` is the config the stages
    were made with, which fingerprints use. In a multi-process run only the process of global
    rank zero writes and echoes. Constructing a context seeds torch with ``config.seed`` and
    applies ``train.num_threads``.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        echo: Callable[[str], None] = print,
        *,
        read_only: bool = False,
    ) -> None:
        self.config = config
        self.directory = RunDirectory(run_dir if run_dir is not None else config.resolved_run_dir())
        self.run_dir = self.directory.path
        self.rank_zero = is_rank_zero()
        self.echo = echo if self.rank_zero else _silent
        self.read_only = read_only
        if read_only:
            self.stage_config = self.directory.stored_config(
                config,
                MODEL_KEYS,
                refusal=f"this command only evaluates or serves {self.run_dir}; these "
                "overrides would change what it was trained with (tokenizer, model or training)",
                advice="nothing was written; run `semrec fit` with them into a new --run-dir",
            )
        else:
            self.stage_config = config
            self.directory.check_writable()
        self.timings: dict[str, float] = {}
        torch.manual_seed(config.seed)
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the seconds the block takes as ``timings[name]`` (``time/<name>_s`` in metrics)."""
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)

    def write_config(self) -> None:
        """Write the resolved config into the run directory (rank zero; never when read-only)."""
        if self.read_only:
            raise RunError(f"internal: a read-only run tried to write {self.run_dir}/config.yaml")
        if self.rank_zero:
            self.directory.write_config(self.config)


def _silent(_: str) -> None:
    """The echo of processes other than rank zero (one process reports)."""

"""``semrec predict``: every requested user's top-K items from a trained run, pre-cached.

Each user's prompt is built from their whole interaction history (the last
``dataset.max_history`` items, valid and test targets included: this is serving, after
everything known), exactly as evaluation prompts are built, and decoded by the run's
trie-constrained beam search over the catalogue, items added with ``semrec add-items``
included. Items the user already interacted with are excluded unless ``exclude_seen`` is
off; a user whose beams ran into so many seen items that fewer than K remain is searched
again with twice the beams (up to the catalogue size), so every user gets K items.
Results go through :class:`~semrec.serving.precache.PredictionWriter` (resumable JSONL),
then to Parquet when pyarrow is installed.

Sharded: with ``shard=(i, n)`` a process predicts every n-th requested user from the i-th
into its own shard file (:func:`~semrec.serving.precache.shard_path`);
:func:`predict_in_workers` runs n such processes on this machine and
:func:`~semrec.serving.precache.merge_shards` joins their files into the one file an
unsharded predict writes (each user once, in request order). Under ``torchrun`` each
process takes the shard of its rank (``--shard auto``) and rank zero merges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from semrec.artifacts import content_hash
from semrec.data.split import Example
from semrec.distributed import shard
from semrec.pipeline.trained import TrainedRun, as_trained_run
from semrec.serving.precache import (
    PredictionError,
    PredictionWriter,
    finished_records,
    merge_shards,
    shard_path,
    write_parquet,
)


@dataclass(frozen=True)
class PredictionSummary:
    """What one ``semrec predict`` call did."""

    path: Path
    parquet: Path | None
    users: int  # requested
    written: int  # by this call (the others were already in the file)
    seconds: float

    @property
    def users_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("inf")


def resolve_users(user_ids: Sequence[str], requested: Sequence[str] | None) -> list[int]:
    """Indices of the requested external user ids (all users when None), in request order."""
    if requested is None:
        return list(range(len(user_ids)))
    index = {user: i for i, user in enumerate(user_ids)}
    unknown = [user for user in requested if user not in index]
    if unknown:
        raise ValueError(
            f"--users: {len(unknown)} unknown user id(s), first {unknown[0]!r} "
            f"(the dataset has {len(user_ids)} users, e.g. {user_ids[0]!r})"
        )
    return list(dict.fromkeys(index[user] for user in requested))


def predict_top_k(
    run: TrainedRun,
    *,
    k: int = 10,
    users: Sequence[str] | None = None,
    output: str | Path | None = None,
    batch_size: int = 32,
    exclude_seen: bool = True,
    echo: Callable[[str], None] = print,
    shard_of: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
) -> PredictionSummary:
    """Write the top-``k`` items of ``users`` (external ids; None: all) for a trained ``run``.

    ``shard_of=(i, n)``: only every n-th user from the i-th, into shard ``i``'s file (see
    the module docstring); :func:`merge_shards` joins the n files. ``device``: where the
    model decodes (default: where it was loaded, the CPU).
    """
    run = as_trained_run(run)
    from semrec.factories.decoding import beam_search

    if k < 1 or batch_size < 1:
        raise ValueError(f"--k and --batch-size must be >= 1, got {k} and {batch_size}")
    dataset = run.data.dataset
    item_ids, codes = run.catalogue()
    if k > len(item_ids):
        raise ValueError(f"--k {k} is more than the {len(item_ids)} items of the catalogue")
    model, prompts = run.model, run.prompts
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    trie = run.trie(include_added=True)
    cfg = run.config.eval
    num_beams = max(k, cfg.num_beams)

    def search(beams: int, inputs: dict, exclude: torch.Tensor | None):
        return beam_search(cfg, beams).search(
            model,
            trie,
            inputs["input_ids"],
            inputs["attention_mask"],
            k,
            exclude_items=exclude,
        )

    path = prediction_path(run, k, output)
    meta = prediction_meta(run, k, exclude_seen)
    requested = [dataset.user_index()[user] for user in requested_users(run, users)]
    if shard_of is not None:  # the users the merged file lacks, split the same in every shard
        done = finished_records(path, meta)
        requested = shard([u for u in requested if dataset.user_ids[u] not in done], *shard_of)
        path = shard_path(path, *shard_of)
        meta = {**meta, "shard": list(shard_of)}
    writer = PredictionWriter(path, meta)
    sequences = dataset.sequences()
    pending = writer.pending([dataset.user_ids[u] for u in requested])
    index = dataset.user_index()
    max_history = run.config.dataset.max_history
    echo(
        f"[predict] {len(requested)} users, top {k} of {len(item_ids)} items "
        f"({len(requested) - len(pending)} already in {path})"
    )
    start = time.perf_counter()
    with tqdm(total=len(requested), initial=len(requested) - len(pending), unit="user") as bar:
        for offset in range(0, len(pending), batch_size):
            batch_users = [index[user] for user in pending[offset : offset + batch_size]]
            histories = [tuple(int(i) for i in sequences[u][-max_history:]) for u in batch_users]
            examples = [Example(u, h, h[-1]) for u, h in zip(batch_users, histories)]
            inputs = prompts.collate_prompts(prompts.eval_prompts(examples))
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            exclude = _seen(sequences, batch_users) if exclude_seen else None
            with torch.no_grad():
                items, scores, valid = top_k_with_retries(
                    search, num_beams, len(item_ids), inputs, exclude, k
                )
            records = []
            for row, user in enumerate(batch_users):
                keep = valid[row]
                records.append(
                    {
                        "user": dataset.user_ids[user],
                        "items": [item_ids[i] for i in items[row][keep].tolist()],
                        "scores": [round(s, 6) for s in scores[row][keep].tolist()],
                    }
                )
            writer.write(records)
            bar.update(len(records))
    seconds = time.perf_counter() - start
    parquet = None if shard_of is not None else write_parquet(path)
    summary = PredictionSummary(path, parquet, len(requested), len(pending), seconds)
    echo(
        f"[predict] wrote {summary.written} users in {seconds:.1f} s "
        f"({summary.users_per_second:.2f} users/s) to {path}"
        + (f" and {parquet}" if parquet else " (install pyarrow for a Parquet copy)")
    )
    return summary


def prediction_path(run: TrainedRun, k: int, output: str | Path | None) -> Path:
    """The JSONL file of a predict: ``output``, or ``<run>/predictions/top<k>.jsonl``."""
    return Path(output) if output is not None else run.run_dir / "predictions" / f"top{k}.jsonl"


def prediction_meta(run: TrainedRun, k: int, exclude_seen: bool) -> dict:
    """What a prediction file was made by (its ``.meta.json``); a file is only continued or
    merged for the same."""
    item_ids, codes = run.catalogue()
    return {
        "format": "semrec-topk",
        "model": run.train_fingerprint(),
        "catalogue": content_hash(item_ids, codes.tolist()),
        "k": k,
        "num_beams": max(k, run.config.eval.num_beams),
        "score_mode": run.config.eval.score_mode,
        "exclude_seen": exclude_seen,
    }


def requested_users(run: TrainedRun, users: Sequence[str] | None) -> list[str]:
    """The external ids a predict covers, in order: ``users`` (None: all) that have a history."""
    dataset = run.data.dataset
    sequences = dataset.sequences()
    indices = resolve_users(dataset.user_ids, users)
    return [dataset.user_ids[u] for u in indices if len(sequences[u])]


def predict_in_workers(
    run: TrainedRun,
    workers: int,
    worker_command: Callable[[int, int, int], list[str]],
    *,
    k: int,
    users: Sequence[str] | None,
    output: str | Path | None,
    exclude_seen: bool,
    echo: Callable[[str], None] = print,
) -> Path:
    """Run ``workers`` predict processes (``worker_command(i, n, threads)``: the command line
    of shard ``i`` of ``n`` with that many torch threads) side by side, then merge their
    shards into one file; returns its path.

    Each worker gets an equal share of this machine's cores. A worker that fails leaves its
    shard to be continued by the next call; nothing is merged then.
    """
    import os
    import subprocess

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    echo(f"[predict] {workers} worker processes, {threads} thread(s) each")
    processes = [
        subprocess.Popen(worker_command(i, workers, threads), env=env) for i in range(workers)
    ]
    failed = [i for i, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise PredictionError(
            f"predict worker(s) {failed} of {workers} failed (see their output above); run "
            "the same command again to continue"
        )
    return merge_predictions(
        run, workers, k=k, users=users, output=output, exclude_seen=exclude_seen
    )


def merge_predictions(
    run: TrainedRun,
    shards: int,
    *,
    k: int,
    users: Sequence[str] | None,
    output: str | Path | None,
    exclude_seen: bool,
) -> Path:
    """:func:`merge_shards` for a predict request; a Parquet copy too with pyarrow."""
    path = merge_shards(
        prediction_path(run, k, output),
        shards,
        requested_users(run, users),
        prediction_meta(run, k, exclude_seen),
    )
    write_parquet(path)
    return path


def top_k_with_retries(search, beams: int, catalogue: int, inputs: dict, exclude, k: int):
    """Beam search; users left with fewer than ``k`` items (their beams ran into excluded
    items) are searched again with twice the beams, up to the catalogue size."""
    if exclude is not None:
        exclude = exclude.to(inputs["input_ids"].device)
    result = search(beams, inputs, exclude)
    items, scores, valid = result.items.clone(), result.scores.clone(), result.valid.clone()
    short = (valid.sum(dim=1) < k).nonzero().flatten()
    while short.numel() and beams < catalogue:
        beams = min(2 * beams, catalogue)
        subset = {key: value[short] for key, value in inputs.items()}
        again = search(beams, subset, None if exclude is None else exclude[short])
        items[short], scores[short], valid[short] = again.items, again.scores, again.valid
        short = short[valid[short].sum(dim=1) < k]
    return items, scores, valid


def _seen(sequences, users: list[int]) -> torch.Tensor:
    """Every item each user interacted with, -1 padded [B, M]."""
    width = max(1, max(len(sequences[u]) for u in users))
    out = torch.full((len(users), width), -1, dtype=torch.long)
    for row, user in enumerate(users):
        items = torch.as_tensor(sequences[user], dtype=torch.long)
        out[row, : len(items)] = items
    return out

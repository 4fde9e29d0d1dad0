"""The annotations one run reads or makes: dispatch from ``annotate:`` to requests, store, annotator.

:class:`RunAnnotations` picks the annotator of ``annotate.annotator``, builds the requests
of a kind (user intentions and preferences from the dataset and split; token semantics
from the tokenizer's SID-token clusters, TS-Rec Eq. 6), and either only reads the cache
(training, which must not call an LLM) or asks the annotator for what is missing
(``semrec annotate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from semrec.annotate.annotators import ANNOTATORS
from semrec.annotate.errors import AnnotationError, MissingAnnotations
from semrec.annotate.requests import KINDS as DATASET_KINDS
from semrec.annotate.requests import annotation_keys, annotation_requests
from semrec.annotate.store import AnnotationStore, annotate, load_annotations
from semrec.annotate.token_semantics import KIND as TOKEN_SEMANTICS
from semrec.annotate.token_semantics import (
    parse_token_semantics,
    retry_prompt,
    semantics_table,
    token_semantics_requests,
)
from semrec.config import ExperimentConfig
from semrec.data import RecDataset, Split
from semrec.tokenizers import ItemTokenizer

log = logging.getLogger(__name__)


class RunAnnotations:
    """Annotation tables for one run's data; ``tokenizer`` is asked for only by token semantics.

    ``tokenizer`` is a zero-argument provider so that user annotations never fit one.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        dataset: RecDataset,
        split: Split,
        tokenizer: Callable[[], ItemTokenizer],
        echo: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.split = split
        self.tokenizer = tokenizer
        self.echo = echo

    def token_clusters(self) -> dict[str, list[int]]:
        """TS-Rec Eq. 6 clusters, sampled to ``annotate.token_semantics.items_per_token``."""
        from semrec.tokenizers.clusters import sample_clusters, token_clusters

        tokenizer = self.tokenizer()
        clusters = token_clusters([tokenizer.item_tokens(i) for i in range(tokenizer.n_items)])
        size = self.config.annotate.token_semantics.items_per_token
        return sample_clusters(clusters, size, self.config.seed)

    def table(
        self, kind: str, generate: bool, progress: Callable[[int, int], None] | None = None
    ) -> tuple[dict[str, str] | None, str]:
        """(key -> text, where it came from) for one annotation kind.

        ``generate=False`` only reads the cache and returns ``None`` when something is
        missing; ``generate=True`` asks the annotator for what is missing.
        """
        cfg = self.config.annotate
        annotator = ANNOTATORS.get(cfg.annotator.name)(**cfg.annotator.params)
        is_file = hasattr(annotator, "lookup")
        if hasattr(annotator, "summarize"):  # computes its table from the data, no prompts
            if kind not in annotator.kinds:
                raise AnnotationError(
                    f"annotator {cfg.annotator.name!r} makes only {list(annotator.kinds)} "
                    f"annotations, not {kind!r}"
                )
            table = annotator.summarize(self.dataset, self.token_clusters())
            return table, f"annotator {cfg.annotator.name!r} (computed, not cached)"
        check = None
        requests: dict[str, str] = {}
        if kind == TOKEN_SEMANTICS:
            settings = cfg.token_semantics
            known = set(self.tokenizer().token_strings()) if is_file else None
            if not is_file:
                requests = token_semantics_requests(
                    self.dataset,
                    self.token_clusters(),
                    cfg.templates.get(kind),
                    category=settings.category,
                    max_description_chars=settings.max_description_chars,
                )
            check = partial(parse_token_semantics, min_keywords=settings.min_keywords)
        else:
            known = annotation_keys(kind, self.dataset) if is_file else None
            if not is_file:
                requests = annotation_requests(
                    kind,
                    self.dataset,
                    self.split,
                    cfg.templates.get(kind),
                    cfg.max_requests,
                    self.config.seed,
                )
        store = AnnotationStore(kind, cfg.store_dir)
        where = f"annotator {cfg.annotator.name!r}" if is_file else str(store.path)
        if not generate:
            return load_annotations(kind, requests, annotator, store, known_keys=known), where
        table = annotate(
            kind,
            requests,
            annotator,
            store,
            batch_size=cfg.batch_size,
            progress=progress,
            known_keys=known,
            check=check,
            retry_prompt=retry_prompt,
            max_retries=cfg.max_retries,
            keep_invalid=cfg.keep_invalid,
        )
        return table, where

    def generate(self, kind: str) -> int:
        """Generate (or reuse from the cache) the ``kind`` annotations; returns how many exist."""
        start = time.perf_counter()
        shown = [-1]

        def progress(done: int, total: int) -> None:  # about 20 lines for a whole run
            if done == total or done - shown[0] >= max(1, total // 20):
                shown[0] = done
                self.echo(
                    f"[annotate] {kind}: {done}/{total} ({time.perf_counter() - start:.0f} s)"
                )

        table, where = self.table(kind, generate=True, progress=progress)
        assert table is not None
        self.echo(f"[annotate] {len(table)} {kind} annotations from {where}")
        return len(table)

    def cached_user_annotations(self) -> dict[str, dict[str, str]] | None:
        """The cached user annotations (intention, preference) there are, by kind."""
        tables = {}
        for kind in DATASET_KINDS:
            try:
                table, _ = self.table(kind, generate=False)
            except AnnotationError as err:  # e.g. intentions on a dataset without reviews;
                log.info("no %s annotations: %s", kind, err)  # a task needing them says so
                continue
            if table is not None:
                tables[kind] = table
        return tables or None

    def cached_token_semantics(self) -> tuple[dict[str, Any], str]:
        """SID token -> parsed TS-Rec semantics from the cache, and where they came from.

        Raises :class:`MissingAnnotations` when none are cached or none is usable.
        """
        table, where = self.table(TOKEN_SEMANTICS, generate=False)
        if table is None:
            raise MissingAnnotations(
                "SA-Init (model.semantic_init) and the ts_align_* tasks need token semantics, "
                f"which are not cached yet in {where}; make them with `semrec annotate --config "
                "<your config>.yaml --kind token_semantics`"
            )
        parsed, failed = semantics_table(table, self.config.annotate.token_semantics.min_keywords)
        if not parsed:
            raise MissingAnnotations(
                f"none of the {len(table)} token semantics from {where} is usable"
                + (f" (e.g. {next(iter(failed.items()))})" if failed else "")
                + "; SA-Init and the ts_align_* tasks need descriptions with keywords"
            )
        tokenizer = self.tokenizer()
        used = {t for i in range(tokenizer.n_items) for t in tokenizer.item_tokens(i)}
        message = (
            f"[annotate] token semantics for {len(parsed)} of the {len(used)} SID tokens in use "
            f"(from {where})"
        )
        if failed:
            token, reason = next(iter(failed.items()))
            message += f"; {len(failed)} answers unusable and skipped (e.g. {token}: {reason})"
        self.echo(message)
        return parsed, where

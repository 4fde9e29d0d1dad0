"""``semrec.load_recommender(DIR)``: top-K items for any history, from a ``semrec export``.

The directory holds everything (see :mod:`semrec.serving.export`): the weights, the
Hugging Face tokenizer with the SID tokens, the catalogue with each item's SID token ids
(the rows of the trie), and ``semrec.json``, which says how the run built its prompts and
decoded. Nothing of the original run directory or config file is read.

The prompt of a history is built by the run's own code: the evaluation task's
:meth:`~semrec.tasks.base.RecommendationTask.eval_samples` through the run's
:class:`~semrec.models.prompting.PromptFormatter` (text formats), or
:class:`~semrec.prompts.compact.CompactSequences` (compact format), over a catalogue-only
dataset. Decoding is the run's trie-constrained beam search with the same beams, score
mode and precision, and the retry of ``semrec predict`` when excluded items leave fewer
than K.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semrec.artifacts import read_json
from semrec.config import EvalConfig, ModelConfig
from semrec.data.dataset import RecDataset
from semrec.data.split import Example, Split
from semrec.decoding import SIDTrie
from semrec.factories.decoding import beam_search
from semrec.factories.model import prompt_formatter
from semrec.prompts.compact import CompactSequences
from semrec.prompts.datamodule import TrainingData, padded
from semrec.prompts.task_pairs import TaskPairs
from semrec.serving.predict import top_k_with_retries
from semrec.tasks import TASKS, TaskContext

EXPORT_FORMAT = "semrec-export"
EXPORT_VERSION = 1
MANIFEST = "semrec.json"
CATALOGUE = "catalogue.json"


class ExportFormatError(ValueError):
    """A directory is not a (readable) ``semrec export``."""


class UnknownItemsError(ValueError):
    """A history names item ids the exported catalogue does not have."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: its external id and its score (log-probability of its SID)."""

    item_id: str
    score: float


class Recommender:
    """Top-K items for interaction histories (item ids, oldest first) of an exported run.

    Built by :func:`load_recommender`; the collaborators are the model, the trie of the
    catalogue (row ``i`` = ``item_ids[i]``), the prompt source of the run's format and the
    run's ``eval:`` decoding settings.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        trie: SIDTrie,
        item_ids: Sequence[str],
        prompts: TrainingData,
        decoding: EvalConfig,
        *,
        max_history: int,
        default_k: int = 10,
        info: dict[str, Any] | None = None,
    ) -> None:
        if trie.num_items != len(item_ids):
            raise ValueError(f"the trie has {trie.num_items} items, the catalogue {len(item_ids)}")
        self.model = model
        self.trie = trie
        self.item_ids = list(item_ids)
        self.prompts = prompts
        self.decoding = decoding
        self.max_history = max_history
        self.default_k = default_k
        self.info = dict(info or {})
        self._row = {item: row for row, item in enumerate(self.item_ids)}

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def recommend(
        self,
        history_item_ids: Sequence[str],
        k: int | None = None,
        *,
        exclude_history: bool = True,
    ) -> list[Recommendation]:
        """The top ``k`` items (default: the run's largest ``eval.ks``) after this history
        (external item ids as in the dataset, oldest first; ints are read as strings), best
        first. Items of the history are left out unless ``exclude_history=False`` (fewer than
        ``k`` come back only when fewer items remain); the prompt holds the last
        ``dataset.max_history`` of them, as in the run."""
        return self.recommend_batch([history_item_ids], k, exclude_history=exclude_history)[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        k: int | None = None,
        *,
        exclude_history: bool = True,
    ) -> list[list[Recommendation]]:
        """:meth:`recommend` for several histories in one batched beam search."""
        k = self.default_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > self.num_items:
            raise ValueError(f"k={k} is more than the {self.num_items} items of the catalogue")
        rows = [self._rows(history) for history in histories]
        if not rows:
            return []
        examples = [Example(-1, tuple(r[-self.max_history :]), -1) for r in rows]
        device = next(self.model.parameters()).device
        inputs = self.prompts.collate_prompts(self.prompts.eval_prompts(examples))
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        exclude = padded(rows) if exclude_history else None
        num_beams = max(k, self.decoding.num_beams)

        def search(beams: int, batch: dict, banned: torch.Tensor | None):
            return beam_search(self.decoding, beams).search(
                self.model,
                self.trie,
                batch["input_ids"],
                batch["attention_mask"],
                k,
                exclude_items=banned,
            )

        with torch.no_grad():
            items, scores, valid = top_k_with_retries(
                search, num_beams, self.num_items, inputs, exclude, k
            )
        return [
            [
                Recommendation(self.item_ids[item], score)
                for item, score in zip(
                    items[row][valid[row]].tolist(), scores[row][valid[row]].tolist()
                )
            ]
            for row in range(len(rows))
        ]

    def check_history(self, history: Sequence[str]) -> None:
        """Raise what :meth:`recommend` would raise for ``history`` (``UnknownItemsError``
        naming the unknown ids, ``ValueError`` for an empty one), before any decoding."""
        self._rows(history)

    def _rows(self, history: Sequence[str]) -> list[int]:
        if isinstance(history, (str, bytes)):
            raise TypeError(
                f"a history is a list of item ids, not one string ({history!r}); "
                "recommend_batch takes a list of histories"
            )
        keys = [item if isinstance(item, str) else str(item) for item in history]
        unknown = list(dict.fromkeys(key for key in keys if key not in self._row))
        if unknown:
            shown = ", ".join(
                repr(key[:40] + ("..." if len(key) > 40 else "")) for key in unknown[:10]
            )
            more = f" ({len(unknown)} in total)" if len(unknown) > 10 else ""
            raise UnknownItemsError(
                f"unknown item id(s) {shown}{more}: not in the exported catalogue of "
                f"{self.num_items} items (e.g. {self.item_ids[0]!r})"
            )
        if not keys:
            raise ValueError("a history needs at least one item (the run never saw empty ones)")
        return [self._row[key] for key in keys]


# ---------------------------------------------------------------------- loading


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``semrec.json`` of an export; refuses directories that are not one of this version."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ExportFormatError(f"{directory} has no {MANIFEST}: not a semrec export")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"{path} is not a semrec export manifest")
    if manifest.get("format_version") != EXPORT_VERSION:
        raise ExportFormatError(
            f"{path}: export format version {manifest.get('format_version')!r}, this semrec "
            f"reads version {EXPORT_VERSION}; export the run again with this semrec"
        )
    return manifest


def exported_prompts(
    manifest: dict[str, Any],
    hf_tokenizer,
    item_ids: Sequence[str],
    sid_tokens: Sequence[Sequence[str]],
    token_ids: Sequence[Sequence[int]],
) -> TrainingData:
    """The run's prompt source (its ``eval_prompts`` / ``collate_prompts``) over a
    catalogue-only dataset: no users, no interactions, only the items and their SIDs.

    Raises ``NotImplementedError`` for an evaluation task whose prompt needs more than the
    SIDs of the history (e.g. item texts, a user's SID).
    """
    prompt = manifest["prompt"]
    empty = np.zeros(0, dtype=np.int64)
    dataset = RecDataset(
        name=manifest["run"]["name"],
        user_ids=[],
        item_ids=list(item_ids),
        users=empty,
        items=empty,
        timestamps=empty,
        source=f"semrec export ({MANIFEST})",
    )
    split = Split([], [], [], num_items=len(item_ids), num_users=0)
    if prompt["format"] == "compact":
        return CompactSequences(
            split,
            [list(ids) for ids in token_ids],
            sep_id=hf_tokenizer.sep_token_id,
            pad_id=hf_tokenizer.pad_token_id,
            max_history=prompt["max_history"],
            window_items=1,
            prefix=prompt.get("prefix_ids", []),
        )
    task_spec = prompt["task"]
    task = TASKS.get(task_spec["name"])(**task_spec["params"])
    if task.user_sid_in_prompt:
        raise NotImplementedError(
            f"eval task {task.name!r} puts the user's SID into the prompt "
            "(user_sid_in_prompt): an exported recommender serves histories, not known users"
        )
    context = TaskContext(dataset, split, ["".join(tokens) for tokens in sid_tokens])
    try:
        task.check(context)
    except ValueError as err:
        raise NotImplementedError(
            f"eval task {task.name!r} builds its prompt from more than the history's SIDs, "
            f"which an export does not carry: {err}"
        ) from None
    formatter = prompt_formatter(ModelConfig.model_validate(manifest["model"]), hf_tokenizer)
    return TaskPairs(context, [], task, formatter)


def read_catalogue(directory: str | Path) -> tuple[list[str], list[list[str]], list[list[int]]]:
    """(item ids, SID tokens per item, SID token ids per item) of an export, in trie order."""
    table = read_json(Path(directory) / CATALOGUE)
    items = table["items"]
    return [i["id"] for i in items], [i["sid"] for i in items], [i["token_ids"] for i in items]


def load_exported_model(directory: str | Path, manifest: dict[str, Any]):
    """The exported model: a full or merged model, or the run's backbone plus the adapter."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    weights = manifest["weights"]
    if weights["kind"] in ("full", "merged"):
        return AutoModelForCausalLM.from_pretrained(str(directory / weights["path"]), dtype="auto")
    if weights["kind"] != "adapter":
        raise ExportFormatError(f"{directory}: unknown exported weights {weights['kind']!r}")
    from peft import PeftModel

    from semrec.known_warnings import hide_known_warnings
    from semrec.models.backbone import keep_first_layers, load_backbone

    model_cfg = ModelConfig.model_validate(manifest["model"])
    base, _ = load_backbone(
        model_cfg.backbone,
        quantization=model_cfg.quantization,
        tiny_hidden_size=model_cfg.tiny_hidden_size,
        seed=manifest["run"]["seed"],
    )
    if model_cfg.keep_layers is not None:
        keep_first_layers(base, model_cfg.keep_layers)
    rows = manifest["backbone"]["embedding_rows"]
    if base.get_input_embeddings().weight.shape[0] != rows:
        # the saved embedding layers (every row, SID rows included) replace these
        base.resize_token_embeddings(rows, mean_resizing=False)
    with hide_known_warnings():
        return PeftModel.from_pretrained(base, str(directory / weights["path"]))


def load_recommender(directory: str | Path, *, device: str | torch.device | None = None):
    """A :class:`Recommender` from a ``semrec export`` directory (and nothing else).

    ``device`` moves the model there (default: where it loads, the CPU).
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    manifest = read_manifest(directory)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    item_ids, sid_tokens, token_ids = read_catalogue(directory)
    stored = [hf_tokenizer.convert_tokens_to_ids(tokens) for tokens in sid_tokens]
    if stored != [list(ids) for ids in token_ids]:
        raise ExportFormatError(
            f"{directory}: the tokenizer maps the SID tokens to other ids than {CATALOGUE} holds"
        )
    trie = SIDTrie.from_sequences(token_ids, vocab_size=len(hf_tokenizer))
    prompts = exported_prompts(manifest, hf_tokenizer, item_ids, sid_tokens, token_ids)
    model = load_exported_model(directory, manifest)
    if device is not None:
        model.to(device)
    model.eval()
    decoding = manifest["decoding"]
    return Recommender(
        model,
        trie,
        item_ids,
        prompts,
        EvalConfig(
            num_beams=decoding["num_beams"],
            score_mode=decoding["score_mode"],
            precision=decoding["precision"],
            ks=decoding["ks"],
        ),
        max_history=manifest["prompt"]["max_history"],
        default_k=manifest["default_k"],
        info=manifest,
    )

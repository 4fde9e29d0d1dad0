"""Bad input, table-driven: every case must fail through a real entry point (the CLI or a
public API) with a message that names the offending file, record (line, user, item) or
config key, and must leave the run directory - and every input file - byte-for-byte as it
was: no new files, no half-written artifacts, no ``.xxx.tmp`` leftovers.

Each builder writes its bad input under ``tmp_path`` and returns what to run: a ``Cli``
(arguments for ``semrec.cli.main`` and the exit status expected) or an ``Api`` call and
the exception type expected. Nothing here loads a real encoder or LLM: CLI cases fail
before text encoding, or find their embeddings already cached (``_prime_embedding_cache``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from semrec.cli import main

# A model name no hub or directory has: if a case ever got as far as loading the text
# encoder, it would fail (offline) instead of silently downloading or running MiniLM.
STUB_MODEL = "semrec-tests/no-such-encoder"


# --------------------------------------------------------------------------- actions


@dataclass
class Cli:
    """Run ``semrec.cli.main(args)``; expect exit status ``code`` and the message on stderr."""

    args: list[str]
    code: int = 1


@dataclass
class Api:
    """Call ``call()``; expect it to raise ``error``; the message is ``str(exception)``."""

    call: Callable[[], Any]
    error: type[BaseException]


Build = Callable[[Path, Path], "Cli | Api"]  # (tmp_path, run_dir) -> what to run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def lines(*rows: str) -> str:
    return "\n".join(rows) + "\n"


def config(tmp: Path, body: dict[str, Any], name: str = "exp.yaml") -> Path:
    """An experiment YAML; the text encoder is always the stub, so none is ever loaded."""
    data = {"encoder": {"params": {"model": STUB_MODEL}}, **body}
    return write(tmp / "in" / name, yaml.safe_dump(data, sort_keys=False))


def tokenize(
    cfg: Path, run: Path, *overrides: str, code: int = 1, command: str = "tokenize"
) -> Cli:
    return Cli([command, "--config", str(cfg), "--run-dir", str(run), *overrides], code)


# --------------------------------------------------------------------------- datasets

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
GOOD_INTER = (
    "u1\ti1\t5\t1",
    "u1\ti2\t4\t2",
    "u1\ti3\t3\t3",
    "u2\ti2\t5\t1",
    "u2\ti3\t2\t2",
    "u2\ti1\t1\t3",
)
ITEM_HEADER = "item_id:token\ttitle:token_seq\tgenre:token_seq"
GOOD_ITEMS = ("i1\tAlpha\tDrama", "i2\tBeta\tComedy", "i3\tGamma\tDrama")


def recbole(
    tmp: Path,
    run: Path,
    inter: str | None = None,
    item: str | None = lines(ITEM_HEADER, *GOOD_ITEMS),
    dataset: dict[str, Any] | None = None,
    command: str = "tokenize",
    **sections: Any,
) -> Cli:
    """RecBole atomic files ``in/data/ds.{inter,item}`` and ``semrec tokenize`` on them."""
    data = tmp / "in" / "data"
    write(data / "ds.inter", inter if inter is not None else lines(INTER_HEADER, *GOOD_INTER))
    if item is not None:
        write(data / "ds.item", item)
    ds = {"source": "recbole", "path": str(data), "name": "ds", **(dataset or {})}
    return tokenize(config(tmp, {"dataset": ds, **sections}), run, command=command)


GOOD_LCREC_INTER = '{\n  "u1": ["i1", "i2", "i3"],\n  "u2": ["i2", "i3", "i1"]\n}\n'
GOOD_LCREC_ITEMS = (
    '{\n  "i1": {"title": "Alpha"},\n  "i2": {"title": "Beta"},\n  "i3": {"title": "Gamma"}\n}\n'
)


def lcrec(
    tmp: Path,
    run: Path,
    inter: str = GOOD_LCREC_INTER,
    item: str | None = GOOD_LCREC_ITEMS,
    index: str | None = None,
    command: str = "tokenize",
    **sections: Any,
) -> Cli:
    """LC-Rec JSON files ``in/data/ds.{inter,item,index}.json`` and ``semrec tokenize``."""
    data = tmp / "in" / "data"
    write(data / "ds.inter.json", inter)
    if item is not None:
        write(data / "ds.item.json", item)
    if index is not None:
        write(data / "ds.index.json", index)
    ds = {"source": "lcrec_json", "path": str(data), "name": "ds"}
    return tokenize(config(tmp, {"dataset": ds, **sections}), run, command=command)


def synthetic(tmp: Path, run: Path, *overrides: str, code: int = 1, **sections: Any) -> Cli:
    """The built-in synthetic dataset (48 users x 24 items) and ``semrec tokenize``."""
    body = {"dataset": {"source": "synthetic"}, **sections}
    return tokenize(config(tmp, body), run, *overrides, code=code)


# --------------------------------------------------------------------------- builders: LC-Rec JSON


def lcrec_inter_malformed_json(tmp: Path, run: Path) -> Cli:
    return lcrec(tmp, run, inter='{\n  "u1": ["i1", "i2",, "i3"]\n}\n')


def lcrec_item_truncated_json(tmp: Path, run: Path) -> Cli:
    return lcrec(tmp, run, item=GOOD_LCREC_ITEMS[: GOOD_LCREC_ITEMS.index('"i3"') + 6])


def lcrec_index_truncated_json(tmp: Path, run: Path) -> Cli:
    index = '{\n  "i1": ["<a_0>", "<b_0>"],\n  "i2": ["<a_0>", "<b_1>"],\n  "i3": ["<a_1>"'
    return lcrec(tmp, run, index=index, tokenizer={"name": "precomputed"})


def lcrec_index_bad_token(tmp: Path, run: Path) -> Cli:
    index = '{"i1": ["<a_0>", "<b_0>"], "i2": ["<a_0>", "b_1"], "i3": ["<a_1>", "<b_0>"]}\n'
    return lcrec(tmp, run, index=index, tokenizer={"name": "precomputed"})


def precomputed_index_param_malformed(tmp: Path, run: Path) -> Cli:
    index = write(tmp / "in" / "sids.json", '{"0": ["<a_0>"], "1": ["<a_1>"]\n"2": ["<a_2>"]}\n')
    return synthetic(tmp, run, tokenizer={"name": "precomputed", "params": {"index": str(index)}})


def lcrec_unknown_item(tmp: Path, run: Path) -> Cli:
    return lcrec(tmp, run, inter='{"u1": ["i1", "i2", "i3"], "u2": ["i2", "i9", "i1"]}\n')


def lcrec_duplicate_user(tmp: Path, run: Path) -> Cli:
    return lcrec(tmp, run, inter='{"u1": ["i1", "i2", "i3"], "u1": ["i2", "i3", "i1"]}\n')


def short_users_error(tmp: Path, run: Path) -> Cli:  # through `semrec fit`
    inter = '{"u1": ["i1", "i2", "i3"], "u2": ["i2", "i3"]}\n'
    return lcrec(tmp, run, inter=inter, command="fit")


# --------------------------------------------------------------------------- builders: RecBole


def recbole_header_missing_user_id(tmp: Path, run: Path) -> Cli:
    header = INTER_HEADER.replace("user_id:token", "uid:token")
    return recbole(tmp, run, inter=lines(header, *GOOD_INTER))


def recbole_item_header_missing_item_id(tmp: Path, run: Path) -> Cli:
    return recbole(tmp, run, item=lines(ITEM_HEADER.replace("item_id", "iid"), *GOOD_ITEMS))


def recbole_header_wrong_type(tmp: Path, run: Path) -> Cli:
    header = INTER_HEADER.replace("timestamp:float", "timestamp:int")
    return recbole(tmp, run, inter=lines(header, *GOOD_INTER))


def recbole_header_no_type(tmp: Path, run: Path) -> Cli:
    header = INTER_HEADER.replace("user_id:token", "user_id")
    return recbole(tmp, run, inter=lines(header, *GOOD_INTER))


def recbole_row_too_few_fields(tmp: Path, run: Path) -> Cli:
    return recbole(tmp, run, inter=lines(INTER_HEADER, GOOD_INTER[0], "u1\ti2\t4", *GOOD_INTER[2:]))


def recbole_timestamp_not_numeric(tmp: Path, run: Path) -> Cli:
    rows = list(GOOD_INTER)
    rows[1] = "u1\ti2\t4\tnoon"
    return recbole(tmp, run, inter=lines(INTER_HEADER, *rows))


def recbole_rating_not_numeric(tmp: Path, run: Path) -> Cli:
    rows = list(GOOD_INTER)
    rows[0] = "u1\ti1\tfive\t1"
    return recbole(tmp, run, inter=lines(INTER_HEADER, *rows))


def recbole_rating_nan(tmp: Path, run: Path) -> Cli:
    rows = list(GOOD_INTER)
    rows[3] = "u2\ti2\tnan\t1"
    return recbole(tmp, run, inter=lines(INTER_HEADER, *rows))


def recbole_unknown_item(tmp: Path, run: Path) -> Cli:
    rows = list(GOOD_INTER)
    rows[2] = "u1\ti9\t3\t3"
    return recbole(tmp, run, inter=lines(INTER_HEADER, *rows))


def recbole_duplicate_row(tmp: Path, run: Path) -> Cli:
    # line 3 (u1, i2, t=2) appears again on line 5; the same item at another time is a
    # repeat interaction and stays legal (see test_repeat_interactions_are_kept_in_order).
    rows = [*GOOD_INTER[:3], GOOD_INTER[1], *GOOD_INTER[3:]]
    return recbole(tmp, run, inter=lines(INTER_HEADER, *rows), command="fit")


def recbole_header_only(tmp: Path, run: Path) -> Cli:
    return recbole(tmp, run, inter=lines(INTER_HEADER))


def missing_dataset_path(tmp: Path, run: Path) -> Cli:
    ds = {"source": "recbole", "path": str(tmp / "in" / "no-such-dir"), "name": "ds"}
    return tokenize(config(tmp, {"dataset": ds}), run)


def kcore_leaves_nothing(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, "dataset.kcore=100")


# --------------------------------------------------------------------------- builders: item text


def item_text_missing_error(tmp: Path, run: Path) -> Cli:
    items = lines(ITEM_HEADER, GOOD_ITEMS[0], "i2\t\tComedy", GOOD_ITEMS[2])
    text = {"fields": ["title", "categories"], "missing": "error"}
    return recbole(tmp, run, item=items, dataset={"text": text})


def item_text_field_typo(tmp: Path, run: Path) -> Cli:
    return recbole(tmp, run, dataset={"text": {"fields": ["titel"]}})


def no_item_text_at_all(tmp: Path, run: Path) -> Cli:
    return recbole(tmp, run, item=None)


# --------------------------------------------------------------------------- builders: config


def config_unknown_section(tmp: Path, run: Path) -> Cli:
    return tokenize(config(tmp, {"trian": {"epochs": 2}}), run, code=2)


def override_unknown_section(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, "trian.epochs=2", code=2)


def config_unknown_key(tmp: Path, run: Path) -> Cli:
    return tokenize(config(tmp, {"train": {"epoch": 2}}), run, code=2)


def config_string_for_int(tmp: Path, run: Path) -> Cli:
    return tokenize(config(tmp, {"train": {"epochs": "two"}}), run, code=2)


def config_unknown_tokenizer(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, "tokenizer.name=rqkmean", code=2)


def config_unknown_tokenizer_param(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, code=2, tokenizer={"params": {"levels": 2, "codebook_sise": 8}})


def tokenizer_param_string_for_int(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, tokenizer={"params": {"levels": "2", "codebook_size": 8}})


def tokenizer_bad_on_overflow(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, tokenizer={"params": {"on_overflow": "suffx"}})


def config_base_missing(tmp: Path, run: Path) -> Cli:
    return tokenize(config(tmp, {"base": "no-such-base.yaml"}), run, code=2)


def override_without_equals(tmp: Path, run: Path) -> Cli:
    return synthetic(tmp, run, "train.epochs", code=2)


# --------------------------------------------------------------------------- builders: tokenizers


class _StubEncoder:
    """A text encoder's cache identity with fixed embeddings (no model behind it)."""

    def __init__(self, key: dict[str, Any], embeddings: torch.Tensor) -> None:
        self.key, self.embeddings = key, embeddings

    def cache_key(self) -> dict[str, Any]:
        return self.key

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.embeddings


def _prime_embedding_cache(tmp: Path, dataset_name: str, dim: int = 8) -> None:
    """Cache embeddings for the item texts ``semrec tokenize`` will build, under the key of
    ``sentence_transformer`` with ``model: STUB_MODEL``, so the CLI reaches the tokenizer
    without running any encoder."""
    from semrec.data import load_dataset
    from semrec.text.encoders import SentenceTransformerEncoder, encode_cached
    from semrec.text.item_text import ItemTextBuilder

    texts = ItemTextBuilder(missing="skip").build(load_dataset("synthetic", None, dataset_name))
    key = SentenceTransformerEncoder(STUB_MODEL).cache_key()
    stub = _StubEncoder(
        key, torch.randn(len(texts), dim, generator=torch.Generator().manual_seed(0))
    )
    encode_cached(stub, texts, cache_root=tmp / "cache")


def codebook_too_small_cli(tmp: Path, run: Path) -> Cli:
    _prime_embedding_cache(tmp, "synthetic-20-50")
    body = {
        "dataset": {"source": "synthetic", "name": "synthetic-20-50"},
        "tokenizer": {"name": "rqkmeans", "params": {"levels": 1, "codebook_size": 4}},
    }
    return tokenize(config(tmp, body), run)


def foreign_tokenizer_dir(tmp: Path, run: Path) -> Cli:
    """The run directory holds a ``tokenizer/`` that is not a saved tokenizer: the fitted
    tokenizer must not replace it, and nothing else may be written either."""
    _prime_embedding_cache(tmp, "synthetic")
    write(run / "tokenizer" / "notes.txt", "my own notes, not a tokenizer\n")
    return synthetic(tmp, run, tokenizer={"params": {"levels": 2, "codebook_size": 8}})


def run_dir_from_older_semrec(tmp: Path, run: Path) -> Cli:
    """A run directory whose stages.json predates the format field (semrec before format 2)."""
    write(run / "stages.json", '{"tokenizer": "0123456789abcdef"}\n')
    write(run / "config.yaml", "name: old\n")
    return synthetic(tmp, run, code=2)


def run_dir_from_newer_semrec(tmp: Path, run: Path) -> Cli:
    """A run directory written by a later run-directory format than this semrec knows."""
    write(run / "stages.json", '{"format": 99, "tokenizer": "0123456789abcdef"}\n')
    write(run / "config.yaml", "name: new\n")
    return synthetic(tmp, run, code=2)


def unwritable_run_dir(tmp: Path, run: Path) -> Cli:
    """--run-dir below a regular file (permission bits do not stop root, a file does)."""
    body = {"dataset": {"source": "synthetic"}}
    return tokenize(config(tmp, body), run / "SENTINEL" / "inner", code=2)


def adapter_from_another_tokenizer(tmp: Path, run: Path) -> Api:
    """Weights trained with one SID vocabulary loaded into a model with another."""
    from semrec.models.backbone import tiny_llama, tiny_tokenizer
    from semrec.models.checkpoint import load_trained_weights, save_trained_weights
    from semrec.models.vocabulary import add_sid_tokens

    def model(sids: list[str]):
        tok = tiny_tokenizer()
        net = tiny_llama(len(tok), hidden_size=16, seed=0)
        add_sid_tokens(net, tok, sids, seed=0)
        return net

    save_trained_weights(model([f"<a_{i}>" for i in range(8)]), run / "adapter")
    other = model([f"<a_{i}>" for i in range(4)])
    return Api(lambda: load_trained_weights(other, run / "adapter"), RuntimeError)


def _embeddings(n: int, dim: int = 8, bad_row: int | None = None, value: float = 0.0):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    if bad_row is not None:
        x[bad_row, dim // 2] = value
    return x


def codebook_too_small_rqvae(tmp: Path, run: Path) -> Api:
    from semrec.tokenizers import RQVAEUSMTokenizer

    tok = RQVAEUSMTokenizer(levels=1, codebook_size=4, hidden_layers=[8], epochs=1)
    return Api(lambda: tok.fit(_embeddings(50)), ValueError)


def nan_embeddings_rqkmeans(tmp: Path, run: Path) -> Api:
    from semrec.tokenizers import RQKMeansTokenizer

    tok = RQKMeansTokenizer(levels=2, codebook_size=8)
    return Api(lambda: tok.fit(_embeddings(50, bad_row=7, value=float("nan"))), ValueError)


def inf_embeddings_rqvae_usm(tmp: Path, run: Path) -> Api:
    from semrec.tokenizers import RQVAEUSMTokenizer

    tok = RQVAEUSMTokenizer(levels=2, codebook_size=8, hidden_layers=[8], epochs=1)
    return Api(lambda: tok.fit(_embeddings(50, bad_row=3, value=float("inf"))), ValueError)


def nan_embeddings_from_encoder(tmp: Path, run: Path) -> Api:
    from semrec.text.encoders import encode_cached

    texts = ["title: Alpha", "title: Beta", "title: Gamma", "title: Delta"]
    x = _embeddings(4, bad_row=2, value=float("nan"))
    stub = _StubEncoder({"encoder": "stub", "model": STUB_MODEL}, x)
    return Api(lambda: encode_cached(stub, texts, cache_root=tmp / "cache"), ValueError)


# --------------------------------------------------------------------------- builders: adapters


def _tiny(hidden: int) -> torch.nn.Module:
    from semrec.models.backbone import tiny_llama

    return tiny_llama(64, hidden_size=hidden, layers=1, seed=0)


def _load_into_unchanged(model: torch.nn.Module, directory: Path) -> Callable[[], None]:
    """``load_trained_weights`` that also checks a failed load left the model untouched."""
    from semrec.models.checkpoint import load_trained_weights

    def call() -> None:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            load_trained_weights(model, directory)
        finally:
            after = model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "model was modified"

    return call


def adapter_truncated(tmp: Path, run: Path) -> Api:
    from semrec.models.checkpoint import WEIGHTS_FILE, CheckpointMismatchError, save_trained_weights

    model = _tiny(16)
    save_trained_weights(model, run / "adapter")
    weights = run / "adapter" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    return Api(_load_into_unchanged(model, run / "adapter"), CheckpointMismatchError)


def adapter_other_shape(tmp: Path, run: Path) -> Api:
    from semrec.models.checkpoint import CheckpointMismatchError, save_trained_weights

    save_trained_weights(_tiny(32), run / "adapter")
    return Api(_load_into_unchanged(_tiny(16), run / "adapter"), CheckpointMismatchError)


# --------------------------------------------------------------------------- builders: annotations


def annotation_jsonl_malformed_line(tmp: Path, run: Path) -> Cli:
    path = write(
        tmp / "in" / "ann.jsonl",
        lines(
            '{"kind": "preference", "key": "u0", "text": "likes red items"}',
            '{"kind": "preference", "key": "u1", "text": "likes',
        ),
    )
    body = {
        "dataset": {"source": "synthetic"},
        "annotate": {"annotator": {"name": "jsonl", "params": {"path": str(path)}}},
    }
    cfg = config(tmp, body)
    return Cli(["annotate", "--config", str(cfg), "--kind", "preference", "--run-dir", str(run)])


def annotation_cache_corrupt_line(tmp: Path, run: Path) -> Api:
    from semrec.annotate import AnnotationError, AnnotationStore

    store_dir = tmp / "in" / "annotations"
    write(
        store_dir / "preference.jsonl",
        lines(
            '{"hash": "h1", "key": "u0", "text": "likes red"}',
            '{"hash": "h2", "key": "u1", "text": ',
            '{"hash": "h3", "key": "u2", "text": "likes blue"}',
        ),
    )
    return Api(AnnotationStore("preference", store_dir).load, AnnotationError)


# --------------------------------------------------------------------------- the table

# fmt: off
CASES = [
    # ---- LC-Rec JSON
    pytest.param(lcrec_inter_malformed_json, ["ds.inter.json:2", "invalid JSON"], id="lcrec-inter-malformed-json"),
    pytest.param(lcrec_item_truncated_json, ["ds.item.json:4", "invalid JSON"], id="lcrec-item-truncated-json"),
    pytest.param(lcrec_index_truncated_json, ["ds.index.json:4", "invalid JSON"], id="lcrec-index-truncated-json"),
    pytest.param(lcrec_index_bad_token, ["ds.index.json (item 'i2')", "'b_1'", "<prefix_code>"], id="lcrec-index-bad-sid-token"),
    pytest.param(precomputed_index_param_malformed, ["sids.json: not valid JSON", "line 2"], id="precomputed-index-param-malformed-json"),
    pytest.param(lcrec_unknown_item, ["ds.inter.json (user 'u2')", "item 'i9' is not in", "ds.item.json"], id="lcrec-unknown-item"),
    pytest.param(lcrec_duplicate_user, ["ds.inter.json", "key 'u1' appears twice"], id="lcrec-duplicate-user"),
    pytest.param(short_users_error, ["user 'u2' has 2 interaction(s)", "dataset.short_users: drop"], id="short-users-error"),
    # ---- RecBole atomic files
    pytest.param(recbole_header_missing_user_id, ["ds.inter:1", "missing required column 'user_id'"], id="recbole-header-missing-user-id"),
    pytest.param(recbole_item_header_missing_item_id, ["ds.item:1", "missing required column 'item_id'"], id="recbole-item-header-missing-item-id"),
    pytest.param(recbole_header_wrong_type, ["ds.inter:1 (field 'timestamp')", "unknown type 'int'"], id="recbole-header-wrong-type-suffix"),
    pytest.param(recbole_header_no_type, ["ds.inter:1", "'user_id' is not of the form name:type"], id="recbole-header-missing-type-suffix"),
    pytest.param(recbole_row_too_few_fields, ["ds.inter:3", "expected 4 tab-separated fields", "got 3"], id="recbole-row-too-few-fields"),
    pytest.param(recbole_timestamp_not_numeric, ["ds.inter:3 (field 'timestamp')", "'noon'"], id="recbole-timestamp-not-numeric"),
    pytest.param(recbole_rating_not_numeric, ["ds.inter:2 (field 'rating')", "'five'"], id="recbole-rating-not-numeric"),
    pytest.param(recbole_rating_nan, ["ds.inter:5 (field 'rating')", "finite number", "'nan'"], id="recbole-rating-nan"),
    pytest.param(recbole_unknown_item, ["ds.inter:4 (field 'item_id')", "item 'i9' is not in", "ds.item"], id="recbole-unknown-item"),
    pytest.param(recbole_duplicate_row, ["ds.inter:5", "repeats line 3", "user 'u1', item 'i2', timestamp 2"], id="recbole-duplicate-row"),
    pytest.param(recbole_header_only, ["ds.inter", "no interactions"], id="recbole-header-only"),
    pytest.param(missing_dataset_path, ["no-such-dir", "dataset directory does not exist"], id="missing-dataset-path"),
    pytest.param(kcore_leaves_nothing, ["no interactions left", "dataset.kcore"], id="kcore-leaves-nothing"),
    # ---- item text
    pytest.param(item_text_missing_error, ["(item 'i2', field 'title')", "lacks 'title'"], id="item-text-empty-with-missing-error"),
    pytest.param(item_text_field_typo, ["field 'titel'", "did you mean 'title'"], id="item-text-field-typo"),
    pytest.param(no_item_text_at_all, ["none of the 3 items has any text", "ds.inter"], id="no-item-text-at-all"),
    # ---- config
    pytest.param(config_unknown_section, ["exp.yaml", "trian: unknown key; did you mean 'train'"], id="config-unknown-section-trian"),
    pytest.param(override_unknown_section, ["trian: unknown key; did you mean 'train'"], id="override-unknown-section-trian"),
    pytest.param(config_unknown_key, ["train.epoch: unknown key; did you mean 'epochs'"], id="config-unknown-key-train-epoch"),
    pytest.param(config_string_for_int, ["train.epochs:", "valid integer", "'two'"], id="config-string-for-int"),
    pytest.param(config_unknown_tokenizer, ["tokenizer.name", "'rqkmean'", "did you mean 'rqkmeans'"], id="config-unknown-tokenizer-name"),
    pytest.param(config_unknown_tokenizer_param, ["tokenizer.params.codebook_sise", "did you mean 'codebook_size'"], id="config-unknown-tokenizer-param"),
    pytest.param(tokenizer_param_string_for_int, ["levels must be an int", "'2'"], id="tokenizer-param-string-for-int"),
    pytest.param(tokenizer_bad_on_overflow, ["on_overflow must be one of", "'suffx'"], id="tokenizer-param-bad-choice"),
    pytest.param(config_base_missing, ["no-such-base.yaml (base of", "exp.yaml", "does not exist"], id="config-base-missing"),
    pytest.param(override_without_equals, ["override 'train.epochs' must look like key.path=value"], id="override-without-equals"),
    # ---- tokenizers and embeddings
    pytest.param(codebook_too_small_cli, ["allow only 4 distinct SIDs but there are 50 items", "on_overflow='suffix'"], id="rqkmeans-codebook-too-small-cli"),
    pytest.param(codebook_too_small_rqvae, ["rqvae_usm", "allow only 4 distinct SIDs but there are 50 items"], id="rqvae-usm-codebook-too-small"),
    pytest.param(foreign_tokenizer_dir, ["run/tokenizer: not empty and not a saved tokenizer"], id="run-dir-foreign-tokenizer-dir"),
    pytest.param(nan_embeddings_rqkmeans, ["NaN or inf in 1 of 50 rows", "row 7"], id="rqkmeans-nan-embeddings"),
    pytest.param(inf_embeddings_rqvae_usm, ["NaN or inf in 1 of 50 rows", "row 3"], id="rqvae-usm-inf-embeddings"),
    pytest.param(nan_embeddings_from_encoder, ["NaN or inf", "first text 2", "'title: Gamma'", "nothing was cached"], id="encoder-nan-embeddings-not-cached"),
    # ---- trained weights
    pytest.param(adapter_truncated, ["adapter/trainable.safetensors", "not a readable safetensors file"], id="adapter-truncated"),
    pytest.param(adapter_other_shape, ["trainable.safetensors", "model.embed_tokens.weight has shape (64, 32)", "expects (64, 16)"], id="adapter-other-model-shape"),
    # ---- annotations
    pytest.param(annotation_jsonl_malformed_line, ["ann.jsonl:2", "not valid JSON"], id="annotation-jsonl-malformed-line"),
    pytest.param(annotation_cache_corrupt_line, ["preference.jsonl:2", "corrupt cache entry"], id="annotation-cache-corrupt-line"),
    # ---- run directories
    pytest.param(run_dir_from_older_semrec, ["run/stages.json", "format 1 (written by an older semrec", "nothing in this directory was changed"], id="run-dir-from-older-version"),
    pytest.param(run_dir_from_newer_semrec, ["run/stages.json", "format 99 (written by a newer semrec: upgrade semrec", "nothing in this directory was changed"], id="run-dir-from-newer-version"),
    pytest.param(unwritable_run_dir, ["run/SENTINEL/inner", "is not writable"], id="run-dir-unwritable"),
    pytest.param(adapter_from_another_tokenizer, ["adapter/trainable.safetensors", "has shape", "different vocabulary"], id="adapter-from-another-tokenizer"),
]
# fmt: on


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes of every file (None for a directory) under ``root``."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def perform(action: Cli | Api, capsys: pytest.CaptureFixture[str]) -> str:
    if isinstance(action, Cli):
        code = main(action.args)
        err = capsys.readouterr().err
        assert code == action.code, f"exit status {code}, stderr:\n{err}"
        assert err.startswith("semrec: error: ") and "Traceback" not in err, err
        return err
    with pytest.raises(action.error) as info:
        action.call()
    return str(info.value)


@pytest.mark.parametrize(("build", "expected"), CASES)
def test_bad_input_is_named_and_leaves_everything_unchanged(
    build: Build,
    expected: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # a stray relative write (runs/<name>) shows up in the snapshot
    monkeypatch.setenv("SEMREC_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "SENTINEL").write_text("written before the failing call\n")
    fails_naming_and_changing_nothing(build(tmp_path, run_dir), expected, tmp_path, capsys)


def fails_naming_and_changing_nothing(
    action: Cli | Api, expected: list[str], root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``action`` fails with a message holding every ``expected`` text, and every file under
    ``root`` (inputs, run directory, cache) is byte-for-byte what it was."""
    before = snapshot(root)
    message = perform(action, capsys)
    missing = [text for text in expected if text not in message]
    assert not missing, f"message lacks {missing}:\n{message}"
    after = snapshot(root)
    assert sorted(set(after) - set(before)) == [], "files were added"
    assert sorted(set(before) - set(after)) == [], "files were removed"
    assert [p for p in before if before[p] != after[p]] == [], "files were changed"


def test_repeat_interactions_are_kept_in_order(tmp_path: Path) -> None:
    """The documented rule next to ``recbole-duplicate-row``: the same user and item at
    different timestamps (or lines, without a timestamp column) are repeats, all kept."""
    from semrec.data import load_dataset

    rows = ["u1\ti1\t5\t1", "u1\ti2\t4\t2", "u1\ti1\t3\t3", "u1\ti1\t3\t4"]
    write(tmp_path / "ds.inter", lines(INTER_HEADER, *rows))
    ds = load_dataset("recbole", str(tmp_path), "ds")
    assert [ds.item_ids[i] for i in ds.sequences()[0]] == ["i1", "i2", "i1", "i1"]
    write(tmp_path / "ds.inter", lines("user_id:token\titem_id:token", "u1\ti1", "u1\ti1"))
    assert load_dataset("recbole", str(tmp_path), "ds").num_interactions == 2
    write(tmp_path / "lc.inter.json", '{"u1": ["i1", "i1", "i2"]}\n')
    assert load_dataset("lcrec_json", str(tmp_path), "lc").num_interactions == 3


# --------------------------------------------------------------------------- second table
# What a user owns (a trained run, an export, converted data, files they put in a folder) and
# the config boundary (finite numbers, allocations sized against the machine, seeds, a config
# that is not text). Same rule as above: the message names the key, file or record, and
# nothing under tmp_path changes. The trained run is copied into tmp_path per case, so it
# is part of what must stay byte-for-byte the same.

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
FIT = ["train.epochs=2", "train.check_val_every_n_epoch=2", "eval.baselines=[]"]
FIT += ["eval.max_test_users=8"]

OwnedBuild = Callable[[Path, Path, Path], "Cli | Api"]  # (tmp_path, run_dir, trained run)


def tiny(run: Path, *overrides: str, command: str = "tokenize") -> Cli:
    return Cli([command, "--config", str(TINY), "--run-dir", str(run), *overrides], 2)


def owned_copy(tmp: Path, trained: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trained, tmp / "owned"))


def lr_inf_in_yaml(tmp, run, trained):
    return Cli(tokenize(config(tmp, {"train": {"lr": float("inf")}}), run).args, 2)


def lr_inf_override(tmp, run, trained):
    return tiny(run, "train.lr=.inf")


def codebook_beyond_memory(tmp, run, trained):
    return tiny(run, "items.tokenizer.params.codebook_size=1000000000000")


def codebook_list_beyond_memory(tmp, run, trained):
    return tiny(run, "items.tokenizer.params.codebook_size=[8, 100000000000]")


def beams_beyond_memory(tmp, run, trained):
    return tiny(run, "eval.num_beams=1000000000")


def tiny_width_beyond_memory(tmp, run, trained):
    return tiny(run, "model.tiny_hidden_size=10000000", command="fit")


def compact_window_beyond_memory(tmp, run, trained):
    return tiny(run, "model.prompt_format=compact", "model.compact_window=1000000")


def seed_beyond_numpy(tmp, run, trained):
    return tiny(run, "seed=100000000000000000000000")


def tokenizer_seed_negative(tmp, run, trained):
    return tiny(run, "items.tokenizer.params.seed=-3")


def binary_config(tmp, run, trained):
    path = tmp / "in" / "model.yaml"
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(range(256)) * 4)
    return tokenize(path, run, code=2)


def name_outside_runs(tmp, run, trained):
    return Cli(tokenize(config(tmp, {"name": "../elsewhere"}), run).args, 2)


def fit_would_replace_trained_model(tmp, run, trained):
    owned = owned_copy(tmp, trained)
    return Cli(["fit", "--config", str(TINY), "--run-dir", str(owned), *FIT, "train.lr=0.01"], 2)


def export_over_earlier_export(tmp, run, trained):
    owned = owned_copy(tmp, trained)
    out = tmp / "export"
    assert main(["export", "--run", str(owned), "--out", str(out)]) == 0
    (out / "NOTES.md").write_text("the user's own notes\n")
    return Cli(["export", "--run", str(owned), "--out", str(out)], 1)


def export_into_a_users_folder(tmp, run, trained):
    owned = owned_copy(tmp, trained)
    write(tmp / "mine" / "draft.txt", "not an export\n")
    return Cli(["export", "--run", str(owned), "--out", str(tmp / "mine")], 1)


def convert_over_converted_data(tmp, run, trained):
    recbole(tmp, run)  # writes in/data/ds.{inter,item}
    out = tmp / "converted"
    args = ["convert", "--from", "recbole", "--path", str(tmp / "in" / "data"), "--name", "ds"]
    args += ["--to", "lcrec_json", "--out", str(out)]
    assert main(args) == 0
    return Cli(args, 1)


def add_items_without_text_or_embedding(tmp, run, trained):
    owned = owned_copy(tmp, trained)
    items = write(tmp / "in" / "new.json", '[{"id": "n1", "title": "x"}, {"id": "bare"}]')
    return Cli(["add-items", "--run", str(owned), "--items", str(items)], 1)


def add_items_embedding_of_another_width(tmp, run, trained):
    owned = owned_copy(tmp, trained)
    items = write(tmp / "in" / "new.json", '[{"id": "v", "embedding": [0.5, 1.5]}]')
    return Cli(["add-items", "--run", str(owned), "--items", str(items)], 2)


# fmt: off
OWNED_CASES = [
    # ---- numbers at the config boundary
    pytest.param(lr_inf_in_yaml, ["train.lr", "finite number", "exp.yaml"], id="lr-inf-in-yaml"),
    pytest.param(lr_inf_override, ["train.lr", "finite number"], id="lr-inf-override"),
    pytest.param(codebook_beyond_memory, ["items.tokenizer.params.codebook_size", "1000000000000", "more than this machine's"], id="codebook-size-beyond-memory"),
    pytest.param(codebook_list_beyond_memory, ["items.tokenizer.params.codebook_size", "more than this machine's"], id="codebook-size-list-beyond-memory"),
    pytest.param(beams_beyond_memory, ["eval.num_beams", "more than this machine's"], id="num-beams-beyond-memory"),
    pytest.param(tiny_width_beyond_memory, ["model.tiny_hidden_size", "more than this machine's"], id="model-width-beyond-memory"),
    pytest.param(compact_window_beyond_memory, ["model.compact_window", "more than this machine's"], id="compact-window-beyond-memory"),
    pytest.param(seed_beyond_numpy, ["seed", "less than 4294967296"], id="seed-beyond-2-32"),
    pytest.param(tokenizer_seed_negative, ["items.tokenizer.params.seed", "[0, 2**32)", "-3"], id="tokenizer-seed-negative"),
    pytest.param(binary_config, ["model.yaml", "not UTF-8 text"], id="binary-config-file"),
    pytest.param(name_outside_runs, ["name", "must be a plain name"], id="run-name-outside-runs"),
    # ---- what a user owns is refused, not replaced
    pytest.param(fit_would_replace_trained_model, ["train.lr: 0.003 -> 0.01", "--overwrite"], id="fit-would-replace-a-trained-model"),
    pytest.param(export_over_earlier_export, ["holds an earlier export", "--overwrite"], id="export-over-an-earlier-export"),
    pytest.param(export_into_a_users_folder, ["mine", "not empty and holds no previous export"], id="export-into-a-users-folder"),
    pytest.param(convert_over_converted_data, ["already holds", "ds.inter.json", "--overwrite"], id="convert-over-converted-data"),
    pytest.param(add_items_without_text_or_embedding, ["new.json", "item 'bare' has no text"], id="add-items-item-without-text-or-embedding"),
    pytest.param(add_items_embedding_of_another_width, ["new.json", "item 'v'", "2 numbers"], id="add-items-embedding-of-another-width"),
]
# fmt: on


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (two epochs), copied by the cases that need one."""
    run = tmp_path_factory.mktemp("owned") / "run"
    assert main(["fit", "--config", str(TINY), "--run-dir", str(run), *FIT]) == 0
    return run


@pytest.mark.parametrize(("build", "expected"), OWNED_CASES)
def test_what_a_user_owns_survives_bad_input(
    build: OwnedBuild,
    expected: list[str],
    trained_tiny: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "SENTINEL").write_text("written before the failing call\n")
    action = build(tmp_path, run_dir, trained_tiny)
    capsys.readouterr()  # what the builder's own commands printed
    fails_naming_and_changing_nothing(action, expected, tmp_path, capsys)

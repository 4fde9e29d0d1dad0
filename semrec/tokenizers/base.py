"""The item tokenizer interface: item embeddings in, one short code sequence (SID) per item out.

An :class:`ItemTokenizer` is configured by its constructor keyword arguments (JSON values
only, so a run directory can rebuild it), fitted once with :meth:`ItemTokenizer.fit`, and
then exposes

* ``codes``: LongTensor [n_items, levels], -1 padded where an item has fewer levels;
* tokens: level ``l`` with code ``c`` is the string ``f"<{level_prefixes[l]}_{c}>"``;
* :meth:`~ItemTokenizer.token_strings`: the whole SID vocabulary (every level x every code of
  that level's codebook), independent of which codes the items happen to use;
* :meth:`~ItemTokenizer.stats`: collision rates before and after resolution, per-level usage;
* :meth:`~ItemTokenizer.save` / :func:`load_tokenizer`: a directory with ``config.json``,
  ``state.safetensors`` and a human-readable ``index.json`` (LC-Rec's format).

:class:`PrecomputedTokenizer` wraps SIDs made elsewhere (LC-Rec's ``index.json``).
"""

from __future__ import annotations

import abc
import inspect
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from semrec.artifacts import atomic_dir, read_json, write_json
from semrec.registry import Registry, UnknownComponentError
from semrec.tokenizers.collisions import (
    PAD,
    collision_groups,
    collision_rate,
    conflicts_with,
    is_prefix_free,
    resolve_collisions,
    sid_lengths,
)

CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
INDEX_FILE = "index.json"
FILE_FORMAT = "semrec-tokenizer"
FORMAT_VERSION = 1

DEFAULT_LEVEL_PREFIXES = "abcdefgh"
# users' SID tokens read <ua_12><ub_7>...: never an item token under the item defaults
DEFAULT_USER_PREFIXES = ("ua", "ub", "uc", "ud", "ue", "uf", "ug", "uh")

TOKENIZERS: Registry[type[ItemTokenizer]] = Registry("tokenizer")


class SIDConflictWarning(UserWarning):
    """New items got SIDs that existing items (or each other) already use."""


@dataclass
class FittedCodes:
    """What a tokenizer's fit produces; the base class stores and saves it."""

    codes: torch.Tensor  # [n, levels], final (after collision resolution)
    codebook_sizes: list[int]  # one per level (column of ``codes``)
    codes_before_resolution: torch.Tensor | None = None  # None: same as ``codes``
    resolution: dict[str, Any] = field(default_factory=lambda: {"strategy": "none"})
    info: dict[str, Any] = field(default_factory=dict)  # extra JSON facts for stats()


class ItemTokenizer(abc.ABC):
    """Base class of item tokenizers; subclasses implement the four ``_`` hooks and config().

    The rows it gives SIDs are items, or users for a run's user tokenizer. ``input_ndims``
    says what :meth:`fit` takes: 2-D vectors [n, d], or (a tokenizer that pools a set of
    vectors per row itself) 3-D [n, m, d].
    """

    input_ndims: tuple[int, ...] = (2,)

    def __init__(self, level_prefixes: str | Sequence[str] = DEFAULT_LEVEL_PREFIXES) -> None:
        self.level_prefixes = level_prefixes
        self._prefixes = _check_prefixes(level_prefixes)
        self._fitted: FittedCodes | None = None

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments (JSON values) that rebuild this tokenizer."""

    @abc.abstractmethod
    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        """Fit on validated float32 embeddings [n, d]; ``seed=None`` means the configured one."""

    @abc.abstractmethod
    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Codes [m, <= levels] for unseen items from validated float32 embeddings (of the
        fit's width, when the fit recorded ``info["input_dim"]``)."""

    @abc.abstractmethod
    def _model_state(self) -> dict[str, torch.Tensor]:
        """Tensors (besides the codes) needed to encode new items, e.g. codebooks."""

    @abc.abstractmethod
    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`_model_state`."""

    def _fit_lazily(self) -> bool:
        """Subclasses whose codes need no embeddings may produce them on first use."""
        return False

    # -------------------------------------------------------------------- fitting
    def _resolved(
        self,
        raw: torch.Tensor,
        codebook_sizes: Sequence[int],
        *,
        seed: int,
        priority: torch.Tensor | None,
        info: dict[str, Any],
        suffix_all: bool = False,
    ) -> FittedCodes:
        """The shared end of a fit: the raw codes' collisions resolved by this tokenizer's
        ``collision`` strategy and ``on_overflow`` policy (the item with the lowest
        ``priority`` keeps a contested code), as :class:`FittedCodes`."""
        codes, sizes, resolution = resolve_collisions(
            raw,
            list(codebook_sizes),
            self.collision,
            seed=seed,
            priority=priority,
            on_overflow=self.on_overflow,
            suffix_all=suffix_all,
        )
        return FittedCodes(
            codes=codes,
            codebook_sizes=sizes,
            codes_before_resolution=raw,
            resolution=resolution,
            info=info,
        )

    def fit(self, embeddings: torch.Tensor, seed: int | None = None) -> None:
        """Learn SIDs for ``embeddings`` [n_items, d] (row i = item i)."""
        fitted = self._fit(_check_embeddings(embeddings, self.input_ndims), seed)
        self._set_fitted(fitted)

    def encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Codes for items never seen in fit, padded with -1 to the width of :attr:`codes`.

        Existing items keep their codes. A new SID that equals, extends or prefixes an
        existing one (or another new one) is reported with a :class:`SIDConflictWarning`.
        """
        existing = self.codes
        embeddings = _check_embeddings(embeddings, self.input_ndims)
        expected = self._require_fitted().info.get("input_dim")
        if expected is not None and embeddings.shape[-1] != expected:
            raise ValueError(
                f"expected embeddings of dimension {expected} (as in fit), "
                f"got {embeddings.shape[-1]}"
            )
        new = self._encode_new(embeddings)
        if new.shape[1] < existing.shape[1]:
            pad = torch.full((new.shape[0], existing.shape[1] - new.shape[1]), PAD)
            new = torch.cat([new, pad], dim=1)
        clash_existing = int(conflicts_with(existing, new).sum())
        clash_new = sum(group.numel() for group in collision_groups(new))
        if clash_existing or clash_new:
            warnings.warn(
                f"{clash_existing} of {new.shape[0]} new items got a SID that an existing item "
                f"already uses (or that prefixes/extends one), and {clash_new} share a SID with "
                "another new item; existing items were left unchanged",
                SIDConflictWarning,
                stacklevel=2,
            )
        return new

    # ------------------------------------------------------------------ the SID table
    @property
    def is_fitted(self) -> bool:
        return self._fitted is not None

    @property
    def codes(self) -> torch.Tensor:
        """LongTensor [n_items, levels]; -1 pads items with fewer levels."""
        return self._require_fitted().codes

    @property
    def codes_before_resolution(self) -> torch.Tensor:
        """The codes as the quantiser produced them, before collisions were resolved."""
        fitted = self._require_fitted()
        before = fitted.codes_before_resolution
        return fitted.codes if before is None else before

    @property
    def codebook_sizes(self) -> list[int]:
        """Number of codes per level (the token vocabulary of that level)."""
        return list(self._require_fitted().codebook_sizes)

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def token(self, level: int, code: int) -> str:
        """The token string of ``code`` at ``level``, e.g. ``<b_7>``."""
        return f"<{self._prefixes[level]}_{code}>"

    def level_token_strings(self) -> list[list[str]]:
        """Per level, every token an item may carry there: codes 0..size-1."""
        return [
            [self.token(level, code) for code in range(size)]
            for level, size in enumerate(self.codebook_sizes)
        ]

    def token_strings(self) -> list[str]:
        """Every token any item may carry: level by level, codes 0..size-1."""
        return [token for level in self.level_token_strings() for token in level]

    def item_tokens(self, item: int) -> list[str]:
        """The SID of one item as a list of token strings."""
        row = self.codes[item].tolist()
        return [self.token(level, code) for level, code in enumerate(row) if code != PAD]

    def sid_strings(self) -> list[str]:
        """The SID of every item as one string, e.g. ``<a_1><b_7><c_201>``."""
        return ["".join(self.item_tokens(item)) for item in range(self.n_items)]

    def index(self) -> dict[str, list[str]]:
        """The SID table in LC-Rec's ``index.json`` layout: ``{"0": ["<a_1>", ...], ...}``."""
        return {str(item): self.item_tokens(item) for item in range(self.n_items)}

    # --------------------------------------------------------------------- reporting
    def stats(self) -> dict[str, Any]:
        """Collision rates before/after resolution, per-level code usage and entropy."""
        fitted = self._require_fitted()
        codes, before = fitted.codes, self.codes_before_resolution
        groups_after = collision_groups(codes)
        return {
            "tokenizer": self.registered_name(),
            "n_items": codes.shape[0],
            "levels": codes.shape[1],
            "codebook_sizes": list(fitted.codebook_sizes),
            "vocabulary_size": sum(fitted.codebook_sizes),
            "collision_rate_before": collision_rate(before),
            "colliding_groups_before": len(collision_groups(before)),
            "collision_rate_after": collision_rate(codes),
            "colliding_groups_after": len(groups_after),
            "largest_group_after": max((g.numel() for g in groups_after), default=1),
            "prefix_free": is_prefix_free(codes),
            "per_level": level_usage(codes, fitted.codebook_sizes),
            "collision_resolution": dict(fitted.resolution),
            **({"fit": dict(fitted.info)} if fitted.info else {}),
        }

    def registered_name(self) -> str:
        """The name this class is registered under in :data:`TOKENIZERS`."""
        for name in TOKENIZERS.names():
            if TOKENIZERS.get(name) is type(self):
                return name
        raise TypeError(
            f"{type(self).__name__} is not registered; decorate it with @TOKENIZERS.register(name)"
        )

    # ---------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write config.json, state.safetensors and index.json to ``directory`` atomically.

        An existing tokenizer directory is replaced; any other non-empty directory is
        refused rather than deleted.
        """
        fitted = self._require_fitted()
        directory = Path(directory)
        _refuse_foreign_directory(directory)
        config = self.config()
        try:
            json.dumps(config)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{type(self).__name__}.config() is not JSON-serialisable: {err}"
            ) from None
        header = {
            "format": FILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": self.registered_name(),
            "config": config,
            "codebook_sizes": list(fitted.codebook_sizes),
            "collision_resolution": fitted.resolution,
            "fit": fitted.info,
        }
        tensors = {"codes": fitted.codes.contiguous()}
        if fitted.codes_before_resolution is not None:
            tensors["codes_before_resolution"] = fitted.codes_before_resolution.clone()
        for key, value in self._model_state().items():
            tensors[f"model.{key}"] = value.detach().cpu().clone()
        with atomic_dir(directory) as tmp:
            write_json(tmp / CONFIG_FILE, header)
            save_file(tensors, str(tmp / STATE_FILE))
            write_json(tmp / INDEX_FILE, self.index())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ItemTokenizer:
        """Load a saved tokenizer; it must be an instance of ``cls`` (any kind for the base)."""
        tokenizer = load_tokenizer(directory)
        if not isinstance(tokenizer, cls):
            raise TypeError(
                f"{Path(directory) / CONFIG_FILE} holds a {tokenizer.registered_name()!r} "
                f"tokenizer ({type(tokenizer).__name__}), not a {cls.__name__}"
            )
        return tokenizer

    # -------------------------------------------------------------------- internals
    def _set_fitted(self, fitted: FittedCodes) -> None:
        codes = fitted.codes
        if codes.dtype != torch.long or codes.ndim != 2:
            raise ValueError(f"codes must be a 2-D LongTensor, got {codes.dtype} {codes.shape}")
        if len(fitted.codebook_sizes) != codes.shape[1]:
            raise ValueError(
                f"{len(fitted.codebook_sizes)} codebook sizes for {codes.shape[1]} levels"
            )
        if codes.shape[1] > len(self._prefixes):
            raise ValueError(
                f"level_prefixes {self.level_prefixes!r} names {len(self._prefixes)} levels but "
                f"the tokenizer produced {codes.shape[1]}; pass a longer level_prefixes"
            )
        sid_lengths(codes)  # padding must be a tail
        for level, size in enumerate(fitted.codebook_sizes):
            column = codes[:, level]
            if bool((column >= size).any()) or bool((column < PAD).any()):
                raise ValueError(f"level {level} has codes outside [-1, {size - 1}]")
        self._fitted = fitted

    def _require_fitted(self) -> FittedCodes:
        if self._fitted is None and not self._fit_lazily():
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; call fit(...) or load a saved one"
            )
        assert self._fitted is not None
        return self._fitted


def load_tokenizer(directory: str | Path) -> ItemTokenizer:
    """Rebuild the tokenizer saved in ``directory`` as its registered class."""
    import semrec.tokenizers  # noqa: F401  (registers every built-in tokenizer)

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; is {directory} a saved tokenizer?")
    try:
        header = read_json(config_path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{config_path}: not a semrec tokenizer config (no format={FILE_FORMAT!r})"
        )
    for key, kind in (("tokenizer", str), ("config", dict), ("codebook_sizes", list)):
        if not isinstance(header.get(key), kind):
            raise ValueError(f"{config_path}: field {key!r} is missing or not a {kind.__name__}")
    try:
        cls = TOKENIZERS.get(header["tokenizer"])
    except UnknownComponentError as err:
        raise ValueError(f"{config_path}: {err}") from None
    try:
        tokenizer = cls(**header["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{config_path}: field 'config' does not fit {cls.__name__}: {err}"
        ) from None

    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: missing; the tokenizer directory is incomplete")
    try:
        state = load_file(str(state_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{state_path}: unreadable or corrupt ({err})") from None
    if "codes" not in state:
        raise ValueError(f"{state_path}: no 'codes' tensor")
    try:
        tokenizer._load_model_state(
            {
                key[len("model.") :]: value
                for key, value in state.items()
                if key.startswith("model.")
            }
        )
        tokenizer._set_fitted(
            FittedCodes(
                codes=state["codes"].long(),
                codebook_sizes=[int(size) for size in header["codebook_sizes"]],
                codes_before_resolution=state.get("codes_before_resolution"),
                resolution=header.get("collision_resolution") or {"strategy": "none"},
                info=header.get("fit") or {},
            )
        )
    except (KeyError, ValueError, RuntimeError) as err:
        raise ValueError(f"{state_path}: does not match {config_path}: {err}") from None
    return tokenizer


def level_usage(codes: torch.Tensor, codebook_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: items present, codes used, usage fraction and entropy of the code histogram.

    ``normalized_entropy`` is the entropy (nats) divided by log(codebook size): 1.0 means
    the items spread evenly over all codes; it is None for a level with a single code.
    """
    report = []
    for level, size in enumerate(codebook_sizes):
        column = codes[:, level]
        column = column[column != PAD]
        counts = torch.bincount(column, minlength=size).double()
        used = int((counts > 0).sum())
        total = float(counts.sum())
        if total:
            p = counts[counts > 0] / total
            entropy = float(-(p * p.log()).sum())
        else:
            entropy = 0.0
        report.append(
            {
                "level": level,
                "codebook_size": size,
                "items": int(column.numel()),
                "used_codes": used,
                "usage": used / size,
                "entropy": entropy,
                "normalized_entropy": entropy / math.log(size) if size > 1 else None,
            }
        )
    return report


# ------------------------------------------------------------------------ precomputed
_TOKEN = re.compile(r"<([^<>_\s]+)_(\d+)>")


@TOKENIZERS.register("precomputed")
class PrecomputedTokenizer(ItemTokenizer):
    """SIDs computed elsewhere, e.g. LC-Rec's ``index.json``: ``{"0": ["<a_1>", "<b_2>"], ...}``.

    ``index`` is a path to such a JSON file, the mapping itself (keys "0".."n-1"), or a list
    with one token list (or concatenated token string) per item. Items may have different
    lengths; shorter ones are -1 padded. Level prefixes are read from the tokens unless
    ``level_prefixes`` is given (then the tokens must match it); codebook sizes default to
    the largest code per level + 1. ``fit`` ignores embeddings; the file is read on first use.
    """

    def __init__(
        self,
        index: str | Path | Mapping[str, Any] | Sequence[Any] | None = None,
        *,
        level_prefixes: str | Sequence[str] | None = None,
        codebook_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(level_prefixes if level_prefixes is not None else DEFAULT_LEVEL_PREFIXES)
        self._given_prefixes = level_prefixes
        self._index = index
        self._codebook_size = codebook_size

    def config(self) -> dict[str, Any]:
        # An in-memory index is data, not config: it travels in state.safetensors.
        path = str(self._index) if isinstance(self._index, (str, Path)) else None
        size = self._codebook_size
        return {
            "index": path,
            "level_prefixes": self._given_prefixes,
            "codebook_size": list(size) if isinstance(size, Sequence) else size,
        }

    def fit(self, embeddings: torch.Tensor | None = None, seed: int | None = None) -> None:
        """Parse the index; embeddings are not needed (if given, their row count must match)."""
        self._set_fitted(self._parse())
        if embeddings is not None and embeddings.shape[0] != self.n_items:
            raise ValueError(
                f"got embeddings for {embeddings.shape[0]} items but the index has {self.n_items}"
            )

    def _fit(self, embeddings: torch.Tensor, seed: int | None) -> FittedCodes:
        return self._parse()

    def _fit_lazily(self) -> bool:
        if self._index is None:
            return False
        self._set_fitted(self._parse())
        return True

    def _encode_new(self, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "a precomputed tokenizer has no quantiser, so it cannot encode new items; re-run "
            "the tokenizer that produced the SIDs, or fit one in semrec (e.g. 'rqkmeans')"
        )

    def _model_state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        pass  # the saved codes are authoritative; the index file is not read again

    def _set_fitted(self, fitted: FittedCodes) -> None:
        prefixes = fitted.info.get("level_prefixes")
        if prefixes:
            self._prefixes = tuple(prefixes)
        super()._set_fitted(fitted)

    def _parse(self) -> FittedCodes:
        source, rows = _read_index(self._index)
        given = None if self._given_prefixes is None else self._prefixes
        width = max(len(tokens) for tokens in rows)
        prefixes: list[str | None] = [None] * width
        if given is not None:
            if width > len(given):
                raise ValueError(
                    f"{source}: SIDs have up to {width} tokens but level_prefixes "
                    f"{self._given_prefixes!r} names only {len(given)} levels"
                )
            prefixes = list(given[:width])
        codes = torch.full((len(rows), width), PAD, dtype=torch.long)
        for item, tokens in enumerate(rows):
            for level, (prefix, code) in enumerate(tokens):
                if prefixes[level] is None:
                    prefixes[level] = prefix
                elif prefix != prefixes[level]:
                    raise ValueError(
                        f"{source}: item {item} has token <{prefix}_{code}> at level {level}, "
                        f"where the prefix should be {prefixes[level]!r}"
                    )
                codes[item, level] = code
        max_codes = [int(codes[:, level].max()) + 1 for level in range(width)]
        sizes = _codebook_sizes(self._codebook_size, max_codes, source)
        if len(set(prefixes)) != width:
            raise ValueError(f"{source}: two levels use the same prefix: {prefixes}")
        return FittedCodes(
            codes=codes,
            codebook_sizes=sizes,
            resolution={"strategy": "precomputed"},
            info={"level_prefixes": list(prefixes), "source": source},
        )


def _read_index(index: Any) -> tuple[str, list[list[tuple[str, int]]]]:
    """Load an LC-Rec style index into (source name, [[(prefix, code), ...] per item])."""
    if index is None:
        raise ValueError("PrecomputedTokenizer needs an index (path, mapping or list of SIDs)")
    source = "index"
    if isinstance(index, (str, Path)):
        source = str(index)
        if not Path(index).is_file():
            raise FileNotFoundError(f"{source}: SID index file not found")
        try:
            index = read_json(index)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
    if isinstance(index, Mapping):
        keys = list(index)
        try:
            ordered = sorted(keys, key=int)
        except (TypeError, ValueError):
            bad = next(k for k in keys if not str(k).lstrip("-").isdigit())
            raise ValueError(f"{source}: item key {bad!r} is not an integer item index") from None
        if [int(k) for k in ordered] != list(range(len(keys))):
            missing = sorted(set(range(len(keys))) - {int(k) for k in keys})
            raise ValueError(
                f"{source}: item keys must be 0..{len(keys) - 1}; missing {missing[:5]}"
            )
        entries = [(str(k), index[k]) for k in ordered]
    elif isinstance(index, Sequence) and not isinstance(index, str):
        entries = [(str(i), sid) for i, sid in enumerate(index)]
    else:
        raise ValueError(
            f"{source}: expected a mapping or list of SIDs, got {type(index).__name__}"
        )
    if not entries:
        raise ValueError(f"{source}: the SID index is empty")
    return source, [_parse_sid(source, key, sid) for key, sid in entries]


def _parse_sid(source: str, key: str, sid: Any) -> list[tuple[str, int]]:
    text = sid if isinstance(sid, str) else None
    if text is None:
        if not isinstance(sid, Sequence) or not all(isinstance(t, str) for t in sid):
            raise ValueError(f"{source}: item {key}: expected a list of token strings, got {sid!r}")
        text = "".join(sid)
    tokens = [(m.group(1), int(m.group(2))) for m in _TOKEN.finditer(text)]
    if not tokens or "".join(f"<{p}_{c}>" for p, c in tokens) != text.replace(" ", ""):
        raise ValueError(f"{source}: item {key}: {sid!r} is not a sequence of <prefix_code> tokens")
    return tokens


def _codebook_sizes(
    configured: int | Sequence[int] | None, needed: list[int], source: str
) -> list[int]:
    if configured is None:
        return needed
    sizes = [configured] * len(needed) if isinstance(configured, int) else list(configured)
    if len(sizes) < len(needed):
        raise ValueError(
            f"{source}: codebook_size {configured} lists fewer than {len(needed)} levels"
        )
    sizes = sizes[: len(needed)]
    for level, (size, need) in enumerate(zip(sizes, needed)):
        if need > size:
            raise ValueError(
                f"{source}: level {level} uses code {need - 1}, beyond codebook_size {size}"
            )
    return sizes


def _check_prefixes(prefixes: str | Sequence[str]) -> tuple[str, ...]:
    items = tuple(prefixes)
    if not items or not all(isinstance(p, str) and _TOKEN.fullmatch(f"<{p}_0>") for p in items):
        raise ValueError(
            f"level_prefixes must be non-empty strings without '<', '>', '_' or spaces, "
            f"got {prefixes!r}"
        )
    if len(set(items)) != len(items):
        raise ValueError(f"level_prefixes must be distinct, got {prefixes!r}")
    return items


def _check_embeddings(embeddings: Any, ndims: tuple[int, ...] = (2,)) -> torch.Tensor:
    """Validate item embeddings and return them as a float32 CPU tensor."""
    if not isinstance(embeddings, torch.Tensor):
        try:
            embeddings = torch.as_tensor(embeddings)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"embeddings must be a 2-D float tensor: {err}") from None
    if embeddings.ndim not in ndims:
        if embeddings.ndim == 3:
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)} hold a set of vectors per row "
                "(e.g. the 'review_attention' user embedder's reviews); this tokenizer takes "
                "one vector per row [n, dim]; use 'ulmrec_user', which pools the set itself"
            )
        raise ValueError(
            f"embeddings must be 2-D [n_items, dim], got shape {tuple(embeddings.shape)}"
        )
    if min(embeddings.shape) < 1:
        raise ValueError(
            f"embeddings must have at least one item and one dimension, got {tuple(embeddings.shape)}"
        )
    if not (embeddings.is_floating_point() or embeddings.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"embeddings must be numeric, got dtype {embeddings.dtype}")
    embeddings = embeddings.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(embeddings).reshape(embeddings.shape[0], -1).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"embeddings contain NaN or inf in {rows.numel()} of {embeddings.shape[0]} rows "
            f"(first: row {int(rows[0])})"
        )
    return embeddings


def _refuse_foreign_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / CONFIG_FILE).is_file():
            raise ValueError(
                f"{directory}: not empty and not a saved tokenizer; refusing to replace it "
                "(save the tokenizer into its own subdirectory)"
            )


def level_prefixes_of(name: str, params: dict[str, Any], *, user: bool = False) -> tuple[str, ...]:
    """The level prefixes the tokenizer registered as ``name`` uses with ``params``.

    ``params["level_prefixes"]`` when given; otherwise :data:`DEFAULT_USER_PREFIXES` for a
    user tokenizer, or the constructor's default. (A ``precomputed`` tokenizer without
    ``level_prefixes`` reads them from its SIDs, so this returns its fallback.)
    """
    given = params.get("level_prefixes")
    if given is not None:
        return tuple(given)
    if user:
        return DEFAULT_USER_PREFIXES
    parameter = inspect.signature(TOKENIZERS.get(name)).parameters.get("level_prefixes")
    default = None if parameter is None else parameter.default
    if default is None or default is inspect.Parameter.empty:
        return tuple(DEFAULT_LEVEL_PREFIXES)
    return tuple(default)

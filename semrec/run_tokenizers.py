"""Moved to :mod:`semrec.pipeline.tokenizers`; this path re-exports it for one release."""

import warnings

from semrec.pipeline.tokenizers import TokenizerStage as RunTokenizers  # noqa: F401

warnings.warn(
    "semrec.run_tokenizers moved to semrec.pipeline.tokenizers (class TokenizerStage)",
    DeprecationWarning,
    stacklevel=2,
)

"""Moved to :mod:`semrec.prompts.batching`; this path re-exports it for one release."""

import warnings

from semrec.prompts.batching import *  # noqa: F403

warnings.warn(
    "semrec.data.batching moved to semrec.prompts.batching; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

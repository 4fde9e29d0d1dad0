"""Moved to :mod:`semrec.prompts.compact`; this path re-exports it for one release."""

import warnings

from semrec.prompts.compact import *  # noqa: F403

warnings.warn(
    "semrec.data.compact moved to semrec.prompts.compact; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

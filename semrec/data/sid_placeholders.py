"""Moved to :mod:`semrec.prompts.sid_placeholders`; this path re-exports it for one release."""

import warnings

from semrec.prompts.sid_placeholders import *  # noqa: F403

warnings.warn(
    "semrec.data.sid_placeholders moved to semrec.prompts.sid_placeholders; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

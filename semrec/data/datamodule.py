"""Moved to :mod:`semrec.prompts.datamodule`; this path re-exports it for one release."""

import warnings

from semrec.prompts.datamodule import *  # noqa: F403

warnings.warn(
    "semrec.data.datamodule moved to semrec.prompts.datamodule; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

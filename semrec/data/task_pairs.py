"""Moved to :mod:`semrec.prompts.task_pairs`; this path re-exports it for one release."""

import warnings

from semrec.prompts.task_pairs import *  # noqa: F403

warnings.warn(
    "semrec.data.task_pairs moved to semrec.prompts.task_pairs; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

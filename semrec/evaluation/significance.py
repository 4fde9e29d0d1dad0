"""Moved to :mod:`semrec.metrics.significance`; this path re-exports it for one release."""

import warnings

from semrec.metrics.significance import *  # noqa: F403

warnings.warn(
    "semrec.evaluation.significance moved to semrec.metrics.significance; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

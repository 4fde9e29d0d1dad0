"""Moved to :mod:`semrec.metrics.per_user`; this path re-exports it for one release."""

import warnings

from semrec.metrics.per_user import *  # noqa: F403

warnings.warn(
    "semrec.evaluation.per_user moved to semrec.metrics.per_user; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

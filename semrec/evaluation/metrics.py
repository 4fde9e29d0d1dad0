"""Moved to :mod:`semrec.metrics.ranking`; this path re-exports it for one release."""

import warnings

from semrec.metrics.ranking import *  # noqa: F403

warnings.warn(
    "semrec.evaluation.metrics moved to semrec.metrics.ranking; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

"""Moved to :mod:`semrec.metrics.popularity`; this path re-exports it for one release."""

import warnings

from semrec.metrics.popularity import *  # noqa: F403

warnings.warn(
    "semrec.evaluation.popularity moved to semrec.metrics.popularity; import it from there",
    DeprecationWarning,
    stacklevel=2,
)

"""The error every part of the annotate stage raises for bad input or a failed annotator."""

from __future__ import annotations


class AnnotationError(ValueError):
    """Annotations could not be requested, generated, read or stored; the message says why."""

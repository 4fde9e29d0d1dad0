"""The error every part of the annotate stage raises for bad input or a failed annotator."""

from __future__ import annotations


class AnnotationError(ValueError):
    """Annotations could not be requested, generated, read or stored; the message says why."""


class MissingAnnotations(AnnotationError):
    """A stage needs annotations that are not cached (or none of them is usable)."""

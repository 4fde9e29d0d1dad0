"""Errors that several layers raise; this module imports nothing from semrec.

Each layer's own errors stay beside it (``DataError`` in ``data``, ``ConfigError`` in
``config``); what lives here is raised by code below the layer that gives it its meaning,
such as the factories refusing a run before a run directory exists.
"""

from __future__ import annotations


class RunError(RuntimeError):
    """A run is inconsistent with its config, its directory or its inputs, or incomplete."""

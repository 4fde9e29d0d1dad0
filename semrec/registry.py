"""One small generic registry shared by tokenizers, tasks, text encoders and annotators.

Components register under a name; configs refer to them by that name, so swapping an
ablation is a one-word change in YAML.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, options: list[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'a', 'b'?"`` for the options closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(name, options, n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


class UnknownComponentError(KeyError):
    """A config named a component that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class NotImplementedComponentError(UnknownComponentError):
    """A config named a component that is planned but not implemented yet."""


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._planned: dict[str, str] = {}

    def plan(self, name: str, note: str) -> None:
        """Reserve ``name`` for a component that is not implemented yet; ``get`` says so."""
        self._planned[name] = note

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@TOKENIZERS.register("rqkmeans")``."""

        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            if name in self._planned:
                raise NotImplementedComponentError(
                    f"{self.kind} {name!r} is not implemented yet ({self._planned[name]}); "
                    f"available: {', '.join(self.names())}"
                ) from None
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, list(self._entries))} "
                f"(registered: {', '.join(sorted(self._entries))})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

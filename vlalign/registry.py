"""A tiny name → object registry.

Config strings (``loss: ipo``, ``reward: clip``, ``family: qwen2_vl``) pick an implementation by
name; adding an implementation is decorating one function, never a new branch in an if/elif ladder.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names fail with the closest known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}."
            ) from None

    def known(self, name: str) -> str:
        """``name`` if registered, else the same message as a ValueError: what a pydantic validator raises,
        so a config error names the key that holds the unknown name."""
        try:
            self.get(name)
        except KeyError as exc:
            raise ValueError(str(exc).strip('"')) from None
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

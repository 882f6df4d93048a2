"""One generic name -> factory registry, used for backbone sources, strategies and datasets."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from transferkit.errors import unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str


class Registry(Generic[T]):
    """A mapping from names to factories with helpful errors.

    Example:
        >>> STRATEGIES = Registry("strategy")
        >>> @STRATEGIES.register("linear-probe", help="frozen backbone, trained head")
        ... class LinearProbe: ...
        >>> STRATEGIES.get("linear-probe") is LinearProbe
        True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        def add(o: T) -> T:
            if name in self._entries and self._entries[name].obj is not o:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            doc = help or ((getattr(o, "__doc__", None) or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, o, doc)
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

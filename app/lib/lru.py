"""`BoundedTTLCache`: a small in-process map whose entries expire and whose size is capped.

When full, the least recently used entry goes; nothing ever empties the whole map, so a client who can add
entries (e.g. by sending unknown API keys) can push out old entries of that cache only, one at a time, and
never make an instance forget everything at once."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedTTLCache(Generic[K, V]):
    __slots__ = ("_clock", "_entries", "maxsize", "ttl")

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The live value for `key` (and marks it recently used), or None; an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def set(self, key: K, value: V, ttl: float | None = None) -> None:
        """Stores `value` for `ttl` seconds (default: the cache's); evicts the least recently used when full."""
        self._entries[key] = (value, self._clock() + (self.ttl if ttl is None else ttl))
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

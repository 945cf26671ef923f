"""A small, thread-safe, bounded LRU cache (pure Python).

Used for text embeddings (keyed by ``(target, text)``) by the encoder and by the node for
encoded frames: query texts repeat across frames, so a hit saves a whole language-model
pass. Values are stored as given (tensors stay on their device).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LRUCache(Generic[K, V]):
    """Least-recently-used mapping that never holds more than ``maxsize`` entries.

    ``maxsize=0`` disables caching (every ``get`` misses, ``put`` stores nothing). All
    methods take one lock, so concurrent readers and writers are safe; ``get_or_compute``
    runs the (slow) compute function outside the lock.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self.maxsize = int(maxsize)
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for ``key`` (marked most recent), or ``default``; counts hit/miss."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> None:
        """Store ``value``; evicts the least recently used entries beyond ``maxsize``."""
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """Cached value, or ``compute()`` stored and returned (compute runs unlocked)."""
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        value = compute()
        self.put(key, value)
        return value

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def keys(self) -> Iterator[K]:
        """Snapshot of the keys, least recent first."""
        with self._lock:
            return iter(list(self._data.keys()))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = 0
            self.misses = 0

    def stats(self) -> dict[str, int]:
        """Counters for diagnostics: size, maxsize, hits, misses."""
        with self._lock:
            return {"size": len(self._data), "maxsize": self.maxsize,
                    "hits": self.hits, "misses": self.misses}

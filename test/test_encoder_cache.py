"""The bounded, thread-safe LRU cache used for text embeddings (and by the node)."""
from __future__ import annotations

import threading

import pytest

from objembed_ros.core.cache import LRUCache


def test_lru_evicts_least_recent_and_counts() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now most recent
    cache.put("c", 3)  # evicts b
    assert "b" not in cache and len(cache) == 2
    assert cache.get("b") is None
    assert cache.stats() == {"size": 2, "maxsize": 2, "hits": 1, "misses": 1}
    calls = []
    assert cache.get_or_compute("c", lambda: calls.append(1) or 9) == 3
    assert cache.get_or_compute("d", lambda: calls.append(1) or 4) == 4
    assert calls == [1] and list(cache.keys()) == ["c", "d"]


def test_lru_zero_size_and_validation() -> None:
    cache: LRUCache[str, int] = LRUCache(0)
    cache.put("a", 1)
    assert len(cache) == 0 and cache.get("a") is None
    with pytest.raises(ValueError):
        LRUCache(-1)


def test_lru_threads_stay_bounded() -> None:
    cache: LRUCache[int, int] = LRUCache(50)

    def work(offset: int) -> None:
        for i in range(2000):
            cache.put((i * 7 + offset) % 300, i)
            cache.get(i % 300)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == 8000

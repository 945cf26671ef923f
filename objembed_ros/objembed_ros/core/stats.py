"""Small, thread-safe meters for diagnostics: event rates, latency percentiles, counters by
reason, and a throttle for warnings (numpy only, no ROS)."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np


class RateMeter:
    """Events per second over a sliding time window (default 5 s)."""

    def __init__(self, window_s: float = 5.0, max_events: int = 10_000) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)
            self.total += 1

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


class LatencyWindow:
    """The last `size` durations (seconds); percentiles in milliseconds."""

    def __init__(self, size: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._values.append(float(seconds))

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def percentiles_ms(self, qs: tuple[float, ...] = (50.0, 90.0, 99.0)) -> dict[str, float]:
        """{'p50': ms, ...}; empty dict when nothing was recorded."""
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64)
        if values.size == 0:
            return {}
        values_ms = np.percentile(values, qs) * 1e3
        return {f"p{q:g}": float(v) for q, v in zip(qs, values_ms, strict=True)}


class ReasonCounter:
    """Counts by reason (e.g. rejected inputs: 'bad_encoding', 'truncated_data')."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[reason] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


class Throttle:
    """True at most once per `period_s` per key: bad inputs at 30 Hz must not flood the log."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                return False
            self._last[key] = now
            return True

"""Small, thread-safe meters for diagnostics: event rates, latency percentiles, counters by
reason, failure streaks, and a throttle for warnings (numpy only, no ROS)."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FailureState:
    total: int  # failures since start
    in_a_row: int  # failures since the last success
    last: str  # the last failure's message ("" before the first)
    failing: bool  # in_a_row reached the threshold


class FailureStreak:
    """Failures of a repeated job (encoding frames): one failure is an event to count, a run
    of ``threshold`` in a row means the job keeps failing (an ERROR for /diagnostics) until
    the next success."""

    def __init__(self, threshold: int = 5) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        self.threshold = threshold
        self._total = self._in_a_row = 0
        self._last = ""
        self._lock = threading.Lock()

    def success(self) -> None:
        with self._lock:
            self._in_a_row = 0

    def failure(self, message: str) -> FailureState:
        with self._lock:
            self._total += 1
            self._in_a_row += 1
            self._last = message
        return self.state()

    def state(self) -> FailureState:
        with self._lock:
            return FailureState(self._total, self._in_a_row, self._last,
                                self._in_a_row >= self.threshold)


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


# Frames larger than this travel as many UDP fragments; best effort loses the whole frame when
# one fragment is lost (Fast DDS's default UDP transport, without shared memory).
LARGE_FRAME_BYTES = 64 * 1024
LOSS_WARN_FRACTION = 0.5  # WARN when more than this share of the frames is lost
MIN_EXPECTED_FRAMES = 10  # ... and at least this many frames were expected in the window


@dataclass(frozen=True)
class TransportHealth:
    """One camera's arrivals over the window: received vs expected frame rate."""

    received_hz: float
    expected_hz: float  # from header stamps (and lost-message events when the RMW has them)
    expected_frames: float  # frames the publisher sent in the window, estimated
    lost_fraction: float  # 1 - received / expected, 0 when nothing is expected

    @property
    def mostly_lost(self) -> bool:
        return (self.expected_frames >= MIN_EXPECTED_FRAMES
                and self.lost_fraction > LOSS_WARN_FRACTION)


class TransportMeter:
    """Expected vs received frame rate of one image topic, from the frames' header stamps.

    The publisher's period is read from the stamps that arrived: the median of the stamp gaps
    within 1.5x of the shortest one (consecutive frames that both arrived; robust to jitter).
    Frames the middleware reports lost (message_lost events) count as sent too. Stamps going
    backwards (a replay restarting) reset the estimate.
    """

    def __init__(self, window_s: float = 5.0, max_events: int = 2000) -> None:
        self.window_s = window_s
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=max_events)  # (now, stamp)
        self._lost: deque[tuple[float, int]] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.frame_bytes = 0  # size of the last frame's data

    def arrived(self, stamp_ns: int, now: float, frame_bytes: int = 0) -> None:
        with self._lock:
            if self._arrivals and stamp_ns < self._arrivals[-1][1]:
                self._arrivals.clear()
                self._lost.clear()
            self._arrivals.append((now, int(stamp_ns)))
            self.frame_bytes = int(frame_bytes)

    def lost(self, count: int, now: float) -> None:
        with self._lock:
            self._lost.append((now, int(count)))

    def health(self, now: float) -> TransportHealth:
        with self._lock:
            for events in (self._arrivals, self._lost):
                while events and now - events[0][0] > self.window_s:
                    events.popleft()
            stamps = np.array([s for _, s in self._arrivals], dtype=np.int64)
            lost = sum(n for _, n in self._lost)
            first = self._arrivals[0][0] if self._arrivals else now
        received = len(stamps)
        span = min(self.window_s, max(now - first, 1e-9)) if received else 0.0
        received_hz = received / span if span else 0.0
        expected = float(received + lost)
        gaps = np.diff(stamps)
        gaps = gaps[gaps > 0]
        if gaps.size:
            period_ns = float(np.median(gaps[gaps <= 1.5 * gaps.min()]))
            from_stamps = (stamps[-1] - stamps[0]) / period_ns + 1.0
            expected = max(expected, from_stamps)
        expected_hz = received_hz * expected / received if received else 0.0
        lost_fraction = 1.0 - received / expected if expected > 0 else 0.0
        return TransportHealth(received_hz, expected_hz, expected, max(lost_fraction, 0.0))


def transport_cause(reliable: bool, frame_bytes: int, shared_memory: bool) -> str:
    """The likely reason most frames of a camera never arrive, and what to do."""
    if not reliable and frame_bytes > LARGE_FRAME_BYTES and not shared_memory:
        return (f"best-effort QoS with large frames ({frame_bytes // 1024} KiB) over UDP "
                "without the shared-memory transport: use the Fast DDS shared-memory profile "
                "(config/fastdds_shm.xml) in BOTH the camera and this node, or a reliable "
                "image QoS (README: Choosing QoS)")
    if not reliable:
        return ("best-effort QoS: the publisher or the transport drops frames (check that "
                "the camera process uses the same shared-memory profile, or use reliable QoS)")
    return "reliable QoS: the publisher, or the link, cannot keep up with its own rate"

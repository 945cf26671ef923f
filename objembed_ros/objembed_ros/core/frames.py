"""Frame bookkeeping for the node's worker (no ROS, no torch): a bounded ring of recent
encoded frames per camera, the newest-frame-wins mailbox between the subscription callbacks
and the worker thread, and approximate-time pairing of depth / camera_info to colour frames.

Stamps are integer nanoseconds (ROS time: sec * 1e9 + nanosec). Everything here is
thread-safe: callbacks, the worker and service threads share these objects.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def stamp_to_ns(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


@dataclass(frozen=True)
class Stamped(Generic[T]):
    camera: str
    stamp_ns: int
    item: T
    seq: int  # insertion order across all cameras: "most recently encoded" = highest seq


class FrameRing(Generic[T]):
    """The last `size` items per camera, with their stamps.

    Why per camera: one node can watch several cameras, and a busy camera must not push a
    quiet one's frames out of the cache.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("FrameRing size must be >= 1")
        self.size = size
        self._lock = threading.Lock()
        self._rings: dict[str, deque[Stamped[T]]] = {}
        self._seq = 0
        self._changed = threading.Condition(self._lock)

    def add(self, camera: str, stamp_ns: int, item: T) -> Stamped[T]:
        with self._lock:
            self._seq += 1
            entry = Stamped(camera, int(stamp_ns), item, self._seq)
            ring = self._rings.setdefault(camera, deque(maxlen=self.size))
            ring.append(entry)
            self._changed.notify_all()
            return entry

    def latest(self, camera: str | None = None) -> Stamped[T] | None:
        """The most recently added item of `camera`, or of any camera when None/empty."""
        with self._lock:
            return self._latest_locked(camera)

    def _latest_locked(self, camera: str | None) -> Stamped[T] | None:
        if camera:
            ring = self._rings.get(camera)
            return ring[-1] if ring else None
        best = None
        for ring in self._rings.values():
            if ring and (best is None or ring[-1].seq > best.seq):
                best = ring[-1]
        return best

    def wait_newer(self, seq: int, camera: str | None, timeout: float) -> Stamped[T] | None:
        """Block until an item with seq > `seq` exists (for `camera`, or any); None on timeout."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            while True:
                entry = self._latest_locked(camera)
                if entry is not None and entry.seq > seq:
                    return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def by_stamp(self, stamp_ns: int, camera: str | None = None,
                 tolerance_ns: int = 0) -> Stamped[T] | None:
        """The item whose stamp is nearest `stamp_ns` within tolerance (ties: newest)."""
        best, best_dt = None, None
        for entry in self.items(camera):
            dt = abs(entry.stamp_ns - stamp_ns)
            if dt <= tolerance_ns and (best_dt is None or dt <= best_dt):
                best, best_dt = entry, dt
        return best

    def items(self, camera: str | None = None) -> list[Stamped[T]]:
        """A snapshot, oldest first per camera."""
        with self._lock:
            if camera:
                return list(self._rings.get(camera, ()))
            return [e for ring in self._rings.values() for e in ring]

    def cameras(self) -> list[str]:
        with self._lock:
            return [c for c, ring in self._rings.items() if ring]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(r) for r in self._rings.values())

    def clear(self) -> None:
        with self._lock:
            self._rings.clear()


class LatestMailbox(Generic[T]):
    """Newest-item-wins hand-off from callbacks to one worker, one slot per key (camera).

    put() replaces an item the worker has not taken yet and counts it as dropped: while the
    worker is busy, old frames are worth nothing. take() serves keys in the order they became
    pending, so several cameras share the worker fairly.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: OrderedDict[Hashable, T] = OrderedDict()
        self._closed = False
        self.dropped = 0
        self.accepted = 0

    def put(self, key: Hashable, item: T) -> bool:
        """Store item for key; True when it replaced (dropped) a waiting one."""
        with self._cond:
            replaced = key in self._slots
            if replaced:
                self.dropped += 1
                self._slots[key] = item  # keeps its place in the queue order
            else:
                self._slots[key] = item
            self.accepted += 1
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[Hashable, T] | None:
        """The oldest pending (key, item), waiting up to timeout; None on timeout or close."""
        with self._cond:
            if not self._slots and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._slots:
                return None
            return self._slots.popitem(last=False)

    def pending(self) -> int:
        with self._cond:
            return len(self._slots)

    def clear(self) -> int:
        """Drop everything waiting (e.g. on deactivate); returns how many were dropped."""
        with self._cond:
            n = len(self._slots)
            self._slots.clear()
            self.dropped += n
            return n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed


# Pairing outcomes (also used as GroundedObject.position_status when no depth is paired).
PAIR_OK = "ok"
PAIR_EMPTY = "empty"  # nothing received yet
PAIR_STALE = "stale"  # received, but nothing within the slop of the stamp


class StampBuffer(Generic[T]):
    """A few recent stamped messages (depth, camera_info) to pair with colour frames.

    message_filters' ApproximateTime is not available from pip; pairing by nearest stamp
    within a slop is all the node needs, because depth and colour come from one camera driver
    with (nearly) equal stamps.
    """

    def __init__(self, size: int = 8) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[int, T]] = deque(maxlen=max(size, 1))

    def add(self, stamp_ns: int, item: T) -> None:
        with self._lock:
            self._items.append((int(stamp_ns), item))

    def nearest(self, stamp_ns: int, slop_ns: int,
                where: Callable[[T], bool] | None = None) -> tuple[str, T | None, int]:
        """(status, item, |dt| ns) of the item nearest stamp_ns among those `where` accepts;
        item None unless status ok."""
        with self._lock:
            items = [e for e in self._items if where is None or where(e[1])]
            if not items:
                return PAIR_EMPTY, None, 0
            best_stamp, best = min(items, key=lambda e: abs(e[0] - stamp_ns))
        dt = abs(best_stamp - stamp_ns)
        if dt > slop_ns:
            return PAIR_STALE, None, dt
        return PAIR_OK, best, dt

    def latest(self) -> tuple[int, T] | None:
        with self._lock:
            return self._items[-1] if self._items else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

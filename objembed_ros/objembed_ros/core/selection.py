"""Which cached frame a service call is answered from, and how long it may wait (no ROS).

Policy, in one place:
- Timeouts must be finite and >= 0 (NaN, inf and negatives are refused: a NaN wait would spin,
  an infinite one never ends); values above `max_wait` are clamped to it and the answer says
  so. A call waits for a frame only when its timeout is > 0.
- min_score must be a finite number in [0, 1]; top_k <= 0 keeps all.
- A frame is chosen by exact header stamp (`stamp_ns` != 0), as the newest frame received
  after the call started (`fresh`), or as the newest frame (optionally not older than
  `max_age` seconds since it was received). Stamp and fresh do not combine.
- Calls waiting for a frame hold no thread: they register in FrameWaiters, which the frame
  path completes (`offer`) and a periodic tick expires (`expire`).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import Stamped

T = TypeVar("T")


@dataclass(frozen=True)
class Wait:
    """A validated wait: `seconds` to wait at most, and a note when it was clamped."""

    seconds: float
    note: str = ""


def validate_timeout(value: float, max_wait: float, name: str = "timeout") -> Wait:
    """InputError for NaN, inf or negative; clamp to max_wait (the note says so)."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"bad {name} {value}: must be a finite number of seconds >= 0")
    if value > max_wait:
        return Wait(float(max_wait), f"{name} {value:g} s clamped to max_wait {max_wait:g} s")
    return Wait(value)


def validate_min_score(value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InputError(f"bad min_score {value}: must be a number in [0, 1]")
    return value


def validate_top_k(value: int) -> int:
    """top_k as given: <= 0 keeps all (Ground.srv); any int32 is valid."""
    return int(value)


@dataclass(frozen=True)
class FrameQuery:
    """What a call asks of the frame cache."""

    camera: str | None  # resolved image topic; None = any camera
    stamp_ns: int = 0  # exact header stamp; 0 = no stamp given
    fresh: bool = False  # only frames received after `called_at`
    called_at: float = 0.0  # monotonic time the call started
    max_age: float = 0.0  # seconds since received; 0 = no limit (not for stamp/fresh)

    def check(self) -> None:
        if self.stamp_ns and self.fresh:
            raise InputError("frame_stamp and wait_for_fresh_frame do not combine: a frame "
                             "with a given stamp is never newer than the call")


def fmt_stamp(stamp_ns: int) -> str:
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return f"{sec}.{nsec:09d}"


def accepts(query: FrameQuery, entry: Stamped[T], received: float) -> bool:
    """Whether a waiting call takes this newly cached frame."""
    if query.camera and entry.camera != query.camera:
        return False
    return received >= query.called_at if query.fresh else True


def pick_frame(query: FrameQuery, newest: Stamped[T] | None, by_stamp: Stamped[T] | None,
               received_of: Callable[[T], float], now: float) -> tuple[Stamped[T] | None, str]:
    """The frame to answer from now, or (None, why). `newest` is the newest cached frame of
    the query's camera (or any), `by_stamp` the one with exactly the query's stamp."""
    if query.stamp_ns:
        if by_stamp is None:
            where = f" of {query.camera}" if query.camera else ""
            return None, f"no cached frame{where} with stamp {fmt_stamp(query.stamp_ns)}"
        return by_stamp, ""
    if newest is None:
        return None, "no frame yet"
    if query.fresh:
        if received_of(newest.item) >= query.called_at:
            return newest, ""
        return None, "no fresh frame yet"
    age = now - received_of(newest.item)
    if query.max_age > 0 and age > query.max_age:
        return None, (f"no recent frame: newest is {age:.2f} s old > max_frame_age "
                      f"{query.max_age:g} s")
    return newest, ""


def wait_failure(query: FrameQuery, wait: Wait) -> str:
    """The answer of a call whose frame wait ran out."""
    what = "fresh frame" if query.fresh else "frame"
    note = f" ({wait.note})" if wait.note else ""
    return f"timeout: no {what} within {wait.seconds:g} s{note}"


Done = Callable[[T | None, str], None]


class FrameWaiters(Generic[T]):
    """Calls waiting for a frame; completed from other threads, never blocking any.

    Each waiter has an accept predicate, a deadline (monotonic seconds) and a `done(item, why)`
    callback, called exactly once: with the first offered item it accepts (why ""), with None
    and "timeout" from `expire`, or with None and the reason given to `fail_all`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, tuple[Callable[[T], bool], float, Done[T]]] = {}

    def add(self, accept: Callable[[T], bool], deadline: float, done: Done[T]) -> int:
        with self._lock:
            self._next += 1
            self._waiting[self._next] = (accept, deadline, done)
            return self._next

    def complete(self, key: int, item: T | None, why: str = "") -> bool:
        """Complete one waiter now (e.g. a frame that arrived while it registered)."""
        with self._lock:
            waiter = self._waiting.pop(key, None)
        if waiter is None:
            return False
        waiter[2](item, why)
        return True

    def offer(self, item: T) -> int:
        """Hand a new frame to every waiter that accepts it; returns how many took it."""
        with self._lock:
            taken = [(k, w) for k, w in self._waiting.items() if w[0](item)]
            for k, _ in taken:
                del self._waiting[k]
        for _, (_, _, done) in taken:
            done(item, "")
        return len(taken)

    def expire(self, now: float) -> int:
        with self._lock:
            late = [(k, w) for k, w in self._waiting.items() if w[1] <= now]
            for k, _ in late:
                del self._waiting[k]
        for _, (_, _, done) in late:
            done(None, "timeout")
        return len(late)

    def fail_all(self, why: str) -> int:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for _, _, done in waiting.values():
            done(None, why)
        return len(waiting)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

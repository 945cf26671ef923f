"""Request validation, frame selection and the frame-wait registry (core/selection.py)."""
from __future__ import annotations

import math

import pytest

from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import Stamped
from objembed_ros.core.selection import (
    FrameQuery,
    FrameWaiters,
    Wait,
    accepts,
    pick_frame,
    validate_min_score,
    validate_timeout,
    wait_failure,
)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5])
def test_non_finite_and_negative_timeouts_are_refused(bad: float) -> None:
    with pytest.raises(InputError, match="finite number of seconds >= 0"):
        validate_timeout(bad, 30.0)


def test_large_timeouts_are_clamped_and_say_so() -> None:
    assert validate_timeout(1e9, 30.0) == Wait(30.0, "timeout 1e+09 s clamped to max_wait 30 s")
    assert validate_timeout(30.0, 30.0) == Wait(30.0)
    assert validate_timeout(0.0, 30.0) == Wait(0.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.01, 1.01])
def test_min_score_outside_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(InputError, match="min_score"):
        validate_min_score(bad)


def entry(camera: str, stamp: int, received: float, seq: int) -> Stamped[float]:
    return Stamped(camera, stamp, received, seq)  # the item is its receive time


def test_pick_frame_newest_fresh_stamp_and_age() -> None:
    old = entry("cam", 1_000, received=10.0, seq=1)
    new = entry("cam", 2_000, received=20.0, seq=2)
    rec = float
    assert pick_frame(FrameQuery("cam"), new, None, rec, now=21.0) == (new, "")
    assert pick_frame(FrameQuery("cam"), None, None, rec, now=21.0) == (None, "no frame yet")
    # fresh: only a frame received after the call started
    assert pick_frame(FrameQuery("cam", fresh=True, called_at=20.5), new, None, rec, 21.0) == (
        None, "no fresh frame yet")
    assert pick_frame(FrameQuery("cam", fresh=True, called_at=19.0), new, None, rec, 21.0) == (
        new, "")
    # by exact stamp, even when older than the newest
    assert pick_frame(FrameQuery("cam", stamp_ns=1_000), new, old, rec, 21.0) == (old, "")
    frame, why = pick_frame(FrameQuery("cam", stamp_ns=1_500_000_000), new, None, rec, 21.0)
    assert frame is None and why == "no cached frame of cam with stamp 1.500000000"
    # max_age
    frame, why = pick_frame(FrameQuery("cam", max_age=0.5), new, None, rec, now=21.0)
    assert frame is None and why == "no recent frame: newest is 1.00 s old > max_frame_age 0.5 s"


def test_stamp_and_fresh_do_not_combine() -> None:
    with pytest.raises(InputError, match="do not combine"):
        FrameQuery("cam", stamp_ns=5, fresh=True).check()


def test_accepts_checks_camera_and_freshness() -> None:
    q = FrameQuery("cam", fresh=True, called_at=5.0)
    assert accepts(q, entry("cam", 1, 5.0, 1), 5.0)
    assert not accepts(q, entry("cam", 1, 4.9, 1), 4.9)
    assert not accepts(q, entry("other", 1, 6.0, 1), 6.0)
    assert accepts(FrameQuery(None), entry("other", 1, 0.0, 1), 0.0)


def test_wait_failure_message() -> None:
    assert wait_failure(FrameQuery("c", fresh=True), Wait(30.0, "timeout 1e+09 s clamped")) == (
        "timeout: no fresh frame within 30 s (timeout 1e+09 s clamped)")
    assert wait_failure(FrameQuery("c"), Wait(0.4)) == "timeout: no frame within 0.4 s"


def test_waiters_complete_once_each() -> None:
    waiters: FrameWaiters[int] = FrameWaiters()
    got: list[tuple[str, int | None, str]] = []
    waiters.add(lambda x: x > 5, deadline=10.0, done=lambda i, w: got.append(("big", i, w)))
    waiters.add(lambda x: True, deadline=1.0, done=lambda i, w: got.append(("any", i, w)))
    key = waiters.add(lambda x: True, deadline=99.0, done=lambda i, w: got.append(("k", i, w)))
    assert waiters.complete(key, 42) and not waiters.complete(key, 43)
    assert waiters.expire(now=2.0) == 1  # "any" timed out
    assert waiters.offer(3) == 0  # "big" does not take 3
    assert waiters.offer(7) == 1 and waiters.offer(8) == 0  # taken once
    waiters.add(lambda x: True, deadline=99.0, done=lambda i, w: got.append(("s", i, w)))
    assert waiters.fail_all("shutting down") == 1 and len(waiters) == 0
    assert got == [("k", 42, ""), ("any", None, "timeout"), ("big", 7, ""),
                   ("s", None, "shutting down")]

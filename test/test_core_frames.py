"""Frame ring, newest-frame mailbox, stamp pairing and diagnostics meters."""
from __future__ import annotations

import threading
import time

import pytest

from objembed_ros.core.frames import (
    PAIR_EMPTY,
    PAIR_OK,
    PAIR_STALE,
    FrameRing,
    LatestMailbox,
    StampBuffer,
    stamp_to_ns,
)
from objembed_ros.core.stats import (
    FailureState,
    FailureStreak,
    LatencyWindow,
    RateMeter,
    ReasonCounter,
    Throttle,
)


def test_ring_is_bounded_per_camera() -> None:
    ring: FrameRing[str] = FrameRing(3)
    for i in range(10):
        ring.add("front", i, f"f{i}")
    ring.add("back", 100, "b0")
    assert [e.item for e in ring.items("front")] == ["f7", "f8", "f9"]
    assert len(ring) == 4
    assert ring.latest().item == "b0"  # most recently added of any camera
    assert ring.latest("front").item == "f9"
    assert ring.latest("nope") is None
    assert sorted(ring.cameras()) == ["back", "front"]


def test_ring_lookup_by_stamp() -> None:
    ring: FrameRing[int] = FrameRing(4)
    for stamp in (1000, 2000, 3000):
        ring.add("cam", stamp, stamp)
    assert ring.by_stamp(2000).item == 2000
    assert ring.by_stamp(2100) is None
    assert ring.by_stamp(2100, tolerance_ns=200).item == 2000
    assert ring.by_stamp(2600, camera="cam", tolerance_ns=500).item == 3000
    assert ring.by_stamp(2000, camera="other", tolerance_ns=10**9) is None


def test_ring_wait_newer() -> None:
    ring: FrameRing[int] = FrameRing(2)
    ring.add("cam", 1, 1)
    seq = ring.last_seq
    t0 = time.monotonic()
    assert ring.wait_newer(seq, None, 0.05) is None
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.05, lambda: ring.add("cam", 2, 2)).start()
    entry = ring.wait_newer(seq, "cam", 2.0)
    assert entry is not None and entry.item == 2
    with pytest.raises(ValueError):
        FrameRing(0)


def test_mailbox_newest_wins_and_counts_drops() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    assert not box.put("cam", 1)
    assert box.put("cam", 2)
    assert box.put("cam", 3)
    assert box.dropped == 2 and box.accepted == 3
    assert box.take(0) == ("cam", 3)
    assert box.take(0.01) is None


def test_mailbox_is_fair_between_cameras() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    box.put("a", 1)
    box.put("b", 1)
    box.put("a", 2)  # replaces a's frame but keeps a's place in line
    assert box.take(0) == ("a", 2)
    assert box.take(0) == ("b", 1)
    box.put("a", 3)
    assert box.clear() == 1 and box.pending() == 0


def test_mailbox_close_wakes_worker() -> None:
    box: LatestMailbox[int] = LatestMailbox()
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(box.take(10.0)))
    worker.start()
    time.sleep(0.05)
    box.close()
    worker.join(2.0)
    assert not worker.is_alive() and got == [None]
    box.reopen()
    box.put("a", 1)
    assert box.take(0) == ("a", 1)


def test_stamp_buffer_pairing() -> None:
    buf: StampBuffer[str] = StampBuffer(size=3)
    assert buf.nearest(0, 10)[0] == PAIR_EMPTY
    for s in (stamp_to_ns(1, 0), stamp_to_ns(1, 33_000_000), stamp_to_ns(1, 66_000_000)):
        buf.add(s, f"d{s}")
    status, item, dt = buf.nearest(stamp_to_ns(1, 34_000_000), 5_000_000)
    assert status == PAIR_OK and item == f"d{stamp_to_ns(1, 33_000_000)}" and dt == 1_000_000
    status, item, _ = buf.nearest(stamp_to_ns(2, 0), 5_000_000)
    assert status == PAIR_STALE and item is None
    buf.add(stamp_to_ns(1, 99_000_000), "newest")
    assert len(buf) == 3  # bounded
    assert buf.latest() == (stamp_to_ns(1, 99_000_000), "newest")


def test_meters() -> None:
    rate = RateMeter(window_s=10.0)
    for i in range(11):
        rate.tick(now=100.0 + i * 0.1)
    assert rate.rate(now=101.0) == pytest.approx(10.0)
    assert rate.rate(now=200.0) == 0.0  # everything aged out of the window
    lat = LatencyWindow(size=100)
    assert lat.percentiles_ms() == {}
    for i in range(1, 201):
        lat.add(i / 1000)
    p = lat.percentiles_ms()
    assert len(lat) == 100 and p["p50"] == pytest.approx(150.5)
    counter = ReasonCounter()
    counter.add("bad_encoding")
    counter.add("bad_encoding")
    counter.add("wrong_step")
    assert counter.snapshot() == {"bad_encoding": 2, "wrong_step": 1} and counter.total() == 3
    throttle = Throttle(5.0)
    assert throttle.ready("x", now=0.0) and not throttle.ready("x", now=4.0)
    assert throttle.ready("y", now=4.0) and throttle.ready("x", now=5.5)


def test_failure_streak() -> None:
    streak = FailureStreak(threshold=3)
    assert streak.state() == FailureState(0, 0, "", False)
    assert streak.failure("a") == FailureState(1, 1, "a", False)
    streak.success()
    assert streak.failure("b") == FailureState(2, 1, "b", False)
    assert streak.failure("c") == FailureState(3, 2, "c", False)
    assert streak.failure("d") == FailureState(4, 3, "d", True)  # third in a row
    assert streak.failure("e").failing
    streak.success()  # one good frame clears the alarm, not the total
    assert streak.state() == FailureState(5, 0, "e", False)
    with pytest.raises(ValueError):
        FailureStreak(threshold=0)


def test_transport_meter_counts_lost_frames_from_stamps() -> None:
    from objembed_ros.core.stats import TransportMeter

    period = 33_333_333  # a 30 Hz camera
    meter = TransportMeter(window_s=5.0)
    # 90 frames sent over 3 s; frames 0..3 arrive, then 1 in 9 (frames 9k): most gaps are 9
    sent = [i for i in range(90) if i < 4 or i % 9 == 0]
    for i in sent:
        meter.arrived(i * period, now=i / 30, frame_bytes=921_600)
    health = meter.health(now=81 / 30)
    assert sent[-1] == 81  # stamps 0..81: 82 frames were sent up to the last one received
    assert health.expected_frames == pytest.approx(82, abs=1e-6)
    assert health.lost_fraction == pytest.approx(1 - len(sent) / 82)
    assert health.mostly_lost
    assert health.expected_hz == pytest.approx(health.received_hz * 82 / len(sent))
    # nothing lost: a steady stream with 1 ms jitter
    steady = TransportMeter(window_s=5.0)
    for i in range(60):
        steady.arrived(i * period + (i % 2) * 1_000_000, now=i / 30)
    h = steady.health(now=59 / 30)
    assert h.lost_fraction < 0.02 and not h.mostly_lost


def test_transport_meter_uses_lost_events_and_resets_on_replay() -> None:
    from objembed_ros.core.stats import TransportMeter

    meter = TransportMeter(window_s=5.0)
    for i in range(0, 40, 4):  # only every 4th stamp, never two consecutive
        meter.arrived(i * 10, now=i * 0.01)
    meter.lost(30, now=0.4)  # the middleware says 30 were lost
    assert meter.health(now=0.4).lost_fraction == pytest.approx(30 / 40)
    meter.arrived(0, now=0.5)  # stamps went backwards: a replay restarted
    assert meter.health(now=0.5).expected_frames == pytest.approx(1.0)


def test_transport_cause_names_the_shared_memory_profile() -> None:
    from objembed_ros.core.stats import transport_cause

    assert "shared-memory" in transport_cause(False, 921_600, shared_memory=False)
    assert "900 KiB" in transport_cause(False, 921_600, shared_memory=False)
    assert transport_cause(False, 1000, shared_memory=False).startswith("best-effort QoS:")
    assert transport_cause(True, 921_600, shared_memory=False).startswith("reliable QoS")


def test_external_pairing_rules() -> None:
    from objembed_ros.core.pairing import pair_newest_image

    images: StampBuffer[str] = StampBuffer(4)
    props: StampBuffer[tuple[str, str]] = StampBuffer(4)
    images.add(1_000, "img1")
    images.add(2_000, "img2")
    props.add(2_005, ("/other", "boxes-other"))
    assert pair_newest_image(images, props, 10, "/cam", lambda p: p[0]) is None
    props.add(1_990, ("/cam", "boxes-cam"))
    props.add(2_001, ("", "boxes-any"))  # empty camera matches any, and is nearest
    assert pair_newest_image(images, props, 10, "/cam", lambda p: p[0]) == (
        2_000, "img2", ("", "boxes-any"))
    assert len(images) == 0  # older waiting images are dropped once one pairs

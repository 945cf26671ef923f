"""The real node against hostile requests: bad and huge timeouts, 16 concurrent fresh-frame
waiters during a stream, a fuzz of every Ground/FindImage/SetQueries field at its extremes,
box repairs with request indices, frame selection by stamp, image_score, transport health."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from node_helpers import header
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from objembed_msgs.srv import FindImage, Ground, SetQueries
from objembed_ros.grounder import Grounder, GrounderConfig
from objembed_ros.ros.convert import rgb_to_image
from objembed_ros.ros.launcher import default_params_file, start_node
from objembed_ros.testing.ros_harness import RosClient

NS = "/robust"
NODE = f"{NS}/grounding_node"
W, H = 96, 64
MAX_WAIT = 6.0
CALL_BOUND = 60.0  # client-side: every call must be answered well within this


class Handle:
    def __init__(self, client: RosClient) -> None:
        self.client = client
        n = client.node
        self.pub = {cam: n.create_publisher(Image, f"{NS}/{cam}", qos_profile_sensor_data)
                    for cam in ("image", "idle_image", "lossy_image")}
        self.ground = n.create_client(Ground, f"{NODE}/ground")
        self.find = n.create_client(FindImage, f"{NODE}/find_image")
        self.setq = n.create_client(SetQueries, f"{NODE}/set_queries")
        self.diagnostics: list[DiagnosticArray] = []
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def call(self, client, request, timeout: float = CALL_BOUND):
        return self.client.call(client, request, timeout)


@pytest.fixture(scope="module")
def node(tiny_objembed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    log = tmp_path_factory.mktemp("robust") / "node.log"
    proc = start_node(params_file=default_params_file(), namespace=NS, log_path=log,
                      parameters={"checkpoint": str(tiny_objembed_dir),
                                  "proposer": "whole_image", "max_wait": MAX_WAIT,
                                  "image_topics": ["image", "idle_image", "lossy_image"],
                                  "diagnostics_period": 0.5, "max_query_tokens": 64,
                                  "frame_cache_size": 64})
    client = RosClient("robust_client")
    handle = Handle(client)
    try:
        deadline = time.monotonic() + 120
        while "model not ready" in handle.call(
                handle.ground, Ground.Request(queries=["x"], camera="idle_image")).message:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield handle, proc
    finally:
        client.close()
        proc.stop()
        if proc.popen.returncode != 0:
            print(proc.log()[-6000:])


@pytest.fixture(scope="module")
def rgb(photo: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(photo[100:100 + H, 150:150 + W])


def publish_until_served(handle: Handle, rgb: np.ndarray, stamp: int, cam: str = "image"):
    """Publish one frame until a Ground call by its stamp answers from it."""
    msg = rgb_to_image(rgb, header(stamp))
    deadline = time.monotonic() + 60
    while True:
        handle.pub[cam].publish(msg)
        resp = handle.call(handle.ground, Ground.Request(
            queries=["a face"], camera=cam, frame_stamp=header(stamp).stamp))
        if resp.success:
            return resp
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.1)


@pytest.mark.parametrize("timeout", [math.inf, math.nan, -math.inf, -1.0])
def test_bad_timeouts_are_refused(node, timeout: float) -> None:
    handle, proc = node
    for fresh in (True, False):
        resp = handle.call(handle.ground, Ground.Request(
            queries=["cup"], camera="idle_image", wait_for_fresh_frame=fresh, timeout=timeout))
        assert not resp.success
        assert "must be a finite number of seconds >= 0" in resp.message, resp.message
    assert proc.alive()


def test_huge_timeout_is_clamped_to_max_wait(node) -> None:
    handle, proc = node
    resp = handle.call(handle.ground, Ground.Request(
        queries=["cup"], camera="idle_image", wait_for_fresh_frame=True, timeout=1e9))
    assert not resp.success
    assert resp.message == (f"timeout: no fresh frame within {MAX_WAIT:g} s (timeout 1e+09 s "
                            f"clamped to max_wait {MAX_WAIT:g} s)")
    assert proc.alive()


def test_sixteen_fresh_waiters_during_a_stream(node, rgb: np.ndarray) -> None:
    """16 waiters (4 executor threads) all get a frame newer than the call; meanwhile a plain
    call is answered and the image callbacks keep running (else nobody would be served)."""
    handle, _ = node
    last = publish_until_served(handle, rgb, 10_000_000_000)
    last_stamp = last.results[0].header.stamp
    futures = [handle.ground.call_async(Ground.Request(  # one client, 16 calls
        queries=["a face"], camera="image", wait_for_fresh_frame=True, timeout=MAX_WAIT))
        for _ in range(16)]
    time.sleep(0.5)  # the calls are waiting now: no newer frame was published
    plain = handle.call(handle.ground, Ground.Request(queries=["a face"], camera="image"))
    assert plain.success and plain.results[0].header.stamp == last_stamp
    stop = threading.Event()

    def stream() -> None:
        stamp = 11_000_000_000
        while not stop.is_set():
            handle.pub["image"].publish(rgb_to_image(rgb, header(stamp)))
            stamp += 33_333_333
            time.sleep(1 / 30)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        handle.client.wait_for(lambda: all(f.done() for f in futures), CALL_BOUND,
                               f"answers ({sum(f.done() for f in futures)} of 16)")
    finally:
        stop.set()
        streamer.join()
    for f in futures:
        resp = f.result()
        assert resp.success, resp.message
        stamp = resp.results[0].header.stamp
        assert (stamp.sec, stamp.nanosec) >= (11, 0), stamp  # a frame of the new stream


def test_frame_stamp_box_status_and_image_score(node, rgb: np.ndarray,
                                                tiny_objembed_dir: Path) -> None:
    handle, _ = node
    stamp = 20_000_000_000
    publish_until_served(handle, rgb, stamp)
    publish_until_served(handle, rgb[::-1].copy(), stamp + 1)  # a newer, different frame
    core = Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir),
                                        proposer="whole_image"))
    ref_frame = core.encode_frame(rgb, cache=False)
    want = core.ground(["a face"], ref_frame, with_image_score=True)[0]
    resp = handle.call(handle.ground, Ground.Request(
        queries=["a face"], camera="image", frame_stamp=header(stamp).stamp))
    assert resp.success, resp.message
    got = resp.results[0]
    assert got.header.stamp == header(stamp).stamp
    assert math.isfinite(got.image_score)
    assert got.image_score == pytest.approx(want.image_score, abs=1e-5)
    assert [o.score for o in got.objects] == pytest.approx([o.score for o in want.objects],
                                                           abs=1e-5)
    assert all(o.track_id == -1 for o in got.objects)
    boxes = [[10, 10, 50, 40], [50, 40, 10, 10], [-5, 10, 50, 90], [200, 10, 300, 40],
             [20, 20, 20, 60], [10, math.nan, 50, 40]]
    resp = handle.call(handle.ground, Ground.Request(
        queries=["a face"], camera="image", frame_stamp=header(stamp).stamp,
        boxes=[float(v) for b in boxes for v in b]))
    assert resp.success, resp.message
    assert list(resp.box_status) == [
        "ok", "reordered", "clipped", f"refused: wholly outside the {W}x{H} image",
        "refused: zero area", "refused: not finite"]
    objects = resp.results[0].objects
    assert sorted(o.proposal_index for o in objects) == [0, 1, 2]
    by_row = {o.proposal_index: o for o in objects}
    assert [by_row[0].x1, by_row[0].y1, by_row[0].x2, by_row[0].y2] == [10, 10, 50, 40]
    assert [by_row[1].x1, by_row[1].y1, by_row[1].x2, by_row[1].y2] == [10, 10, 50, 40]
    assert [by_row[2].x1, by_row[2].y2] == [0, H]
    assert resp.results[0].image_score == pytest.approx(want.image_score, abs=1e-5)
    all_refused = handle.call(handle.ground, Ground.Request(
        queries=["a face"], camera="image", boxes=[200.0, 10.0, 300.0, 40.0]))
    assert not all_refused.success and "no box could be scored" in all_refused.message
    assert list(all_refused.box_status) == [f"refused: wholly outside the {W}x{H} image"]
    missing = handle.call(handle.ground, Ground.Request(
        queries=["a face"], camera="image", frame_stamp=header(stamp + 5).stamp))
    assert not missing.success and "no cached frame" in missing.message
    both = handle.call(handle.ground, Ground.Request(
        queries=["a face"], frame_stamp=header(stamp).stamp, wait_for_fresh_frame=True))
    assert not both.success and "do not combine" in both.message


EXTREME_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 1e30, -1e30, 0.0]


def fuzz_requests() -> list[tuple[str, object, object]]:
    huge = "red " * 5000
    cases: list[tuple[str, object, object]] = []
    g = Ground.Request
    for queries in ([], [""], [huge], ["cup"] * 300, ["\x00"], ["ключ 🔑"]):
        cases.append(("ground", g(queries=queries), None))
    for top_k in (-2**31, 2**31 - 1, 0):
        cases.append(("ground", g(queries=["cup"], top_k=top_k), None))
    for v in EXTREME_FLOATS:
        cases.append(("ground", g(queries=["cup"], min_score=v), None))
        cases.append(("ground", g(queries=["cup"], timeout=v), None))
        cases.append(("ground", g(queries=["cup"], boxes=[v, v, v, v]), None))
        cases.append(("ground", g(queries=["cup"], boxes=[0.0, 0.0, v, v]), None))
    for boxes in ([1.0, 2.0, 3.0], [0.0, 0.0, 5.0, 5.0] * 5000):
        cases.append(("ground", g(queries=["cup"], boxes=boxes), False))
    for camera in ("nope", "///", "a" * 5000, "~/x"):
        cases.append(("ground", g(queries=["cup"], camera=camera), False))
    req = g(queries=["cup"])
    req.frame_stamp.sec, req.frame_stamp.nanosec = 2**31 - 1, 2**32 - 1
    cases.append(("ground", req, False))
    f = FindImage.Request
    for kind in (0, 1, 2, 3, 255):
        cases.append(("find", f(query_type=kind), None))
    cases.append(("find", f(query_type=0, text=huge), False))
    for top_k in (-2**31, 2**31 - 1):
        cases.append(("find", f(query_type=0, text="a kitchen", top_k=top_k), None))
    for image in (Image(height=2**31 - 1, width=2**31 - 1, encoding="rgb8", step=1),
                  Image(height=0, width=0, encoding="rgb8"),
                  Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(47)),
                  Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64))):
        cases.append(("find", f(query_type=1, image=image), False))
    for camera in ("nope", "a" * 5000):
        cases.append(("find", f(query_type=0, text="x", camera=camera), False))
    s = SetQueries.Request
    for queries in ([""], [huge], ["ok", " "]):
        cases.append(("setq", s(queries=queries), False))
    cases.append(("setq", s(queries=["cup"] * 300), None))
    cases.append(("setq", s(queries=[]), True))
    return cases


def test_fuzz_every_field_at_its_extremes(node, rgb: np.ndarray) -> None:
    handle, proc = node
    publish_until_served(handle, rgb, 30_000_000_000)
    clients = {"ground": handle.ground, "find": handle.find, "setq": handle.setq}
    for kind, request, expect in fuzz_requests():
        resp = handle.call(clients[kind], request)  # raises when not answered in the bound
        assert resp.message, (kind, request)
        if expect is not None:
            assert resp.success is expect, (kind, resp.message)
        if not resp.success:
            assert "internal error" not in resp.message, resp.message
    assert proc.alive()
    assert handle.call(handle.ground, Ground.Request(queries=["a face"])).success
    values = {kv.key: kv.value for kv in handle.diagnostics[-1].status[0].values}
    assert "service_failure internal_error" not in values


def test_transport_health_warns_when_most_frames_are_lost(node, rgb: np.ndarray) -> None:
    """A 30 Hz camera (by its stamps) of which only 1 frame in 9 arrives."""
    handle, _ = node
    period = 33_333_333
    sent = [i for i in range(120) if i < 4 or i % 9 == 0]
    for i in sent:
        handle.pub["lossy_image"].publish(rgb_to_image(rgb, header(40_000_000_000 + i * period)))
        time.sleep(0.03)
    deadline = time.monotonic() + 30
    while True:
        seen = len(handle.diagnostics)
        handle.client.wait_for(lambda n=seen: len(handle.diagnostics) > n, 10, "diagnostics")
        status = handle.diagnostics[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        lost = float(values.get(f"{NS}/lossy_image: frames_lost_percent", "0"))
        if lost > 50:
            break
        assert time.monotonic() < deadline, values
    assert status.level == DiagnosticStatus.WARN
    assert f"{NS}/lossy_image:" in status.message and "likely cause: best-effort QoS" in \
        status.message, status.message
    assert values[f"{NS}/lossy_image: qos_reliability"] == "best_effort"

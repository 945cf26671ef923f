"""The real GroundingNode in its own process (tiny checkpoint, real photos): results equal the
core's, standing queries, 3D on synthetic depth, no-frame/timeout paths, bad inputs, and
service latency under a 30 Hz stream. One node serves the whole module."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from node_helpers import NS, NodeHandle, header, rss_kb
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from objembed_msgs.srv import FindImage
from objembed_ros.grounder import Grounder, GrounderConfig
from objembed_ros.ros.convert import depth_to_image
from objembed_ros.ros.launcher import default_params_file, start_node
from objembed_ros.testing.ros_harness import RosClient

W, H = 256, 192
BOXES = np.array([[0, 0, 256, 192], [20, 10, 120, 150], [100, 40, 250, 180],
                  [60, 60, 90, 100], [10, 100, 200, 190]], np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
FX, FY, CX, CY = 200.0, 210.0, 127.5, 95.5


@pytest.fixture(scope="module")
def node(tiny_objembed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    log = tmp_path_factory.mktemp("node") / "grounding_node.log"
    proc = start_node(
        params_file=default_params_file(), namespace=NS, log_path=log,
        parameters={
            "checkpoint": str(tiny_objembed_dir), "proposer": "external",
            "image_topics": ["image", "idle_image"], "depth_topics": ["depth", "idle_depth"],
            "camera_info_topics": ["camera_info", "idle_info"], "top_k": 0,
            "diagnostics_period": 0.5, "max_query_tokens": 32,
        })
    client = RosClient("grounding_test_client")
    handle = NodeHandle(client)
    try:
        handle.ground.wait_for_service(timeout_sec=60)
        yield handle, proc
    finally:
        client.close()
        proc.stop()
        if proc.popen.returncode not in (0, -2, 130):
            print(proc.log()[-6000:])


@pytest.fixture(scope="module")
def frames(photo: np.ndarray, photo_wide: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(photo[:H, 100:100 + W]),
            np.ascontiguousarray(photo_wide[100:100 + H, 200:200 + W])]


@pytest.fixture(scope="module")
def core(tiny_objembed_dir: Path) -> Grounder:
    return Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir), proposer="external"))


def wait_ready(handle: NodeHandle, timeout: float = 120.0) -> None:
    """Until the model is loaded (services stop answering 'model not ready')."""
    deadline = time.monotonic() + timeout
    while True:
        resp = handle.call_ground(queries=["x"], camera="idle_image")
        if "model not ready" not in resp.message:
            return
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.2)


def test_no_frame_and_timeout_paths_answer_in_time(node) -> None:
    handle, _ = node
    wait_ready(handle)
    t0 = time.monotonic()
    resp = handle.call_ground(queries=["a cup"], camera="idle_image")
    assert not resp.success and resp.message == "no frame yet"
    for fresh in (False, True):
        t0 = time.monotonic()
        resp = handle.call_ground(queries=["a cup"], camera="idle_image", timeout=0.4,
                                  wait_for_fresh_frame=fresh)
        took = time.monotonic() - t0
        assert not resp.success and resp.message.startswith("timeout"), resp.message
        assert 0.35 < took < 0.4 + 1.0  # waited the timeout, answered promptly after it
    resp = handle.call_ground(queries=["a cup"], camera="no_such_camera")
    assert not resp.success and "unknown camera" in resp.message


def test_results_equal_core(node, core: Grounder, frames: list[np.ndarray]) -> None:
    handle, _ = node
    h = handle.publish_frame(frames[0], 1_000_000_000, BOXES, SCORES)
    queries = ["a person in a space suit", "the red cup"]
    resp = handle.call_ground(queries=queries, camera="image")
    assert resp.success, resp.message
    ref = core.ground(queries, core.encode_frame(frames[0], boxes=BOXES, box_scores=SCORES,
                                                 cache=False))
    assert [r.query for r in resp.results] == queries
    for got, want in zip(resp.results, ref, strict=True):
        assert got.header == h  # the source image's header, unchanged
        assert got.camera == f"{NS}/image" and (got.image_width, got.image_height) == (W, H)
        assert got.num_candidates == len(BOXES) == len(got.objects)
        for o, w in zip(got.objects, want.objects, strict=True):
            assert o.proposal_index == w.proposal_index
            assert [o.x1, o.y1, o.x2, o.y2] == pytest.approx(list(w.box), abs=1e-4)
            for name in ("score", "similarity", "iou", "cosine", "proposal_score"):
                assert getattr(o, name) == pytest.approx(getattr(w, name), abs=1e-5), name
            assert o.label == got.query
    # top_k / min_score honoured
    resp = handle.call_ground(queries=queries[:1], camera="image", top_k=2)
    assert len(resp.results[0].objects) == 2
    cut = ref[0].objects[2].score
    resp = handle.call_ground(queries=queries[:1], min_score=cut)
    assert all(o.score >= cut - 1e-6 for o in resp.results[0].objects)
    # supplied boxes re-scored on the cached frame; each carries its index in request.boxes
    resp = handle.call_ground(queries=queries[:1], boxes=BOXES[1:3].reshape(-1).tolist())
    want = core.ground_boxes(queries[:1], core.encode_frame(frames[0], boxes=BOXES, cache=False),
                             BOXES[1:3])[0]
    assert resp.success and list(resp.box_status) == ["ok", "ok"]
    got = {o.proposal_index: o.score for o in resp.results[0].objects}
    for o in want.objects:  # the reference's boxes name their request row
        row = int(np.flatnonzero((BOXES[1:3] == np.asarray(o.box, np.float32)).all(1))[0])
        assert got[row] == pytest.approx(o.score, abs=1e-5)
    assert sorted(got) == [0, 1]


def test_standing_queries_published_per_frame(node, frames: list[np.ndarray]) -> None:
    handle, _ = node
    resp = handle.client.call(handle.set_queries, _set_queries(["person", "cup"]))
    assert resp.success, resp.message
    seen = len(handle.groundings)
    stamps = [2_000_000_000, 2_100_000_000]
    for stamp, rgb in zip(stamps, frames, strict=True):
        handle.publish_frame(rgb, stamp, BOXES, SCORES)
    handle.client.wait_for(lambda: len(handle.groundings) >= seen + 4, 30, "groundings")
    got = handle.groundings[seen:]
    for stamp in stamps:
        mine = [g for g in got if g.header.stamp == header(stamp).stamp]
        assert sorted(g.query for g in mine) == ["cup", "person"]
        assert all(g.header.frame_id == "cam_optical" for g in mine)
        assert all(len(g.objects) == len(BOXES) for g in mine)  # top_k 0 keeps all
    bad = handle.client.call(handle.set_queries, _set_queries(["ok", " "]))
    assert not bad.success and "empty" in bad.message
    assert handle.client.call(handle.set_queries, _set_queries([])).success


def _set_queries(queries: list[str]):
    from objembed_msgs.srv import SetQueries

    return SetQueries.Request(queries=queries)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_3d_on_a_synthetic_plane(node, frames: list[np.ndarray], encoding: str) -> None:
    """A fronto-parallel... tilted plane z = z0 + a (u - cx) with known intrinsics."""
    handle, _ = node
    stamp = 3_000_000_000 if encoding == "16UC1" else 3_100_000_000
    u = np.arange(W, dtype=np.float64)[None, :].repeat(H, 0)
    z_m = 1.5 + 0.002 * (u - CX)
    depth = (np.round(z_m * 1000).astype(np.uint16) if encoding == "16UC1"
             else z_m.astype(np.float32))
    info = CameraInfo(header=header(stamp), width=W, height=H,
                      k=[FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0])
    deadline = time.monotonic() + 30
    while True:  # best effort: repeat until the node has paired them
        handle.pub_info.publish(info)
        handle.pub_depth.publish(depth_to_image(depth, header(stamp)))
        handle.publish_frame(frames[1], stamp, BOXES, SCORES)
        resp = handle.call_ground(queries=["a mug"], camera="image")
        assert resp.success, resp.message
        if all(o.position_valid for o in resp.results[0].objects):
            break
        assert time.monotonic() < deadline, [o.position_status for o in resp.results[0].objects]
    for o in resp.results[0].objects:
        uc = (o.x1 + o.x2) / 2 - 0.5
        vc = (o.y1 + o.y2) / 2 - 0.5
        z = 1.5 + 0.002 * (uc - CX)
        want = np.array([(uc - CX) / FX * z, (vc - CY) / FY * z, z])
        got = np.array([o.position.x, o.position.y, o.position.z])
        assert np.linalg.norm(got - want) < 0.01 * z, (o.x1, o.x2, got, want)
        assert o.depth_samples > 0 and o.position_status == "ok"
        assert o.size.x == pytest.approx((o.x2 - o.x1) / FX * o.position.z, rel=1e-4)


def test_find_image(node, core: Grounder, frames: list[np.ndarray]) -> None:
    """Scores equal an independent run of the core on the same pixels; a cached frame matches
    itself with cosine 1 and the score the image logit scale/bias give for cosine 1."""
    handle, _ = node
    call = handle.client.call
    camera = f"{NS}/image"
    stamps = {7_000_000_000: frames[0], 7_100_000_000: frames[1]}
    for stamp, rgb in stamps.items():
        handle.publish_frame(rgb, stamp, BOXES, SCORES)
        core.encode_frame(rgb, stamp, camera, boxes=BOXES, box_scores=SCORES)  # core's cache

    def check(resp, want) -> None:
        assert resp.success, resp.message
        got = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec: m
               for m in resp.matches}
        for w in want:
            m = got[w.stamp_ns]  # both frames are among the node's matches
            assert m.camera == camera
            assert m.score == pytest.approx(w.score, abs=1e-5)
            assert m.cosine == pytest.approx(w.cosine, abs=1e-5)
        scores = [m.score for m in resp.matches]
        assert scores == sorted(scores, reverse=True)

    resp = call(handle.find_image, FindImage.Request(query_type=FindImage.Request.QUERY_TEXT,
                                                     text="an astronaut", camera="image"))
    check(resp, core.find_frames(text="an astronaut", camera=camera))
    from objembed_ros.ros.convert import rgb_to_image

    resp = call(handle.find_image, FindImage.Request(
        query_type=FindImage.Request.QUERY_IMAGE, image=rgb_to_image(frames[0]),
        camera="image"))
    check(resp, core.find_frames(image=frames[0], camera=camera))
    resp = call(handle.find_image, FindImage.Request(
        query_type=FindImage.Request.QUERY_IMAGE, image=rgb_to_image(frames[0]), top_k=2))
    assert resp.success and len(resp.matches) == 2
    stamp = header(7_100_000_000).stamp
    resp = call(handle.find_image, FindImage.Request(
        query_type=FindImage.Request.QUERY_CACHED_FRAME, frame_stamp=stamp))
    p = core.logit_params
    self_score = 1 / (1 + math.exp(-(math.exp(p.logit_image_log_scale) + p.logit_image_bias)))
    assert resp.success, resp.message
    (itself,) = [m for m in resp.matches if m.header.stamp == stamp]  # (same pixels tie)
    assert itself.cosine == pytest.approx(1.0, abs=1e-5)
    assert itself.score == pytest.approx(self_score, abs=1e-5)
    assert resp.matches[0].score == pytest.approx(self_score, abs=1e-5)  # nothing beats it
    bad = call(handle.find_image, FindImage.Request(
        query_type=FindImage.Request.QUERY_IMAGE,
        image=Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))))
    assert not bad.success and "bad query image" in bad.message


def test_bad_inputs_are_rejected_counted_and_survived(node, frames: list[np.ndarray]) -> None:
    handle, proc = node
    # Image topics are keep-last 1: a burst collapses to its newest message, so each kind is
    # sent on its own and re-sent until the node has counted it.
    bad_inputs = {
        "rejected image:bad_encoding": (handle.pub_image, Image(
            height=H, width=W, encoding="yuv422", step=W * 2, data=bytes(W * H * 2))),
        "rejected image:wrong_step": (handle.pub_image, Image(
            height=H, width=W, encoding="rgb8", step=W * 3 - 1, data=bytes((W * 3 - 1) * H))),
        "rejected image:truncated_data": (handle.pub_image, Image(
            height=H, width=W, encoding="rgb8", step=W * 3, data=bytes(W * 3 * H - 7))),
        "rejected depth:bad_encoding": (handle.pub_depth, Image(
            height=2, width=2, encoding="rgb8", step=6, data=bytes(12))),
    }
    checks = {
        "empty": dict(queries=[""]),
        "no queries": dict(queries=[]),
        "too long": dict(queries=["red " * 100]),
        "not finite": dict(queries=["cup"], boxes=[0.0, 0.0, math.nan, 5.0]),
        "multiple of 4": dict(queries=["cup"], boxes=[0.0, 0.0, 5.0]),
    }
    for expected, kwargs in checks.items():
        resp = handle.call_ground(**kwargs)
        assert not resp.success and expected in resp.message, (expected, resp.message)
    deadline = time.monotonic() + 30
    while True:
        values = handle.diag_values()
        missing = [k for k in bad_inputs if k not in values]
        if not missing:
            break
        assert time.monotonic() < deadline, (missing, values)
        for key in missing:
            publisher, msg = bad_inputs[key]
            publisher.publish(msg)
            time.sleep(0.15)
    assert int(values["service_failure bad_request"]) >= len(checks)
    assert int(values["rejected_inputs"]) >= 4
    assert proc.alive()
    # and the node still works
    handle.publish_frame(frames[0], 4_000_000_000, BOXES, SCORES)
    assert handle.call_ground(queries=["cup"]).success


def test_services_never_wait_behind_inference_under_30hz(node, frames: list[np.ndarray]) -> None:
    """50 Ground calls while a 30 Hz stream keeps the worker busy: every call is answered
    and takes a small fraction of one encode (measured by the node in ~/timings)."""
    handle, proc = node
    handle.publish_frame(frames[0], 4_500_000_000, BOXES, SCORES)  # a warm, encoded node
    assert handle.call_ground(queries=["a helmet"]).success  # text pass once, then cached
    rss_before = rss_kb(proc.popen.pid)
    seen_timings = len(handle.timings)
    latencies: list[float] = []
    results = []
    t_start = time.monotonic()
    next_frame = t_start
    i = 0
    next_call = t_start
    while len(latencies) < 50:  # one call every 60 ms: ~3 s of stream
        now = time.monotonic()
        if now >= next_frame:  # 30 Hz, boxes + image, as a camera + detector would
            i += 1
            handle.publish_frame(frames[i % 2], 5_000_000_000 + i * 33_000_000, BOXES, SCORES,
                                 wait=False)
            next_frame += 1 / 30
        if now >= next_call:
            next_call = now + 0.06
            t0 = time.monotonic()
            resp = handle.call_ground(queries=["a helmet"], timeout=2.0)
            latencies.append(time.monotonic() - t0)
            results.append(resp)
        time.sleep(0.002)
    duration = time.monotonic() - t_start
    handle.client.wait_for(lambda: len(handle.timings) > seen_timings + 2, 30, "encodes")
    encodes = [float(kv.value) for t in handle.timings[seen_timings:]
               for kv in t.status[0].values if kv.key == "model"]
    encode_s = statistics.median(encodes)
    assert all(r.success for r in results), [r.message for r in results if not r.success]
    assert len(encodes) >= 2 and i > len(encodes)  # the stream outran the worker: frames dropped
    lat = sorted(latencies)
    # A call costs a matrix product + transport, not an image pass: a call that waited behind
    # inference would take half an encode on average, which the median bound excludes. The
    # tail is OS scheduling on a 2-core machine (the worker's torch threads, the executor and
    # this process share both cores), so it gets headroom instead of a wall-clock bound.
    assert lat[len(lat) // 2] < 0.25 * encode_s, (lat, encode_s)
    assert lat[int(0.9 * len(lat))] < 2 * encode_s, (lat, encode_s)
    values = handle.diag_values()
    assert int(values["frames_dropped"]) > 0
    rss_after = rss_kb(proc.popen.pid)
    assert rss_after - rss_before < 150_000, (rss_before, rss_after, duration)
    assert int(values["frames_cached"]) <= 2 * 8  # two cameras x frame_cache_size


def test_debug_image_only_when_subscribed(node, frames: list[np.ndarray]) -> None:
    handle, _ = node
    got: list[Image] = []
    handle.client.node.create_subscription(Image, f"{NS}/grounding_node/debug_image",
                                           got.append, qos_profile_sensor_data)
    assert handle.client.call(handle.set_queries, _set_queries(["person"])).success
    deadline = time.monotonic() + 30
    stamp = 6_000_000_000
    while not got:
        stamp += 1_000_000
        handle.publish_frame(frames[0], stamp, BOXES, SCORES)
        assert time.monotonic() < deadline
    assert (got[0].width, got[0].height, got[0].encoding) == (W, H, "rgb8")
    assert got[0].header.frame_id == "cam_optical"
    assert handle.client.call(handle.set_queries, _set_queries([])).success

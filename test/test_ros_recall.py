"""ros/recall.py: Recall validation, MemoryEntry conversion, the per-frame path (depth + a
fixed frame), persistence across a restart and a real ~/recall service."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from objembed_msgs.srv import Recall
from objembed_ros.core.depth import Intrinsics
from objembed_ros.core.errors import InputError, ModelBusy
from objembed_ros.core.memory import ObjectEntry, ObjectMemory, RecallHit
from objembed_ros.core.results import GroundedBox, GroundingResult
from objembed_ros.core.transforms import RigidTransform, TransformBuffer, TransformLookupError
from objembed_ros.grounder import CachedFrame
from objembed_ros.ros.params import PARAMETERS
from objembed_ros.ros.recall import (
    MemoryService,
    check_recall_request,
    entry_to_msg,
    memory_config,
)
from objembed_ros.ros.viz import memory_markers
from objembed_ros.testing.ros_harness import RosClient

S = 1_000_000_000
D = 8
MUG, BOOK = np.eye(D, dtype=np.float32)[0], np.eye(D, dtype=np.float32)[1]
SCALE, BIAS = math.log(10.0), -5.0  # score = sigmoid(10 cos - 5)


def request(**kw) -> Recall.Request:
    req = Recall.Request(text="mug", min_score=0.0)
    for k, v in kw.items():
        setattr(req, k, v)
    return req


@pytest.mark.parametrize("kw, reason", [
    (dict(text="  "), "empty text"),
    (dict(query_type=7), "unknown query_type"),
    (dict(min_score=-0.1), "min_score"),
    (dict(min_score=1.5), "min_score"),
    (dict(min_score=float("nan")), "min_score"),
    (dict(since=Time(sec=-1)), "since is not a valid time"),
    (dict(since=Time(sec=5), until=Time(sec=4, nanosec=999_999_999)), "empty time window"),
])
def test_bad_requests_are_named(kw, reason):
    assert reason in check_recall_request(request(**kw))


def test_good_requests_pass():
    assert check_recall_request(request()) is None
    assert check_recall_request(request(top_k=-3, since=Time(sec=5), until=Time(sec=5))) is None
    assert check_recall_request(request(query_type=Recall.Request.QUERY_IMAGE, text="")) is None


def make_entry(**kw) -> ObjectEntry:
    base = dict(id=7, embedding=MUG, camera="/cam/image", frame_id="cam_optical",
                label="mug", first_seen_ns=3 * S + 5, last_seen_ns=9 * S + 250, hits=4,
                box=(1.0, 2.0, 30.5, 40.0), image_size=(640, 480), best_iou=0.9,
                crop=b"\xff\xd8jpeg", position_frame="map", position_fixed=True,
                position_count=4, position_mean=(1.0, 2.0, 0.5), position_m2=(0.04, 0.0, 0.16))
    base.update(kw)
    return ObjectEntry(**base)


def test_entry_to_msg_fields():
    msg = entry_to_msg(RecallHit(make_entry(), 0.75, 0.5), include_crop=True)
    assert (msg.id, msg.label, msg.camera, msg.hits) == (7, "mug", "/cam/image", 4)
    assert (msg.score, msg.cosine) == (0.75, 0.5)
    assert (msg.first_seen.sec, msg.first_seen.nanosec) == (3, 5)
    assert (msg.last_seen.sec, msg.last_seen.nanosec) == (9, 250)
    assert msg.last_header.frame_id == "cam_optical" and msg.last_header.stamp == msg.last_seen
    assert (msg.x1, msg.y1, msg.x2, msg.y2) == (1.0, 2.0, 30.5, 40.0)
    assert (msg.image_width, msg.image_height) == (640, 480)
    assert msg.position_valid and msg.position_frame == "map"
    assert (msg.position.x, msg.position.y, msg.position.z) == (1.0, 2.0, 0.5)
    # stddev = sqrt(m2 / count): sqrt(0.01), 0, sqrt(0.04)
    assert (msg.position_stddev.x, msg.position_stddev.y, msg.position_stddev.z) == \
        pytest.approx((0.1, 0.0, 0.2), abs=1e-12)
    assert msg.crop.format == "jpeg" and bytes(msg.crop.data) == b"\xff\xd8jpeg"
    assert msg.crop.header == msg.last_header
    bare = entry_to_msg(RecallHit(make_entry(position_count=0, position_frame=""), 0.1, 0.0),
                        include_crop=False)
    assert not bare.position_valid and bare.position_frame == "cam_optical"
    assert len(bare.crop.data) == 0


class BufferTf:
    """The TfLookup interface over a plain TransformBuffer (no node needed)."""

    def __init__(self) -> None:
        self.buffer = TransformBuffer(cache_ns=100 * S)
        self.backend = "test"

    def lookup(self, target, source, stamp_ns):
        try:
            return self.buffer.lookup(target, source, stamp_ns), ""
        except TransformLookupError as exc:
            return None, str(exc)

    def close(self):
        pass


def frame(stamp_ns: int, boxes, embeddings, logits, camera="/cam/image") -> CachedFrame:
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[40:60, 40:60] = (200, 30, 30)
    n = len(boxes)
    return CachedFrame(camera=camera, stamp_ns=stamp_ns, rgb=rgb, image_size=(100, 100),
                       boxes=np.asarray(boxes, np.float32),
                       proposal_scores=np.full(n, np.nan, np.float32),
                       object_embeddings=np.asarray(embeddings, np.float32),
                       iou_logits=np.asarray(logits, np.float32),
                       global_embeddings=np.zeros((2, D), np.float32), proposal_source="test")


DEPTH = np.full((100, 100), 2.0, np.float32)  # a wall 2 m in front of the camera
K = Intrinsics(fx=100.0, fy=100.0, cx=49.5, cy=49.5)  # the centre pixel looks straight ahead
HEADER = Header(frame_id="cam_optical")


def service(tf=None, fixed_frame="", memory=None, **kw) -> MemoryService:
    args = dict(embed_text=lambda text: {"mug": MUG, "book": BOOK}[text],
                logit_params=lambda: (SCALE, BIAS))
    args.update(kw)
    return MemoryService(memory or ObjectMemory(memory_config(
        {p.name: p.default for p in PARAMETERS})), tf=tf, fixed_frame=fixed_frame, **args)


def grounded(query, index, score=0.9):
    return GroundingResult(query=query, query_type="text", camera="/cam/image", stamp_ns=0,
                           image_size=(100, 100), num_candidates=2,
                           objects=[GroundedBox((0, 0, 1, 1), score, score, 1.0, 0.5, index)])


def offer(svc: MemoryService, *args) -> list[ObjectEntry]:
    """on_frame, wait for the memory thread, the entries by id."""
    svc.on_frame(*args)
    assert svc.drain(timeout_s=30.0)
    return sorted(svc.memory.entries(), key=lambda e: e.id)


def test_on_frame_positions_in_the_fixed_frame_by_hand():
    tf = BufferTf()
    # the camera (optical frame, no rotation for easy numbers) at map (1, 2, 0), moving +x
    for k, x in ((1, 1.0), (2, 1.1)):
        tf.buffer.set_transform("map", "cam_optical", k * S,
                                RigidTransform.make((x, 2.0, 0.0), (0, 0, 0, 1)))
    svc = service(tf=tf, fixed_frame="map")
    boxes = [(40, 40, 60, 60), (0, 0, 5, 5)]
    # proposal 1 has predicted IoU sigmoid(-3) = 0.05 < 0.5: it does not enter
    (e,) = offer(svc, frame(1 * S, boxes, [MUG, BOOK], [2.0, -3.0]), [grounded("mug", 0)],
                 HEADER, DEPTH, K)
    assert (e.label, e.position_frame, e.position_fixed) == ("mug", "map", True)
    assert e.best_iou == pytest.approx(1 / (1 + math.exp(-2.0)))
    # box centre (50, 50) -> pixel 49.5 = cx: straight ahead at 2 m -> map (1, 2, 2)
    np.testing.assert_allclose(e.position_mean, (1.0, 2.0, 2.0), atol=1e-6)
    assert e.crop[:2] == b"\xff\xd8"
    (e,) = offer(svc, frame(2 * S, boxes, [MUG, BOOK], [2.0, -3.0]), [], HEADER, DEPTH, K)
    assert e.hits == 2 and e.label == "mug"
    np.testing.assert_allclose(e.position_mean, (1.05, 2.0, 2.0), atol=1e-6)
    np.testing.assert_allclose(e.position_stddev, (0.05, 0.0, 0.0), atol=1e-6)
    # no transform at 9 s: the position stays in the camera frame, and the answer says so
    _, e = offer(svc, frame(9 * S, [(10, 10, 30, 30)], [BOOK], [2.0]), [], HEADER, DEPTH, K)
    assert (e.position_frame, e.position_fixed) == ("cam_optical", False)
    assert "future" in svc.last_tf_problem
    resp = svc.handle_recall(request(text="book"), Recall.Response())
    assert resp.success and "1 position(s) in the camera frame" in resp.message
    assert resp.entries[0].position_frame == "cam_optical"
    svc.close()


def test_a_full_queue_drops_the_oldest_frame():
    svc = service(queue_size=2)
    gate = svc._cond
    gate.acquire()  # hold the memory thread off while three frames arrive
    try:
        results = []
        for k in range(3):
            # on_frame takes the same (re-entrant) lock, already held by this thread
            results.append(svc.on_frame(frame(k * S, [(40, 40, 60, 60)], [MUG], [2.0],
                                              camera=f"/c{k}"), [], HEADER))
    finally:
        gate.release()
    assert results == [True, True, False] and svc.frames_dropped == 1
    assert svc.drain(timeout_s=30.0)
    assert sorted(e.camera for e in svc.memory.entries()) == ["/c1", "/c2"]
    svc.close()


def test_handle_recall_ranks_filters_and_reports_errors():
    mem = ObjectMemory()
    svc = service(memory=mem)
    offer(svc, frame(1 * S, [(40, 40, 60, 60)], [MUG], [2.0], camera="/a"), [], HEADER)
    offer(svc, frame(2 * S, [(40, 40, 60, 60)], [0.6 * MUG + 0.8 * BOOK], [2.0],
                     camera="/b"), [], HEADER)
    resp = svc.handle_recall(request(include_crops=True), Recall.Response())
    assert resp.success and [e.camera for e in resp.entries] == ["/a", "/b"]
    # sigmoid(10 * cos - 5) by hand
    assert [e.score for e in resp.entries] == pytest.approx(
        [1 / (1 + math.exp(-5)), 1 / (1 + math.exp(-1))], rel=1e-6)
    crop = PILImage.open(io.BytesIO(bytes(resp.entries[0].crop.data)))
    assert crop.format == "JPEG"
    assert not resp.entries[0].position_valid
    resp = svc.handle_recall(request(camera="/b"), Recall.Response())
    assert [e.camera for e in resp.entries] == ["/b"]
    resp = svc.handle_recall(request(since=Time(sec=1, nanosec=1)), Recall.Response())
    assert [e.camera for e in resp.entries] == ["/b"]
    resp = svc.handle_recall(request(until=Time(sec=1, nanosec=500)), Recall.Response())
    assert [e.camera for e in resp.entries] == ["/a"]
    resp = svc.handle_recall(request(min_score=0.9), Recall.Response())
    assert [e.camera for e in resp.entries] == ["/a"]
    resp = svc.handle_recall(request(top_k=1), Recall.Response())
    assert len(resp.entries) == 1 and len(resp.entries[0].crop.data) == 0

    def busy(text):
        raise ModelBusy("the model is busy encoding a frame")

    def too_long(text):
        raise InputError("query too long")

    for fn, word in ((busy, "ModelBusy"), (too_long, "query too long")):
        resp = service(memory=mem, embed_text=fn).handle_recall(request(), Recall.Response())
        assert not resp.success and word in resp.message and resp.entries == []
    img = request(query_type=Recall.Request.QUERY_IMAGE)
    resp = svc.handle_recall(img, Recall.Response())
    assert not resp.success and "image queries are not available" in resp.message
    svc.embed_image = lambda rgb: BOOK
    img.image = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
    resp = svc.handle_recall(img, Recall.Response())
    assert resp.success and resp.entries[0].camera == "/b"
    img.image = Image(height=2, width=2, encoding="weird", step=6, data=bytes(12))
    resp = svc.handle_recall(img, Recall.Response())
    assert not resp.success and "encoding" in resp.message
    svc.embed_text = lambda text: np.ones(3, np.float32)  # another model width
    resp = svc.handle_recall(request(), Recall.Response())
    assert not resp.success and "width" in resp.message


def test_memory_markers_place_recalled_entries():
    fixed = entry_to_msg(RecallHit(make_entry(), 0.75, 0.5), include_crop=False)
    loose = entry_to_msg(RecallHit(make_entry(id=8, position_frame="cam_optical",
                                              position_fixed=False, position_count=1,
                                              position_m2=(0.0, 0.0, 0.0)), 0.5, 0.1), False)
    none = entry_to_msg(RecallHit(make_entry(id=9, position_count=0), 0.5, 0.1), False)
    arr = memory_markers([fixed, loose, none], "map", lifetime_s=5.0)
    assert arr.markers[0].action == arr.markers[0].DELETEALL
    spheres = [m for m in arr.markers[1:] if m.ns == "objembed/memory"]
    assert [m.id for m in spheres] == [7, 8]
    assert spheres[0].header.frame_id == "map" and spheres[0].header.stamp.sec == 0
    assert spheres[0].scale.x == pytest.approx(0.4)  # 2 * max stddev 0.2
    assert spheres[1].header.frame_id == "cam_optical" and spheres[1].header.stamp.sec == 9
    assert spheres[1].scale.x == pytest.approx(0.05)


class FakeLogger:
    def __init__(self):
        self.lines = []

    def warning(self, msg):
        self.lines.append(msg)


class LoggingNode:
    """MemoryService.open only needs get_logger() when fixed_frame is empty."""

    def __init__(self):
        self.logger = FakeLogger()

    def get_logger(self):
        return self.logger


def test_memory_survives_a_restart(tmp_path):
    values = {p.name: p.default for p in PARAMETERS}
    values.update(memory_enabled=True, memory_path=str(tmp_path / "mem.sqlite"),
                  memory_write_interval=3600.0)
    kw = dict(embed_text=lambda text: {"mug": MUG}[text], logit_params=lambda: (SCALE, BIAS))
    first = MemoryService.open(LoggingNode(), values, **kw)
    offer(first, frame(1 * S, [(40, 40, 60, 60)], [MUG], [2.0]), [grounded("mug", 0)],
          HEADER, DEPTH, K)
    before = first.handle_recall(request(include_crops=True), Recall.Response())
    first.close()  # the hour-long write interval never fired: close flushes
    second = MemoryService.open(LoggingNode(), values, **kw)
    after = second.handle_recall(request(include_crops=True), Recall.Response())
    assert after.success and len(after.entries) == 1
    a, b = before.entries[0], after.entries[0]
    assert (b.id, b.label, b.hits, b.camera, b.last_seen) == (a.id, a.label, a.hits, a.camera,
                                                              a.last_seen)
    assert (b.position.x, b.position.y, b.position.z) == (0.0, 0.0, 2.0)
    assert bytes(b.crop.data) == bytes(a.crop.data)
    assert b.score == pytest.approx(a.score, abs=1e-3)  # float16 storage
    second.close()
    (tmp_path / "mem.sqlite").write_bytes(b"garbage" * 50)
    node = LoggingNode()
    third = MemoryService.open(node, values, **kw)
    assert "moved to" in node.logger.lines[0] and len(third.memory) == 0
    third.close()


def test_real_recall_service():
    svc = service()
    offer(svc, frame(1 * S, [(40, 40, 60, 60)], [MUG], [2.0]), [grounded("mug", 0)], HEADER)
    with RosClient("recall_server") as server, RosClient("recall_caller") as caller:
        server.node.create_service(Recall, "recall", svc.handle_recall)
        client = caller.node.create_client(Recall, "recall")
        resp = caller.call(client, request(include_crops=True), timeout=60.0)
        assert resp.success and resp.entries[0].label == "mug"
        assert bytes(resp.entries[0].crop.data)[:2] == b"\xff\xd8"
        resp = caller.call(client, request(text=""), timeout=60.0)
        assert not resp.success and "empty text" in resp.message

"""ros/vision.py against the REAL upstream vision_msgs (built by scripts/install.sh from
../shared/third_party): expected values worked out by hand from the box conventions."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

from objembed_ros.core.depth import Position3D
from objembed_ros.core.errors import InputError
from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.ros import vision
from objembed_ros.ros.convert import result_to_msg

vm = pytest.importorskip(
    "vision_msgs.msg",
    reason="vision_msgs not built: its upstream source is absent (see scripts/install.sh)")


def _header() -> Header:
    h = Header(frame_id="cam_optical")
    h.stamp.sec, h.stamp.nanosec = 12, 345
    return h


def _box(box: tuple[float, ...], score: float, position: Position3D | None = None) -> GroundedBox:
    return GroundedBox(box=box, score=score, similarity=0.5, iou=0.5, cosine=0.1,
                       proposal_index=0, position=position)


def _groundings() -> list:
    """Two queries of one frame, as the node publishes them on ~/groundings."""
    cup = GroundingResult(
        query="red cup", query_type=QUERY_TEXT, camera="/image", stamp_ns=12_000_000_345,
        image_size=(640, 480), num_candidates=5,
        objects=[_box((10.0, 20.0, 50.0, 80.0), 0.5),
                 _box((0.5, 1.25, 3.5, 2.25), 0.25,
                      Position3D(True, "ok", (0.1, -0.2, 1.5), (0.3, 0.4, 0.05), 40))])
    handle = GroundingResult(
        query="handle", query_type=QUERY_TEXT, camera="/image", stamp_ns=12_000_000_345,
        image_size=(640, 480), num_candidates=5,
        objects=[_box((100.0, 100.0, 110.0, 130.0), 0.75, Position3D.invalid("no_valid_depth"))])
    arrays = [result_to_msg(r, _header()) for r in (cup, handle)]
    arrays[1].objects[0].track_id = 7  # the tracker's id (standing queries)
    return arrays


def test_available_and_reason_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert vision.available() and vision.unavailable_reason() == ""
    assert vision.messages() is vm
    vision._import_error.cache_clear()
    monkeypatch.setitem(sys.modules, "vision_msgs", None)  # import now raises ImportError
    try:
        assert not vision.available()
        assert "vision_msgs is not installed" in vision.unavailable_reason()
        with pytest.raises(RuntimeError, match="vision_msgs is not installed"):
            vision.to_detection2d_array(_groundings(), _header())
        with pytest.raises(RuntimeError, match="vision_msgs is not installed"):
            vision.messages()
    finally:
        vision._import_error.cache_clear()


def test_detection2d_array_by_hand() -> None:
    out = vision.to_detection2d_array(_groundings(), _header())
    assert isinstance(out, vm.Detection2DArray)
    out = deserialize_message(serialize_message(out), vm.Detection2DArray)  # a valid message
    assert out.header == _header()
    # (class_id, score, centre x, centre y, size x, size y, id)
    expected = [("red cup", 0.5, 30.0, 50.0, 40.0, 60.0, ""),
                ("red cup", 0.25, 2.0, 1.75, 3.0, 1.0, ""),
                ("handle", 0.75, 105.0, 115.0, 10.0, 30.0, "7")]
    got = [(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
            d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y,
            d.id) for d in out.detections]
    assert got == expected
    assert all(len(d.results) == 1 and d.header == _header() and d.bbox.center.theta == 0.0
               for d in out.detections)


def test_detection3d_array_keeps_only_valid_3d() -> None:
    out = vision.to_detection3d_array(_groundings(), _header())
    out = deserialize_message(serialize_message(out), vm.Detection3DArray)
    assert out.header == _header()
    assert len(out.detections) == 1  # cup 1: no 3D attempted; handle: no valid depth
    det = out.detections[0]
    assert det.header == _header() and det.id == ""
    c = det.bbox.center
    assert (c.position.x, c.position.y, c.position.z) == (0.1, -0.2, 1.5)
    assert (c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w) == (0, 0, 0, 1)
    assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == (0.3, 0.4, 0.05)
    (hyp,) = det.results
    assert (hyp.hypothesis.class_id, hyp.hypothesis.score) == ("red cup", 0.25)
    assert hyp.pose.pose == c


def _det(cx: float, cy: float, w: float, h: float, scores: tuple[float, ...] = (),
         theta: float = 0.0) -> object:
    d = vm.Detection2D()
    d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.theta = cx, cy, theta
    d.bbox.size_x, d.bbox.size_y = w, h
    for s in scores:
        hyp = vm.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = "thing", s
        d.results.append(hyp)
    return d


def test_detection2d_array_to_proposals() -> None:
    msg = vm.Detection2DArray(header=_header(),
                              detections=[_det(30, 50, 40, 60, (0.25, 0.75)),
                                          _det(5.5, 6.5, 3, 1)])
    boxes, scores = vision.detection2d_array_to_proposals(msg)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.tolist() == [[10, 20, 50, 80], [4, 6, 7, 7]]
    assert scores[0] == 0.75 and math.isnan(scores[1])  # best hypothesis; none -> NaN


def test_rotated_detection_becomes_its_enclosing_box() -> None:
    theta = 0.3
    boxes, _ = vision.detection2d_array_to_proposals(
        vm.Detection2DArray(detections=[_det(100, 60, 40, 20, (0.5,), theta)]))
    # reference: rotate the four corners and take their extent
    corners = np.array([[-20, -10], [20, -10], [20, 10], [-20, 10]], np.float64)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pts = corners @ rot.T + (100, 60)
    np.testing.assert_allclose(boxes[0], [*pts.min(0), *pts.max(0)], rtol=0, atol=1e-4)


def test_proposals_reject_non_finite_and_accept_empty() -> None:
    boxes, scores = vision.detection2d_array_to_proposals(vm.Detection2DArray())
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    with pytest.raises(InputError, match="non-finite"):
        vision.detection2d_array_to_proposals(
            vm.Detection2DArray(detections=[_det(float("nan"), 1, 2, 2)]))


def test_groundings_round_trip_to_the_same_boxes() -> None:
    arrays = _groundings()
    boxes, scores = vision.detection2d_array_to_proposals(
        vision.to_detection2d_array(arrays, _header()))
    want = [[o.x1, o.y1, o.x2, o.y2] for a in arrays for o in a.objects]
    assert boxes.tolist() == want and scores.tolist() == [0.5, 0.25, 0.75]

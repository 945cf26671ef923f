"""Replay's ROS-free messages against ROS itself: rosidl's type hashes, the .msg defaults, the
node's outputs (msgfill through rclpy and through rosbags CDR) against hand-written rclpy
messages, and pixel decoding against hand-built message payloads."""
from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from objembed_ros.core.depth import Position3D
from objembed_ros.core.results import QUERY_IMAGE, QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.replay import messages as m
from objembed_ros.testing.recording import FRAME_ID, header_at


@pytest.fixture(scope="module")
def msgs() -> m.Messages:
    return m.Messages(m.make_typestore())


def _result(query: str, size: tuple[float, float, float] = (0.3, 0.4, 0.05)) -> GroundingResult:
    objects = [
        GroundedBox((10.0, 20.5, 110.0, 220.25), 0.61, 0.8, 0.7625, 0.31, 3, 0.9,
                    Position3D(True, "ok", (0.1, -0.2, 1.5), size, 412)),
        GroundedBox((0.0, 0.0, 5.0, 5.0), 0.2, 0.4, 0.5, -0.1, 7, math.nan,
                    Position3D.invalid("no_valid_depth", 2)),
        GroundedBox((1.0, 2.0, 3.0, 4.0), 0.1, 0.2, 0.5, 0.0, 9, 0.5, None, track_id=12),
    ]
    return GroundingResult(query, QUERY_TEXT, "/camera/color/image_raw",
                           1_700_000_000_123_456_789, (640, 480), 42, objects, 0.25)


def test_objembed_types_hash_as_rosidl_generates_them(msgs: m.Messages) -> None:
    """The RIHS01 hashes the output recording declares equal the ones rosidl wrote for the
    built objembed_msgs package (a ROS subscriber checks them)."""
    share = Path(sys.prefix) / "share" / "objembed_msgs" / "msg"  # the pip-built package
    for name in ("GroundedObjectArray", "GroundedObject"):
        hashes = json.loads((share / f"{name}.json").read_text())["type_hashes"]
        want = next(h["hash_string"] for h in hashes
                    if h["type_name"] == f"objembed_msgs/msg/{name}")
        assert msgs.store.hash_rihs01(f"objembed_msgs/msg/{name}") == want


def assert_same_msg(a: object, b: object, path: str = "msg") -> None:
    """Field-by-field equality of two rclpy messages, exact, NaN equal to NaN. (CDR bytes
    cannot be compared: Fast-CDR leaves alignment padding uninitialised.)"""
    if hasattr(a, "get_fields_and_field_types"):
        assert type(a) is type(b), path
        for name in a.get_fields_and_field_types():
            assert_same_msg(getattr(a, name), getattr(b, name), f"{path}.{name}")
    elif isinstance(a, str | bytes | int | bool) or a is None:
        assert a == b, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), f"{path}: {a!r} != {b!r}"
    else:  # sequences: list, array.array, numpy
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_msg(x.item() if hasattr(x, "item") else x,
                            y.item() if hasattr(y, "item") else y, f"{path}[{i}]")


def ros_round_trip(msg: object) -> object:
    """The rclpy message as a subscriber sees it (float32 fields rounded)."""
    from rclpy.serialization import deserialize_message, serialize_message

    return deserialize_message(serialize_message(msg), type(msg))


def _header(stamp_ns: int, frame_id: str) -> object:
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return header


def _expected_array(query: str, header: object, image_query: bool) -> object:
    """_result(query) as a GroundedObjectArray, written out by hand (fields not named: the
    .msg defaults of rclpy's classes)."""
    from geometry_msgs.msg import Point, Vector3

    from objembed_msgs.msg import GroundedObject, GroundedObjectArray

    label = "<image>" if image_query else query
    return GroundedObjectArray(
        header=header, query=query, query_type=1 if image_query else 0,
        camera="/camera/color/image_raw", image_width=640, image_height=480, num_candidates=42,
        image_score=0.25, objects=[
            GroundedObject(x1=10.0, y1=20.5, x2=110.0, y2=220.25, score=0.61, similarity=0.8,
                           iou=0.7625, cosine=0.31, label=label, proposal_index=3,
                           proposal_score=0.9, position_valid=True, position_status="ok",
                           depth_samples=412, position=Point(x=0.1, y=-0.2, z=1.5),
                           size=Vector3(x=0.3, y=0.4, z=0.05), track_id=-1),
            GroundedObject(x1=0.0, y1=0.0, x2=5.0, y2=5.0, score=0.2, similarity=0.4, iou=0.5,
                           cosine=-0.1, label=label, proposal_index=7, proposal_score=math.nan,
                           position_valid=False, position_status="no_valid_depth",
                           depth_samples=2, track_id=-1),
            GroundedObject(x1=1.0, y1=2.0, x2=3.0, y2=4.0, score=0.1, similarity=0.2, iou=0.5,
                           cosine=0.0, label=label, proposal_index=9, proposal_score=0.5,
                           position_valid=False, position_status="not_computed",
                           depth_samples=0, track_id=12)])


@pytest.mark.parametrize("query_type", [QUERY_TEXT, QUERY_IMAGE])
def test_groundings_are_the_hand_written_messages(msgs: m.Messages, query_type: str) -> None:
    """The node's GroundedObjectArray (rclpy) and the replay's (rosbags CDR), both filled by
    msgfill, each equal the hand-written message as a subscriber sees it."""
    from rclpy.serialization import deserialize_message

    from objembed_msgs.msg import GroundedObjectArray
    from objembed_ros.ros.convert import result_to_msg

    stamp = 1_700_000_000_123_456_789
    result = dataclasses.replace(_result("the red cup"), query_type=query_type)
    want = ros_round_trip(_expected_array("the red cup", _header(stamp, "cam"),
                                          query_type == QUERY_IMAGE))
    assert_same_msg(ros_round_trip(result_to_msg(result, _header(stamp, "cam"))), want)
    ours = msgs.serialize(msgs.grounded_array(result, header_at(msgs, stamp, "cam")))
    assert_same_msg(deserialize_message(ours, GroundedObjectArray), want)


def _marker(header: object, kind: str, marker_id: int, xyz: tuple[float, float, float],
            scale: tuple[float, float, float], rgba: tuple[float, float, float, float],
            lifetime_ns: int, text: str = "") -> object:
    """A hand-written cube ("boxes") or text ("labels") marker."""
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker

    sec, nanosec = divmod(lifetime_ns, 1_000_000_000)
    return Marker(header=header, ns=f"objembed/{kind}", id=marker_id,
                  type=1 if kind == "boxes" else 9, action=0,
                  pose=Pose(position=Point(x=xyz[0], y=xyz[1], z=xyz[2]),
                            orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
                  scale=Vector3(x=scale[0], y=scale[1], z=scale[2]),
                  color=ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3]),
                  lifetime=Duration(sec=sec, nanosec=nanosec), text=text)


def _expected_markers(header: object, lifetime_ns: int, per_query: int) -> object:
    """The markers of [_result("a cup"), _plate()] written out by hand: a DELETEALL, then per
    query the first per_query objects with 3D (palette colours 0 and 1, cubes at alpha 0.5),
    each a cube of its size (at least 1 cm) and a 6 cm label 3 cm + half the cube above it
    (-y in the optical frame)."""
    from visualization_msgs.msg import Marker, MarkerArray

    cup = (230 / 255, 25 / 255, 75 / 255)
    plate = (60 / 255, 180 / 255, 75 / 255)
    out = [Marker(action=3),
           _marker(header, "boxes", 0, (0.1, -0.2, 1.5), (0.3, 0.4, 0.05), (*cup, 0.5),
                   lifetime_ns),
           _marker(header, "labels", 0, (0.1, -0.46, 1.5), (0.0, 0.0, 0.06), (*cup, 1.0),
                   lifetime_ns, "a cup 0.61"),
           _marker(header, "boxes", 1, (0.1, -0.2, 1.5), (0.3, 0.01, 0.05), (*plate, 0.5),
                   lifetime_ns),
           _marker(header, "labels", 1, (0.1, -0.265, 1.5), (0.0, 0.0, 0.06), (*plate, 1.0),
                   lifetime_ns, "a plate 0.61")]
    if per_query > 1:
        out += [_marker(header, "boxes", 2, (-0.5, 0.25, 2.0), (0.01, 0.01, 0.01),
                        (*plate, 0.5), lifetime_ns),
                _marker(header, "labels", 2, (-0.5, 0.185, 2.0), (0.0, 0.0, 0.06),
                        (*plate, 1.0), lifetime_ns, "a plate 0.05")]
    return MarkerArray(markers=out)


def _plate() -> GroundingResult:
    """_result("a plate") with a flat first object and a second, point-sized one with 3D."""
    result = _result("a plate", size=(0.3, 0.0, 0.05))
    point = GroundedBox((50.0, 60.0, 70.0, 80.0), 0.05, 0.1, 0.5, 0.0, 11, 0.3,
                        Position3D(True, "ok", (-0.5, 0.25, 2.0), (0.0, 0.0, 0.0), 30))
    return dataclasses.replace(result, objects=[*result.objects, point])


def test_markers_are_the_hand_written_ones_and_overlay_matches_the_node(
        msgs: m.Messages) -> None:
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from objembed_ros.ros import viz
    from objembed_ros.ros.convert import result_to_msg

    stamp = 5_000_000_123
    results = [_result("a cup"), _plate()]
    ours = [msgs.grounded_array(r, header_at(msgs, stamp)) for r in results]
    theirs = [result_to_msg(r, _header(stamp, FRAME_ID)) for r in results]
    for lifetime, n, lifetime_ns, count in ((0.5, 5, 500_000_000, 7),
                                            (1.25, 1, 1_250_000_000, 5)):
        want = ros_round_trip(_expected_markers(_header(stamp, FRAME_ID), lifetime_ns, n))
        got = deserialize_message(msgs.serialize(msgs.markers(ours, lifetime, n)), MarkerArray)
        assert len(got.markers) == count  # DELETEALL + cube and label per object shown
        assert_same_msg(got, want)
        assert_same_msg(ros_round_trip(viz.markers_for(theirs, lifetime, n)), want)
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(m.render_overlay(rgb, ours, 5), viz.draw_overlay(rgb, theirs, 5))


def test_msgfill_constants_are_the_msg_files_constants() -> None:
    from visualization_msgs.msg import Marker

    from objembed_msgs.msg import GroundedObjectArray
    from objembed_ros import msgfill

    assert (msgfill.GROUNDED_QUERY_TEXT, msgfill.GROUNDED_QUERY_IMAGE) == (
        GroundedObjectArray.QUERY_TEXT, GroundedObjectArray.QUERY_IMAGE)
    assert (msgfill.MARKER_ADD, msgfill.MARKER_DELETEALL, msgfill.MARKER_CUBE,
            msgfill.MARKER_TEXT_VIEW_FACING) == (
        Marker.ADD, Marker.DELETEALL, Marker.CUBE, Marker.TEXT_VIEW_FACING)


@pytest.mark.parametrize("typename", [
    m.GROUNDED_OBJECT_ARRAY, "objembed_msgs/msg/GroundedObject", "visualization_msgs/msg/Marker",
    m.MARKER_ARRAY, m.IMAGE, m.COMPRESSED_IMAGE, m.CAMERA_INFO, "geometry_msgs/msg/Pose"])
def test_defaults_are_the_msg_files_defaults(msgs: m.Messages, typename: str) -> None:
    """A message built with no fields equals rclpy's default-constructed one (which applies
    the .msg defaults, e.g. Quaternion w = 1, GroundedObject track_id = -1)."""
    import importlib

    from rclpy.serialization import deserialize_message

    pkg, _, name = typename.split("/")
    cls = getattr(importlib.import_module(f"{pkg}.msg"), name)
    assert_same_msg(deserialize_message(msgs.serialize(msgs.new(typename)), cls),
                    ros_round_trip(cls()))


def _image(msgs: m.Messages, pixels: np.ndarray, encoding: str, pad: int = 0,
           bigendian: int = 0) -> object:
    """An Image whose rows are `pixels` bytes plus `pad` junk bytes (step > width * bpp)."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return msgs.new(m.IMAGE, height=h, width=pixels.shape[1], encoding=encoding,
                    is_bigendian=bigendian, step=rows.shape[1], data=rows.reshape(-1))


def test_colour_encodings_decode_to_rgb(msgs: m.Messages, photo_wide: np.ndarray) -> None:
    rgb = photo_wide[:40, :30]
    alpha = np.full((*rgb.shape[:2], 1), 7, np.uint8)
    grey = rgb[..., 1]
    cases = {
        "rgb8": (rgb, rgb), "bgr8": (rgb[..., ::-1], rgb),
        "rgba8": (np.concatenate([rgb, alpha], 2), rgb),
        "bgra8": (np.concatenate([rgb[..., ::-1], alpha], 2), rgb),
        "mono8": (grey, np.repeat(grey[..., None], 3, axis=2)),
    }
    for encoding, (stored, want) in cases.items():
        msg = _image(msgs, np.ascontiguousarray(stored), encoding, pad=5)
        np.testing.assert_array_equal(m.colour_to_rgb(msg), want, err_msg=encoding)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    png = msgs.new(m.COMPRESSED_IMAGE, format="png", data=np.frombuffer(buf.getvalue(), np.uint8))
    np.testing.assert_array_equal(m.colour_to_rgb(png), rgb)


def test_bad_images_say_why(msgs: m.Messages) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(m.ImageDecodeError, match="yuv422") as err:
        m.colour_to_rgb(_image(msgs, rgb, "yuv422"))
    assert err.value.reason == "bad_encoding"
    short = _image(msgs, rgb, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(m.ImageDecodeError) as err:
        m.colour_to_rgb(short)
    assert err.value.reason == "truncated_data"
    junk = msgs.new(m.COMPRESSED_IMAGE, format="jpeg", data=np.arange(10, dtype=np.uint8))
    with pytest.raises(m.ImageDecodeError) as err:
        m.colour_to_rgb(junk)
    assert err.value.reason == "bad_compressed"


def test_depth_decodes_to_metres(msgs: m.Messages) -> None:
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    for order, flag in (("<", 0), (">", 1)):
        msg = _image(msgs, mm.astype(f"{order}u2"), "16UC1", pad=2, bigendian=flag)
        np.testing.assert_array_equal(m.depth_to_m(msg), np.array(
            [[np.nan, 1.0], [2.5, 65.535]], np.float32))
    metres = np.array([[0.5, np.inf], [-1.0, 2.0]], "<f4")
    np.testing.assert_array_equal(m.depth_to_m(_image(msgs, metres, "32FC1")),
                                  np.array([[0.5, np.nan], [np.nan, 2.0]], np.float32))
    with pytest.raises(m.ImageDecodeError, match="depth encoding"):
        m.depth_to_m(_image(msgs, np.zeros((2, 2, 3), np.uint8), "rgb8"))

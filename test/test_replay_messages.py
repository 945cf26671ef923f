"""Replay's ROS-free messages against ROS itself: rosidl's type hashes, the node's rclpy
conversions (CDR bytes), and pixel decoding against hand-built message payloads."""
from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from objembed_ros.core.depth import Position3D
from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.replay import messages as m
from objembed_ros.testing.recording import header_at


@pytest.fixture(scope="module")
def msgs() -> m.Messages:
    return m.Messages(m.make_typestore())


def _result(query: str) -> GroundingResult:
    objects = [
        GroundedBox((10.0, 20.5, 110.0, 220.25), 0.61, 0.8, 0.7625, 0.31, 3, 0.9,
                    Position3D(True, "ok", (0.1, -0.2, 1.5), (0.3, 0.4, 0.05), 412)),
        GroundedBox((0.0, 0.0, 5.0, 5.0), 0.2, 0.4, 0.5, -0.1, 7, math.nan,
                    Position3D.invalid("no_valid_depth", 2)),
        GroundedBox((1.0, 2.0, 3.0, 4.0), 0.1, 0.2, 0.5, 0.0, 9, 0.5, None),
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


def test_groundings_are_filled_exactly_as_the_node_fills_them(msgs: m.Messages) -> None:
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Header

    from objembed_msgs.msg import GroundedObjectArray
    from objembed_ros.ros.convert import result_to_msg

    result = _result("the red cup")
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    ours = msgs.serialize(msgs.grounded_array(result, header_at(msgs, 1_700_000_000_123_456_789,
                                                                 "cam")))
    assert_same_msg(deserialize_message(ours, GroundedObjectArray),
                    ros_round_trip(result_to_msg(result, header)))


def test_markers_and_overlay_match_the_node(msgs: m.Messages) -> None:
    from rclpy.serialization import deserialize_message
    from visualization_msgs.msg import MarkerArray

    from objembed_msgs.msg import GroundedObjectArray
    from objembed_ros.ros import viz

    assert (m.MIN_MARKER_SIZE, m.TEXT_HEIGHT) == (viz.MIN_MARKER_SIZE, viz.TEXT_HEIGHT)
    header = header_at(msgs, 5_000_000_123)
    ours = [msgs.grounded_array(_result(q), header) for q in ("a cup", "a plate")]
    theirs = [deserialize_message(msgs.serialize(a), GroundedObjectArray) for a in ours]
    for lifetime, n in ((0.5, 5), (1.25, 1)):
        got = deserialize_message(msgs.serialize(msgs.markers(ours, lifetime, n)), MarkerArray)
        assert len(got.markers) == 5  # DELETEALL + cube and label of 1 valid object x 2
        assert_same_msg(got, ros_round_trip(viz.markers_for(theirs, lifetime, n)))
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(m.render_overlay(rgb, ours, 5), viz.draw_overlay(rgb, theirs, 5))


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

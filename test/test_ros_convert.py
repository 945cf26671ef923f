"""sensor_msgs/Image <-> numpy with padding and byte order; results -> messages."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_ros.core.depth import Position3D
from objembed_ros.core.errors import InputError
from objembed_ros.core.results import FrameMatchResult, GroundedBox, GroundingResult
from objembed_ros.ros.convert import (
    ImageConversionError,
    boxes_from_flat,
    camera_info_to_intrinsics,
    check_image,
    depth_to_image,
    external_boxes,
    frame_match_to_msg,
    image_to_depth,
    image_to_rgb,
    result_to_msg,
    rgb_to_image,
)


def padded_image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """An Image whose rows carry `pad` junk bytes (as some drivers send)."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=data.shape[1],
                 data=data.tobytes())


@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings(photo: np.ndarray, pad: int) -> None:
    rgb = photo[:37, :53]  # odd size
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    cases = {
        "rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": rgba, "bgra8": rgba[..., [2, 1, 0, 3]],
    }
    for encoding, pixels in cases.items():
        out = image_to_rgb(padded_image(np.ascontiguousarray(pixels), encoding, pad))
        assert out.shape == (37, 53, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        assert np.array_equal(out, rgb), encoding
    mono = rgb[..., 1].copy()
    out = image_to_rgb(padded_image(mono, "mono8", pad))
    assert np.array_equal(out, np.dstack([mono] * 3))


def test_round_trip_keeps_header(photo: np.ndarray) -> None:
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    for enc in ("rgb8", "bgr8"):
        msg = rgb_to_image(photo, header, enc)
        assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
        assert np.array_equal(image_to_rgb(msg), photo)


def test_bad_images_raise_one_error_type() -> None:
    good = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(18))
    check_image(good)
    bad = {
        "bad_encoding": Image(height=2, width=3, encoding="yuv422", step=6, data=bytes(12)),
        "wrong_step": Image(height=2, width=3, encoding="rgb8", step=8, data=bytes(16)),
        "truncated_data": Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(17)),
        "data_size_mismatch": Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(19)),
        "bad_size": Image(height=0, width=3, encoding="rgb8", step=9, data=b""),
    }
    for reason, msg in bad.items():
        with pytest.raises(ImageConversionError) as err:
            image_to_rgb(msg)
        assert err.value.reason == reason
        assert isinstance(err.value, InputError)
    with pytest.raises(ImageConversionError):
        image_to_depth(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12)))


@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_encodings(bigendian: bool) -> None:
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 250
    metres = mm.astype(np.float32) / 1000
    for arr, enc in ((mm, "16UC1"), (metres, "32FC1")):
        order = ">" if bigendian else "<"
        raw = arr.astype(arr.dtype.newbyteorder(order)).tobytes()
        step = 4 * arr.itemsize + 2
        rows = np.frombuffer(raw, np.uint8).reshape(3, -1)
        data = np.concatenate([rows, np.zeros((3, 2), np.uint8)], axis=1).tobytes()
        msg = Image(height=3, width=4, encoding=enc, step=step, is_bigendian=bigendian,
                    data=data)
        out = image_to_depth(msg)
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
        assert np.array_equal(image_to_depth(depth_to_image(arr)), arr)


def test_camera_info_and_boxes() -> None:
    info = CameraInfo(width=640, height=480)
    assert camera_info_to_intrinsics(info) is None  # K unset
    info.k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    k = camera_info_to_intrinsics(info)
    assert k is not None and (k.fx, k.cx, k.width) == (500.0, 320.0, 640)
    assert boxes_from_flat([1, 2, 3, 4, 5, 6, 7, 8], 2).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert boxes_from_flat([], 2) is None
    with pytest.raises(InputError, match="multiple of 4"):
        boxes_from_flat([1, 2, 3], 2)
    with pytest.raises(InputError, match="3 boxes given, at most 2 allowed"):
        boxes_from_flat([0.0] * 12, 2)
    # a non-finite box is kept here and refused on its own by core.boxes.repair_boxes
    assert np.isnan(boxes_from_flat([1, 2, math.nan, 4], 2)[0, 2])


def test_result_to_msg_keeps_header_and_fields() -> None:
    header = Header(frame_id="cam")
    header.stamp.sec = 5
    objs = [
        GroundedBox((1.0, 2.0, 3.0, 4.0), 0.5, 0.8, 0.625, 0.3, 7, 0.9,
                    Position3D(True, "ok", (0.1, 0.2, 1.5), (0.3, 0.2, 0.05), 40)),
        GroundedBox((5.0, 6.0, 7.0, 8.0), 0.1, 0.2, 0.5, -0.2, -1, math.nan,
                    Position3D.invalid("no_depth")),
        GroundedBox((0.0, 0.0, 1.0, 1.0), 0.05, 0.1, 0.5, -0.5, 2),
    ]
    res = GroundingResult("red cup", "text", "/cam/image", 5 * 10**9, (640, 480), 100, objs, 0.7)
    msg = result_to_msg(res, header)
    assert msg.header == header
    assert (msg.query, msg.query_type, msg.camera) == ("red cup", 0, "/cam/image")
    assert (msg.image_width, msg.image_height, msg.num_candidates) == (640, 480, 100)
    assert msg.image_score == pytest.approx(0.7)
    o0, o1, o2 = msg.objects
    assert (o0.x1, o0.y2, o0.proposal_index, o0.label) == (1.0, 4.0, 7, "red cup")
    assert o0.position_valid and o0.position.z == pytest.approx(1.5) and o0.depth_samples == 40
    assert not o1.position_valid and o1.position_status == "no_depth"
    assert math.isnan(o1.proposal_score) and o1.proposal_index == -1
    assert o2.position_status == "not_computed"
    img = GroundingResult("q", "image", "c", 0, (1, 1), 0, objs[:1])
    assert result_to_msg(img, header).objects[0].label == "<image>"
    fm = frame_match_to_msg(FrameMatchResult("c", 0, 0.5, 0.75), header)
    assert fm.header == header and fm.score == pytest.approx(0.75)


def test_external_boxes() -> None:
    arr = GroundedObjectArray(objects=[GroundedObject(x1=1.0, y1=2.0, x2=3.0, y2=4.0, score=0.5)])
    boxes, scores = external_boxes(arr)
    assert boxes.tolist() == [[1, 2, 3, 4]] and scores.tolist() == [0.5]
    arr.objects[0].x1 = math.nan
    with pytest.raises(InputError):
        external_boxes(arr)

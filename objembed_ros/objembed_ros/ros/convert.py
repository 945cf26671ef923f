"""ROS messages <-> numpy and core types. No model math lives here.

Image decoding (check_image, image_to_rgb, image_to_depth, ImageConversionError) is
core/image_msg.py, shared with objembed-replay; it is re-exported here under the same names.
GroundedObject(Array) are filled by msgfill.py (shared with objembed-replay) through
new_msg, the rclpy message factory.
"""
from __future__ import annotations

import array
import functools
import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from objembed_msgs.msg import FrameMatch, GroundedObject, GroundedObjectArray
from objembed_ros.core.depth import camera_info_intrinsics as camera_info_to_intrinsics  # noqa: F401
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import stamp_to_ns
from objembed_ros.core.image_msg import (  # noqa: F401  the node's names for the decoders
    COLOUR_ENCODINGS,
    DEPTH_ENCODINGS,
    ImageConversionError,
    check_image,
    image_to_depth,
    image_to_rgb,
)
from objembed_ros.core.results import FrameMatchResult, GroundedBox, GroundingResult
from objembed_ros.msgfill import grounded_array, grounded_object


@functools.cache
def _msg_class(typename: str) -> type:
    package, interface, name = typename.split("/")
    return getattr(importlib.import_module(f"{package}.{interface}"), name)


def new_msg(typename: str, /, **fields: Any) -> Any:
    """The rclpy message of a ROS type name ("geometry_msgs/msg/Point") with the given fields
    (the others: the .msg defaults): msgfill's message factory on the node's side."""
    return _msg_class(typename)(**fields)


def rgb_to_image(rgb: np.ndarray, header: Header | None = None,
                 encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (rgb8 or bgr8), header copied."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected HxWx3 uint8, got {rgb.shape} {rgb.dtype}")
    if encoding == "bgr8":
        rgb = rgb[..., ::-1]
    elif encoding != "rgb8":
        raise InputError(f"rgb_to_image writes rgb8 or bgr8, not {encoding!r}")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                is_bigendian=0, step=rgb.shape[1] * 3)
    if header is not None:
        msg.header = header
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb).data)
    msg.data = data
    return msg


def depth_to_image(depth: np.ndarray, header: Header | None = None) -> Image:
    """(H, W) uint16 mm -> 16UC1, float32 m -> 32FC1 (little-endian)."""
    if depth.dtype == np.uint16:
        encoding = "16UC1"
    elif depth.dtype == np.float32:
        encoding = "32FC1"
    else:
        raise InputError(f"depth must be uint16 (mm) or float32 (m), got {depth.dtype}")
    le = depth.astype(depth.dtype.newbyteorder("<"), copy=False)
    msg = Image(height=depth.shape[0], width=depth.shape[1], encoding=encoding,
                is_bigendian=0, step=depth.shape[1] * depth.dtype.itemsize)
    if header is not None:
        msg.header = header
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(le).tobytes())
    msg.data = data
    return msg


def header_stamp_ns(header: Header) -> int:
    return stamp_to_ns(header.stamp.sec, header.stamp.nanosec)


def boxes_from_flat(values: Sequence[float], max_boxes: int) -> np.ndarray | None:
    """Ground.srv's flat xyxy list -> (N, 4) float64, or None when empty. InputError on a
    length that is not a multiple of 4 or more than max_boxes boxes; bad single boxes
    (NaN/inf, outside the image) are refused one by one by core.boxes.repair_boxes."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        return None
    if flat.size % 4:
        raise InputError(f"bad boxes: {flat.size} values is not a multiple of 4 (flat xyxy)")
    if flat.size // 4 > max_boxes:
        raise InputError(f"{flat.size // 4} boxes given, at most {max_boxes} allowed "
                         "(max_boxes)")
    return flat.reshape(-1, 4)


def external_boxes(msg: GroundedObjectArray) -> tuple[np.ndarray, np.ndarray]:
    """Another detector's boxes (a GroundedObjectArray: x1..y2 and score; header = the image
    they were found in) -> ((K, 4) float32, (K,) float32 proposal scores)."""
    n = len(msg.objects)
    boxes = np.empty((n, 4), np.float32)
    scores = np.empty(n, np.float32)
    for i, o in enumerate(msg.objects):
        boxes[i] = (o.x1, o.y1, o.x2, o.y2)
        scores[i] = o.score
    if n and not np.all(np.isfinite(boxes)):
        raise InputError("external proposals contain non-finite box coordinates")
    return boxes, scores


def object_to_msg(obj: GroundedBox, label: str) -> GroundedObject:
    """One grounded box -> GroundedObject (3D fields from obj.position, track_id kept)."""
    return grounded_object(new_msg, obj, label)


def result_to_msg(result: GroundingResult, header: Header) -> GroundedObjectArray:
    """One query's result -> GroundedObjectArray with the source image's header unchanged."""
    return grounded_array(new_msg, result, header)


def frame_match_to_msg(match: FrameMatchResult, header: Header) -> FrameMatch:
    return FrameMatch(header=header, camera=match.camera, cosine=float(match.cosine),
                      score=float(match.score))

"""ROS messages <-> numpy and core types. No model math lives here.

Images: sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8 or mono8 -> HxWx3 uint8 RGB; 16UC1
(millimetres) or 32FC1 (metres) depth -> HxW array. `step` (row padding) and `is_bigendian`
are honoured. Every problem raises ImageConversionError (an InputError) with a short
`reason` code the node counts in diagnostics, like cv_bridge's single CvBridgeError.
"""
from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from objembed_msgs.msg import FrameMatch, GroundedObject, GroundedObjectArray
from objembed_ros.core.depth import Intrinsics
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import stamp_to_ns
from objembed_ros.core.results import (
    QUERY_IMAGE,
    FrameMatchResult,
    GroundedBox,
    GroundingResult,
)

# encoding -> (channels, dtype, channel order to take for RGB)
COLOUR_ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
DEPTH_ENCODINGS: dict[str, np.dtype] = {
    "16UC1": np.dtype(np.uint16),
    "mono16": np.dtype(np.uint16),
    "32FC1": np.dtype(np.float32),
}


class ImageConversionError(InputError):
    """A sensor_msgs/Image the node cannot use. `reason` is a short code for diagnostics:
    bad_encoding, bad_size, wrong_step, truncated_data, data_size_mismatch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_layout(msg: Image, bytes_per_pixel: int) -> None:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError("bad_size", f"image is {w}x{h}: width and height must be > 0")
    if step < w * bytes_per_pixel:
        raise ImageConversionError(
            "wrong_step", f"step {step} < width {w} * {bytes_per_pixel} bytes per pixel "
            f"({msg.encoding})")
    need = step * h
    have = len(msg.data)
    if have < need:
        raise ImageConversionError(
            "truncated_data", f"data has {have} bytes, step {step} x height {h} needs {need}")
    if have > need:
        raise ImageConversionError(
            "data_size_mismatch", f"data has {have} bytes, step {step} x height {h} is {need}")


def check_image(msg: Image) -> None:
    """Cheap header-only validation (no pixel work) of a colour image; raises on problems.

    The subscription callback runs this so bad frames are counted at once; the worker does
    the pixel conversion.
    """
    spec = COLOUR_ENCODINGS.get(msg.encoding)
    if spec is None:
        raise ImageConversionError(
            "bad_encoding", f"unsupported encoding {msg.encoding!r}; expected one of "
            f"{', '.join(COLOUR_ENCODINGS)}")
    _check_layout(msg, spec[0])


def _rows(msg: Image, row_bytes: int) -> np.ndarray:
    """(H, row_bytes) uint8 view without the row padding (no copy)."""
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    return buf.reshape(int(msg.height), int(msg.step))[:, :row_bytes]


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, C-contiguous, owning its memory only when a
    conversion was needed (rgb8 without padding is a view of the message buffer)."""
    check_image(msg)
    channels, order = COLOUR_ENCODINGS[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    pix = _rows(msg, w * channels).reshape(h, w, channels)
    if channels == 1:
        return np.ascontiguousarray(np.broadcast_to(pix, (h, w, 3)))
    if order is not None:
        pix = pix[..., list(order)]
    return np.ascontiguousarray(pix)


def image_to_depth(msg: Image) -> np.ndarray:
    """16UC1 / mono16 (millimetres, uint16) or 32FC1 (metres, float32) -> (H, W) native-order
    array. Byte order follows is_bigendian."""
    dtype = DEPTH_ENCODINGS.get(msg.encoding)
    if dtype is None:
        raise ImageConversionError(
            "bad_encoding", f"unsupported depth encoding {msg.encoding!r}; expected 16UC1 "
            "(millimetres) or 32FC1 (metres)")
    _check_layout(msg, dtype.itemsize)
    h, w = int(msg.height), int(msg.width)
    rows = _rows(msg, w * dtype.itemsize)
    src = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    return np.ascontiguousarray(rows).view(src).reshape(h, w).astype(dtype, copy=False)


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


def camera_info_to_intrinsics(msg: CameraInfo) -> Intrinsics | None:
    """CameraInfo.k -> Intrinsics for (msg.width, msg.height); None when K is unset (zeros)."""
    k = Intrinsics.from_k(np.asarray(msg.k, dtype=np.float64), int(msg.width), int(msg.height))
    return k if k.valid() else None


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
    out = GroundedObject(
        x1=float(obj.box[0]), y1=float(obj.box[1]), x2=float(obj.box[2]), y2=float(obj.box[3]),
        score=float(obj.score), similarity=float(obj.similarity), iou=float(obj.iou),
        cosine=float(obj.cosine), label=label, proposal_index=int(obj.proposal_index),
        proposal_score=float(obj.proposal_score), track_id=int(obj.track_id),
    )
    pos = obj.position
    if pos is None:
        out.position_status = "not_computed"
    else:
        out.position_valid = bool(pos.valid)
        out.position_status = pos.status
        out.depth_samples = int(pos.samples)
        if pos.valid:
            out.position = Point(x=pos.xyz[0], y=pos.xyz[1], z=pos.xyz[2])
            out.size = Vector3(x=pos.size[0], y=pos.size[1], z=pos.size[2])
    return out


def result_to_msg(result: GroundingResult, header: Header) -> GroundedObjectArray:
    """One query's result -> GroundedObjectArray with the source image's header unchanged."""
    is_image = result.query_type == QUERY_IMAGE
    msg = GroundedObjectArray(
        header=header, query=result.query,
        query_type=GroundedObjectArray.QUERY_IMAGE if is_image else GroundedObjectArray.QUERY_TEXT,
        camera=result.camera, image_width=int(result.image_size[0]),
        image_height=int(result.image_size[1]), num_candidates=int(result.num_candidates),
        image_score=float(result.image_score),
    )
    label = "<image>" if is_image else result.query
    msg.objects = [object_to_msg(o, label) for o in result.objects]
    return msg


def frame_match_to_msg(match: FrameMatchResult, header: Header) -> FrameMatch:
    return FrameMatch(header=header, camera=match.camera, cosine=float(match.cosine),
                      score=float(match.score))

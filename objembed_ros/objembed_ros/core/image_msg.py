"""sensor_msgs/Image pixels -> numpy, read from the message's fields only (encoding, height,
width, step, is_bigendian, data), so rclpy's classes and a bag reader's (objembed-replay) decode
alike. No ROS import.

Colour: rgb8, bgr8, rgba8, bgra8 or mono8 -> HxWx3 uint8 RGB; depth: 16UC1/mono16
(millimetres) or 32FC1 (metres) -> HxW array. `step` (row padding) and `is_bigendian` are
honoured. Every problem raises ImageConversionError (an InputError) with a short `reason` code
that the node and the replay count, like cv_bridge's single CvBridgeError.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from objembed_ros.core.errors import InputError

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
    """An image message the node or the replay cannot use. `reason` is a short code for
    diagnostics and reports: bad_encoding, bad_size, wrong_step, truncated_data,
    data_size_mismatch (the replay adds bad_compressed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_layout(msg: Any, bytes_per_pixel: int) -> None:
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


def check_image(msg: Any) -> None:
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


def _rows(msg: Any, row_bytes: int) -> np.ndarray:
    """(H, row_bytes) uint8 view without the row padding (no copy)."""
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    return buf.reshape(int(msg.height), int(msg.step))[:, :row_bytes]


def image_to_rgb(msg: Any) -> np.ndarray:
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


def image_to_depth(msg: Any) -> np.ndarray:
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

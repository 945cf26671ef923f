"""ROS messages without rclpy: the rosbags typestore, pixel decoding and the node's outputs.

Recordings are read and written with `rosbags` (pure Python CDR), so nothing here imports
rclpy. The objembed_msgs types are registered from their .msg files. Outputs are filled by
msgfill.py, which fills the node's too, with Messages.new as the message factory;
test/test_replay_messages.py checks the CDR bytes against hand-written rclpy messages.

Colour images: sensor_msgs/Image rgb8, bgr8, rgba8, bgra8, mono8 (step and is_bigendian
honoured) and sensor_msgs/CompressedImage (any format PIL decodes: jpeg, png) -> HxWx3 uint8
RGB. Depth: 16UC1/mono16 millimetres or 32FC1 metres -> float32 metres (NaN = no depth).
"""
from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.core import overlay
from objembed_ros.core.depth import camera_info_intrinsics, depth_to_metres  # noqa: F401
from objembed_ros.core.frames import stamp_to_ns
from objembed_ros.core.image_msg import ImageConversionError, image_to_depth, image_to_rgb
from objembed_ros.core.results import GroundingResult
from objembed_ros.msgfill import grounded_array, markers

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
GROUNDED_OBJECT_ARRAY = "objembed_msgs/msg/GroundedObjectArray"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
COLOUR_TYPES = (IMAGE, COMPRESSED_IMAGE)

# Field defaults the .msg files declare (rosbags' field definitions drop them).
MSG_DEFAULTS: dict[str, dict[str, Any]] = {
    "geometry_msgs/msg/Quaternion": {"w": 1.0},
    "objembed_msgs/msg/GroundedObject": {"track_id": -1},
}


# An image message replay cannot use; `reason` is a short code for the report (the node's
# codes from core/image_msg.py, plus bad_compressed).
ImageDecodeError = ImageConversionError


# -- types ----------------------------------------------------------------------------------
def objembed_msgs_dir() -> Path:
    """The folder of objembed_msgs' .msg files: $OBJEMBED_MSGS_DIR, the source checkout's
    msg/objembed_msgs/msg, or <prefix>/share/objembed_msgs/msg of an install (ament or pip)."""
    candidates = [Path(p) for p in (os.environ.get("OBJEMBED_MSGS_DIR", ""),) if p]
    candidates.append(Path(__file__).resolve().parents[3] / "msg" / "objembed_msgs" / "msg")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [Path(p) / "share" / "objembed_msgs" / "msg" for p in [*prefixes, sys.prefix]]
    for path in candidates:
        if (path / "GroundedObjectArray.msg").is_file():
            return path
    raise FileNotFoundError("objembed_msgs .msg files not found (looked in "
                            f"{', '.join(map(str, candidates))}); set OBJEMBED_MSGS_DIR")


def make_typestore(msg_dir: Path | None = None) -> Any:
    """The ROS 2 Kilted typestore with objembed_msgs registered from its .msg files."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for path in sorted((msg_dir or objembed_msgs_dir()).glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"objembed_msgs/msg/{path.stem}"))
    store.register(types)
    return store


class Messages:
    """Build messages of a rosbags typestore; fields not given get their .msg defaults
    (MSG_DEFAULTS, else 0, '', empty)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def new(self, typename: str, **values: Any) -> Any:
        cls = self.store.types[typename]
        _, field_defs = self.store.fielddefs[typename]
        defaults = MSG_DEFAULTS.get(typename, {})
        for name, desc in field_defs:
            if name in defaults and name not in values:
                values[name] = defaults[name]
            elif name not in values:
                values[name] = self._default(desc)
        return cls(**values)

    def _default(self, desc: tuple[Any, Any]) -> Any:
        kind, spec = desc
        kind = int(kind)
        if kind == 2:  # NAME: a nested message
            return self.new(spec)
        if kind == 1:  # BASE: (type, string bound)
            return _base_default(spec[0])
        inner, length = spec  # ARRAY (3, fixed length) or SEQUENCE (4)
        if int(inner[0]) == 1 and inner[1][0] not in ("string", "wstring"):
            return np.zeros(length if kind == 3 else 0, dtype=_numpy_dtype(inner[1][0]))
        return [self._default(inner) for _ in range(length if kind == 3 else 0)]

    def serialize(self, msg: Any) -> bytes:
        return bytes(self.store.serialize_cdr(msg, msg.__msgtype__))

    def deserialize(self, data: bytes | memoryview, typename: str) -> Any:
        return self.store.deserialize_cdr(data, typename)

    # -- the node's outputs ------------------------------------------------------------------
    def grounded_array(self, result: GroundingResult, header: Any) -> Any:
        """One query's result -> GroundedObjectArray with the source header unchanged."""
        return grounded_array(self.new, result, header)

    def markers(self, arrays: Sequence[Any], lifetime_s: float, max_per_query: int) -> Any:
        """Cube + label markers for objects with a valid 3D position, after a DELETEALL
        (the node's ~/markers)."""
        return markers(self.new, arrays, lifetime_s, max_per_query)

    def rgb_image(self, rgb: np.ndarray, header: Any) -> Any:
        """HxWx3 uint8 -> sensor_msgs/Image rgb8 with the given header."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        return self.new(IMAGE, header=header, height=rgb.shape[0], width=rgb.shape[1],
                        encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                        data=rgb.reshape(-1))


def _base_default(name: str) -> Any:
    if name in ("string", "wstring"):
        return ""
    if name == "bool":
        return False
    if name.startswith("float"):
        return 0.0
    return 0


def _numpy_dtype(name: str) -> np.dtype:
    return np.dtype({"bool": np.bool_, "byte": np.uint8, "char": np.uint8,
                     "float32": np.float32, "float64": np.float64}.get(name, name))


# -- decoding -------------------------------------------------------------------------------
def colour_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> HxWx3 uint8 RGB (ImageDecodeError if not)."""
    if hasattr(msg, "format"):  # CompressedImage
        from PIL import Image as PILImage

        try:
            with PILImage.open(io.BytesIO(bytes(msg.data))) as im:
                return np.ascontiguousarray(np.asarray(im.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise ImageDecodeError("bad_compressed", f"cannot decode CompressedImage (format "
                                                     f"{msg.format!r}): {exc}") from exc
    return image_to_rgb(msg)


def depth_to_m(msg: Any) -> np.ndarray:
    """16UC1/mono16 (mm) or 32FC1 (m) sensor_msgs/Image -> (H, W) float32 metres, NaN where
    there is no depth (core.depth.depth_to_metres)."""
    if not hasattr(msg, "encoding"):  # e.g. a CompressedImage on a depth topic
        raise ImageDecodeError("bad_encoding", f"unsupported depth message {msg.__msgtype__}; "
                                               "expected sensor_msgs/Image 16UC1 or 32FC1")
    return depth_to_metres(image_to_depth(msg))


def stamp_ns(header: Any) -> int:
    return stamp_to_ns(header.stamp.sec, header.stamp.nanosec)


def render_overlay(rgb: np.ndarray, arrays: Sequence[Any], max_per_query: int) -> np.ndarray:
    """The node's debug overlay, drawn by the one renderer (core/overlay.py) from the rosbags
    messages' fields."""
    return overlay.draw_overlay(rgb, overlay.message_groups(arrays, max_per_query))

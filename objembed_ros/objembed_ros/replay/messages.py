"""ROS messages without rclpy: the rosbags typestore, pixel decoding and the node's outputs.

Recordings are read and written with `rosbags` (pure Python CDR), so nothing here imports
rclpy. The objembed_msgs types are registered from their .msg files. Outputs are filled
field for field as the node fills them (ros/convert.result_to_msg, ros/viz.markers_for);
test/test_replay_messages.py checks the CDR bytes against the node's rclpy functions.

Colour images: sensor_msgs/Image rgb8, bgr8, rgba8, bgra8, mono8 (step and is_bigendian
honoured) and sensor_msgs/CompressedImage (any format PIL decodes: jpeg, png) -> HxWx3 uint8
RGB. Depth: 16UC1/mono16 millimetres or 32FC1 metres -> float32 metres (NaN = no depth).
"""
from __future__ import annotations

import io
import math
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
from objembed_ros.core.results import QUERY_IMAGE, GroundedBox, GroundingResult

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
# The node's marker look (ros/viz.py, which imports rclpy; a test keeps the two equal);
# per-query colours come from the one palette, core/overlay.colour.
MIN_MARKER_SIZE = 0.01
TEXT_HEIGHT = 0.06


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
        is_image = result.query_type == QUERY_IMAGE
        label = "<image>" if is_image else result.query
        return self.new(
            GROUNDED_OBJECT_ARRAY, header=header, query=result.query,
            query_type=1 if is_image else 0, camera=result.camera,
            image_width=int(result.image_size[0]), image_height=int(result.image_size[1]),
            num_candidates=int(result.num_candidates), image_score=float(result.image_score),
            objects=[self._grounded_object(o, label) for o in result.objects])

    def _grounded_object(self, obj: GroundedBox, label: str) -> Any:
        pos = obj.position
        extra: dict[str, Any] = {"position_status": "not_computed"}
        if pos is not None:
            extra = {"position_valid": bool(pos.valid), "position_status": pos.status,
                     "depth_samples": int(pos.samples)}
            if pos.valid:
                extra["position"] = self.new("geometry_msgs/msg/Point", x=pos.xyz[0],
                                             y=pos.xyz[1], z=pos.xyz[2])
                extra["size"] = self.new("geometry_msgs/msg/Vector3", x=pos.size[0],
                                         y=pos.size[1], z=pos.size[2])
        return self.new(
            "objembed_msgs/msg/GroundedObject", x1=float(obj.box[0]), y1=float(obj.box[1]),
            x2=float(obj.box[2]), y2=float(obj.box[3]), score=float(obj.score),
            similarity=float(obj.similarity), iou=float(obj.iou), cosine=float(obj.cosine),
            label=label, proposal_index=int(obj.proposal_index),
            proposal_score=float(obj.proposal_score), **extra)

    def markers(self, arrays: Sequence[Any], lifetime_s: float, max_per_query: int) -> Any:
        """Cube + label markers for objects with a valid 3D position, after a DELETEALL
        (the node's ~/markers)."""
        marker = "visualization_msgs/msg/Marker"
        out = [self.new(marker, action=3)]  # DELETEALL
        seconds = max(float(lifetime_s), 0.0)
        sec = int(math.floor(seconds))
        lifetime = self.new("builtin_interfaces/msg/Duration", sec=sec,
                            nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)
        marker_id = 0
        for qi, arr in enumerate(arrays):
            r, g, b = (c / 255 for c in overlay.colour(qi))
            shown = 0
            for obj in arr.objects:
                if not obj.position_valid or shown >= max_per_query:
                    continue
                shown += 1
                scale = self.new("geometry_msgs/msg/Vector3",
                                 x=max(obj.size.x, MIN_MARKER_SIZE),
                                 y=max(obj.size.y, MIN_MARKER_SIZE),
                                 z=max(obj.size.z, MIN_MARKER_SIZE))
                cube_pose = self._pose(obj.position.x, obj.position.y, obj.position.z)
                # optical frame: y points down, so "above" the object is -y
                text_pose = self._pose(obj.position.x,
                                       obj.position.y - scale.y / 2 - TEXT_HEIGHT,
                                       obj.position.z)
                out.append(self.new(
                    marker, header=arr.header, ns="objembed/boxes", id=marker_id, type=1,
                    action=0, pose=cube_pose, scale=scale, lifetime=lifetime,
                    color=self.new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=0.5)))
                out.append(self.new(
                    marker, header=arr.header, ns="objembed/labels", id=marker_id, type=9,
                    action=0, pose=text_pose, lifetime=lifetime,
                    scale=self.new("geometry_msgs/msg/Vector3", z=TEXT_HEIGHT),
                    color=self.new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=1.0),
                    text=f"{obj.label} {obj.score:.2f}"))
                marker_id += 1
        return self.new(MARKER_ARRAY, markers=out)

    def _pose(self, x: float, y: float, z: float) -> Any:
        return self.new("geometry_msgs/msg/Pose",
                        position=self.new("geometry_msgs/msg/Point", x=x, y=y, z=z),
                        orientation=self.new("geometry_msgs/msg/Quaternion", w=1.0))

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

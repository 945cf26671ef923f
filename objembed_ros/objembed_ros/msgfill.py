"""The node's output messages, filled once for two message libraries.

The node publishes rclpy messages; objembed-replay writes rosbags typestore messages and must
run without ROS. Both fill GroundedObjectArray and the ~/markers MarkerArray field for field
alike, so the filling lives here, given a factory `new(typename, **fields) -> message` that
builds a message of a ROS type name ("objembed_msgs/msg/GroundedObject"), with the .msg
defaults for fields not given: ros/convert.new_msg (rclpy classes) or replay's
Messages.new. Fields are read back by attribute (a marker reads the arrays' objects), which
both libraries' messages allow. No ROS import here; core/ stays free of message types.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from objembed_ros.core.overlay import colour
from objembed_ros.core.results import QUERY_IMAGE, GroundedBox, GroundingResult

# Constants of the .msg files (rclpy has them as class attributes, rosbags does not).
GROUNDED_QUERY_TEXT = 0  # GroundedObjectArray.QUERY_TEXT
GROUNDED_QUERY_IMAGE = 1  # GroundedObjectArray.QUERY_IMAGE
MARKER_CUBE = 1  # visualization_msgs/Marker.CUBE
MARKER_TEXT_VIEW_FACING = 9  # Marker.TEXT_VIEW_FACING
MARKER_ADD = 0  # Marker.ADD
MARKER_DELETEALL = 3  # Marker.DELETEALL

# The markers' look (ros/viz.py's memory markers use the same text height).
MIN_MARKER_SIZE = 0.01  # metres: rviz hides zero-thickness cubes
TEXT_HEIGHT = 0.06  # metres


class MessageFactory(Protocol):
    """new(typename, **fields) -> a message of that ROS type; unnamed fields get defaults."""

    def __call__(self, typename: str, /, **fields: Any) -> Any: ...


def grounded_object(new: MessageFactory, obj: GroundedBox, label: str) -> Any:
    """One grounded box -> GroundedObject (3D fields from obj.position, track_id kept)."""
    pos = obj.position
    extra: dict[str, Any] = {"position_status": "not_computed"}
    if pos is not None:
        extra = {"position_valid": bool(pos.valid), "position_status": pos.status,
                 "depth_samples": int(pos.samples)}
        if pos.valid:
            extra["position"] = new("geometry_msgs/msg/Point",
                                    x=pos.xyz[0], y=pos.xyz[1], z=pos.xyz[2])
            extra["size"] = new("geometry_msgs/msg/Vector3",
                                x=pos.size[0], y=pos.size[1], z=pos.size[2])
    return new(
        "objembed_msgs/msg/GroundedObject", x1=float(obj.box[0]), y1=float(obj.box[1]),
        x2=float(obj.box[2]), y2=float(obj.box[3]), score=float(obj.score),
        similarity=float(obj.similarity), iou=float(obj.iou), cosine=float(obj.cosine),
        label=label, proposal_index=int(obj.proposal_index),
        proposal_score=float(obj.proposal_score), track_id=int(obj.track_id), **extra)


def grounded_array(new: MessageFactory, result: GroundingResult, header: Any) -> Any:
    """One query's result -> GroundedObjectArray with the source image's header unchanged;
    objects of an image query are labelled "<image>"."""
    is_image = result.query_type == QUERY_IMAGE
    label = "<image>" if is_image else result.query
    return new(
        "objembed_msgs/msg/GroundedObjectArray", header=header, query=result.query,
        query_type=GROUNDED_QUERY_IMAGE if is_image else GROUNDED_QUERY_TEXT,
        camera=result.camera, image_width=int(result.image_size[0]),
        image_height=int(result.image_size[1]), num_candidates=int(result.num_candidates),
        image_score=float(result.image_score),
        objects=[grounded_object(new, o, label) for o in result.objects])


def duration(new: MessageFactory, seconds: float) -> Any:
    """Seconds (negative: 0) -> builtin_interfaces/Duration, nanoseconds rounded."""
    seconds = max(float(seconds), 0.0)
    sec = int(math.floor(seconds))
    return new("builtin_interfaces/msg/Duration", sec=sec,
               nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


def pose(new: MessageFactory, x: float, y: float, z: float) -> Any:
    """geometry_msgs/Pose at (x, y, z), identity orientation."""
    return new("geometry_msgs/msg/Pose", position=new("geometry_msgs/msg/Point", x=x, y=y, z=z),
               orientation=new("geometry_msgs/msg/Quaternion", w=1.0))


def markers(new: MessageFactory, arrays: Sequence[Any], lifetime_s: float,
            max_per_query: int = 5, delete_all: bool = True) -> Any:
    """Cube + label markers for the first max_per_query objects of each GroundedObjectArray
    with a valid 3D position.

    Each array's header (the source image's) is the markers' header, so rviz places them
    with the camera pose at capture time. A DELETEALL first clears the previous frame's
    markers, and a lifetime makes markers vanish when frames stop arriving. Colours are the
    per-query palette of core/overlay.colour.
    """
    marker = "visualization_msgs/msg/Marker"
    out = [new(marker, action=MARKER_DELETEALL)] if delete_all else []
    lifetime = duration(new, lifetime_s)
    marker_id = 0
    for qi, arr in enumerate(arrays):
        r, g, b = (c / 255 for c in colour(qi))
        shown = 0
        for obj in arr.objects:
            if not obj.position_valid or shown >= max_per_query:
                continue
            shown += 1
            p = obj.position
            scale = new("geometry_msgs/msg/Vector3", x=max(obj.size.x, MIN_MARKER_SIZE),
                        y=max(obj.size.y, MIN_MARKER_SIZE), z=max(obj.size.z, MIN_MARKER_SIZE))
            out.append(new(
                marker, header=arr.header, ns="objembed/boxes", id=marker_id, type=MARKER_CUBE,
                action=MARKER_ADD, pose=pose(new, p.x, p.y, p.z), scale=scale,
                lifetime=lifetime, color=new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=0.5)))
            # optical frame: y points down, so "above" the object is -y
            out.append(new(
                marker, header=arr.header, ns="objembed/labels", id=marker_id,
                type=MARKER_TEXT_VIEW_FACING, action=MARKER_ADD,
                pose=pose(new, p.x, p.y - scale.y / 2 - TEXT_HEIGHT, p.z),
                scale=new("geometry_msgs/msg/Vector3", z=TEXT_HEIGHT), lifetime=lifetime,
                color=new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=1.0),
                text=f"{obj.label} {obj.score:.2f}"))
            marker_id += 1
    return new("visualization_msgs/msg/MarkerArray", markers=out)

"""Visual debugging output, apart from inference: rviz markers for grounded objects with 3D,
and a 2D overlay image (drawn by the one renderer, core.overlay). The node calls these only
when someone subscribes. The groundings' markers are filled by msgfill.markers, shared with
objembed-replay."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from objembed_msgs.msg import GroundedObjectArray, MemoryEntry
from objembed_ros.core import overlay
from objembed_ros.core.overlay import colour
from objembed_ros.msgfill import TEXT_HEIGHT, duration, markers
from objembed_ros.ros.convert import new_msg

__all__ = ["clear_markers", "colour", "draw_overlay", "markers_for", "memory_markers"]


def markers_for(arrays: Sequence[GroundedObjectArray], lifetime_s: float,
                max_per_query: int = 5, delete_all: bool = True) -> MarkerArray:
    """Cube + label markers for the objects with a valid 3D position, after a DELETEALL
    (~/markers): msgfill.markers with rclpy messages."""
    return markers(new_msg, arrays, lifetime_s, max_per_query, delete_all)


def memory_markers(entries: Sequence[MemoryEntry], fixed_frame: str, lifetime_s: float,
                   min_size: float = 0.05) -> MarkerArray:
    """A sphere (diameter: twice the largest position stddev, at least min_size) and an
    "#id label score" text for each recalled entry with a position, for ~/recall_markers.

    Positions in fixed_frame use stamp zero (rviz takes the latest transform, right for
    map/odom); positions in a camera frame use the last sighting's stamp, so rviz places them
    with the camera pose at that time. A DELETEALL first clears the previous answer.
    """
    out = MarkerArray(markers=[Marker(action=Marker.DELETEALL)])
    lifetime = duration(new_msg, lifetime_s)
    for i, e in enumerate(e for e in entries if e.position_valid):
        r, g, b = colour(i)
        header = Header(frame_id=e.position_frame)
        if e.position_frame != fixed_frame:
            header.stamp = e.last_seen
        size = max(2 * max(e.position_stddev.x, e.position_stddev.y, e.position_stddev.z),
                   min_size)
        sphere = Marker(header=header, ns="objembed/memory", id=int(e.id) % 2**31,
                        type=Marker.SPHERE,
                        action=Marker.ADD, lifetime=lifetime,
                        color=ColorRGBA(r=r / 255, g=g / 255, b=b / 255, a=0.6))
        sphere.pose.position = e.position
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = size
        text = Marker(header=header, ns="objembed/memory_labels", id=int(e.id) % 2**31,
                      type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, lifetime=lifetime,
                      color=ColorRGBA(r=r / 255, g=g / 255, b=b / 255, a=1.0),
                      text=f"#{e.id} {e.label} {e.score:.2f}".replace("  ", " "))
        text.pose.position = Point(x=e.position.x, y=e.position.y, z=e.position.z)
        if e.position_frame == fixed_frame:  # z up (REP 103)
            text.pose.position.z += size / 2 + TEXT_HEIGHT
        else:  # optical frame: y points down
            text.pose.position.y -= size / 2 + TEXT_HEIGHT
        text.pose.orientation.w = 1.0
        text.scale.z = TEXT_HEIGHT
        out.markers += [sphere, text]
    return out


def clear_markers(header: Header | None = None) -> MarkerArray:
    """A MarkerArray that removes everything this node drew (on deactivate)."""
    marker = Marker(action=Marker.DELETEALL)
    if header is not None:
        marker.header = header
    return MarkerArray(markers=[marker])


def draw_overlay(rgb: np.ndarray, arrays: Sequence[GroundedObjectArray],
                 max_per_query: int = 5) -> np.ndarray:
    """The image with each query's best boxes, labels ("label score [z m]") drawn on it
    (a copy)."""
    return overlay.draw_overlay(rgb, overlay.message_groups(arrays, max_per_query))

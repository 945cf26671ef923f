"""objembed_ros groundings <-> vision_msgs, the ROS ecosystem's standard detection types
(what rviz plugins, trackers, yolo_ros and Isaac ROS consumers read).

vision_msgs is optional: ROS installs have it from apt, PyPI has no wheel (scripts/install.sh
builds the upstream package when its source is present). It is imported only when a
conversion runs; `available()` says whether it can be, `unavailable_reason()` why not.

Conventions (the same as GroundedObject.msg): boxes are in source-image pixels, pixel k covers
[k, k+1), so a box xyxy has centre ((x1 + x2) / 2, (y1 + y2) / 2) and size (x2 - x1, y2 - y1);
3D is metres in the source header's frame (the camera's optical frame).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from std_msgs.msg import Header

from objembed_msgs.msg import GroundedObjectArray
from objembed_ros.core.errors import InputError


@functools.cache
def _import_error() -> str:
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError as exc:
        return (f"vision_msgs is not installed ({exc}): no Detection2DArray/Detection3DArray "
                "outputs or proposals (ROS: install ros-$ROS_DISTRO-vision-msgs; pip: "
                "scripts/install.sh with the vision_msgs source in ../shared/third_party "
                "or $OBJEMBED_THIRD_PARTY)")
    return ""


def available() -> bool:
    """True when vision_msgs can be imported."""
    return not _import_error()


def unavailable_reason() -> str:
    """One line saying why vision_msgs is unusable; "" when it is available."""
    return _import_error()


def messages() -> Any:
    """The vision_msgs.msg module (for publishers and subscriptions); RuntimeError with
    unavailable_reason() when it cannot be imported."""
    if not available():
        raise RuntimeError(unavailable_reason())
    import vision_msgs.msg

    return vision_msgs.msg


def _hypothesis(vm: Any, query: str, score: float) -> Any:
    out = vm.ObjectHypothesisWithPose()
    out.hypothesis.class_id = query
    out.hypothesis.score = float(score)
    return out


def _track_id(obj: Any) -> str:
    """Detection.id: the tracker's id when the object is tracked, else empty."""
    return str(int(obj.track_id)) if obj.track_id >= 0 else ""


def to_detection2d_array(arrays: Sequence[GroundedObjectArray], header: Header) -> Any:
    """One frame's groundings (one GroundedObjectArray per query, as on ~/groundings) ->
    vision_msgs/Detection2DArray: one Detection2D per object, its single hypothesis the query
    (class_id) with the grounding score (similarity * iou), id = track_id when tracked, the
    source image header on the array and on every detection."""
    vm = messages()
    out = vm.Detection2DArray(header=header)
    for arr in arrays:
        for obj in arr.objects:
            det = vm.Detection2D(header=header, id=_track_id(obj))
            det.results = [_hypothesis(vm, arr.query, obj.score)]
            x1, y1, x2, y2 = (float(v) for v in (obj.x1, obj.y1, obj.x2, obj.y2))
            det.bbox.center.position.x = (x1 + x2) / 2.0
            det.bbox.center.position.y = (y1 + y2) / 2.0
            det.bbox.size_x = x2 - x1
            det.bbox.size_y = y2 - y1
            out.detections.append(det)
    return out


def to_detection3d_array(arrays: Sequence[GroundedObjectArray], header: Header) -> Any:
    """The objects with a valid 3D estimate (position_valid) -> vision_msgs/Detection3DArray:
    bbox centre = the object's 3D point, axis-aligned in the optical frame, size = its extent;
    the hypothesis pose is the same point. Objects without 3D are left out (possibly all)."""
    vm = messages()
    out = vm.Detection3DArray(header=header)
    for arr in arrays:
        for obj in arr.objects:
            if not obj.position_valid:
                continue
            det = vm.Detection3D(header=header, id=_track_id(obj))
            hyp = _hypothesis(vm, arr.query, obj.score)
            for pose in (det.bbox.center, hyp.pose.pose):
                pose.position.x = float(obj.position.x)
                pose.position.y = float(obj.position.y)
                pose.position.z = float(obj.position.z)  # orientation: identity (default)
            det.results = [hyp]
            det.bbox.size.x = float(obj.size.x)
            det.bbox.size.y = float(obj.size.y)
            det.bbox.size.z = float(obj.size.z)
            out.detections.append(det)
    return out


def detection2d_array_to_proposals(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Another detector's vision_msgs/Detection2DArray -> ((N, 4) float32 xyxy boxes,
    (N,) float32 confidences) for external proposals.

    Confidence = the best hypothesis score (NaN when a detection has none). A rotated box
    (theta != 0) becomes the axis-aligned box enclosing it. Non-finite values raise InputError.
    """
    n = len(msg.detections)
    boxes = np.empty((n, 4), np.float64)
    scores = np.full(n, np.nan, np.float64)
    for i, det in enumerate(msg.detections):
        b = det.bbox
        cx, cy, theta = b.center.position.x, b.center.position.y, b.center.theta
        half_w, half_h = b.size_x / 2.0, b.size_y / 2.0
        if theta:
            c, s = abs(math.cos(theta)), abs(math.sin(theta))
            half_w, half_h = c * half_w + s * half_h, s * half_w + c * half_h
        boxes[i] = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        if det.results:
            scores[i] = max(r.hypothesis.score for r in det.results)
    if n and not np.all(np.isfinite(boxes)):
        raise InputError("Detection2DArray proposals contain non-finite box values")
    return boxes.astype(np.float32), scores.astype(np.float32)

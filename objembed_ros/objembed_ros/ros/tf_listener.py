"""Camera frame -> fixed frame at an image's stamp.

Three backends, best first:
- ``tf2_ros``: a ROS install; tf2_ros.Buffer + TransformListener do everything.
- ``tf_topics``: pip installs (no tf2_ros) with the tf2_msgs interface package: subscribe
  /tf and /tf_static (tf2_msgs/TFMessage; /tf_static transient-local, as tf2 publishes it)
  and feed core.transforms.TransformBuffer.
- ``none``: neither is importable; every lookup says so and positions stay in the camera's
  optical frame.
Lookups never wait: the node asks after the frame pass, when /tf for the image stamp has
normally arrived; if not, the reason comes back and the caller keeps camera-frame positions.
"""
from __future__ import annotations

from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from objembed_ros.core.frames import stamp_to_ns
from objembed_ros.core.transforms import RigidTransform, TransformBuffer, TransformLookupError

BACKEND_TF2_ROS = "tf2_ros"
BACKEND_TOPICS = "tf_topics"
BACKEND_NONE = "none"

# tf2_ros's listener profiles: /tf keep-last 100 reliable; /tf_static also transient-local so
# a late subscriber gets the static tree published before it started.
TF_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def transform_from_msg(msg: Any) -> RigidTransform:
    """geometry_msgs/Transform -> RigidTransform (ValueError for a non-finite or zero
    rotation)."""
    t, r = msg.translation, msg.rotation
    return RigidTransform.make((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def feed_tf_message(buffer: TransformBuffer, msg: Any, static: bool) -> int:
    """Add every TransformStamped of a tf2_msgs/TFMessage; returns how many were bad and
    skipped (bad rotation, empty or equal frame names)."""
    bad = 0
    for ts in msg.transforms:
        try:
            buffer.set_transform(ts.header.frame_id, ts.child_frame_id,
                                 stamp_to_ns(ts.header.stamp.sec, ts.header.stamp.nanosec),
                                 transform_from_msg(ts.transform), static=static)
        except ValueError:
            bad += 1
    return bad


class TfLookup:
    """Resolves source frames into a target frame for the node (see the module docstring).

    cache_s: how much /tf history to keep (tf_topics). tolerance_s: how far a stamp may lie
    outside the buffered samples and still take the nearest one (tf_topics).
    """

    def __init__(self, node: Node, cache_s: float = 10.0, tolerance_s: float = 0.0,
                 use_tf2_ros: bool = True, callback_group: Any = None) -> None:
        self.node = node
        self.bad_transforms = 0
        self._subs: list[Any] = []
        self._tf2_buffer: Any = None
        self._tf2_listener: Any = None
        self.buffer: TransformBuffer | None = None
        self.backend = BACKEND_NONE
        if use_tf2_ros:
            try:
                import tf2_ros

                self._tf2_buffer = tf2_ros.Buffer(node=node)
                self._tf2_listener = tf2_ros.TransformListener(self._tf2_buffer, node)
                self.backend = BACKEND_TF2_ROS
                return
            except ImportError:
                pass
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            return
        self.buffer = TransformBuffer(int(cache_s * 1e9), int(tolerance_s * 1e9))
        self._subs = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._feed(m, False), TF_QOS,
                                     callback_group=callback_group),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._feed(m, True),
                                     TF_STATIC_QOS, callback_group=callback_group),
        ]
        self.backend = BACKEND_TOPICS

    def _feed(self, msg: Any, static: bool) -> None:
        self.bad_transforms += feed_tf_message(self.buffer, msg, static)  # type: ignore[arg-type]

    def lookup(self, target: str, source: str, stamp_ns: int
               ) -> tuple[RigidTransform | None, str]:
        """T_target_source at stamp_ns (maps points in source into target), or None and the
        reason."""
        if not target or not source:
            return None, "no target or source frame given"
        if self.backend == BACKEND_TF2_ROS:
            from rclpy.time import Time

            try:
                ts = self._tf2_buffer.lookup_transform(target, source,
                                                       Time(nanoseconds=int(stamp_ns)))
                return transform_from_msg(ts.transform), ""
            except Exception as exc:  # tf2's Lookup/Connectivity/Extrapolation exceptions
                return None, f"tf2: {exc}"
        if self.buffer is None:
            return None, "no transform source (neither tf2_ros nor tf2_msgs is installed)"
        try:
            return self.buffer.lookup(target, source, stamp_ns), ""
        except TransformLookupError as exc:
            return None, str(exc)

    def close(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        if self._tf2_listener is not None:
            self._tf2_listener.unregister()
            self._tf2_listener = None

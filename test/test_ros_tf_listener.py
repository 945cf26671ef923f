"""ros/tf_listener.py with real TFMessage traffic: a publisher node sends /tf_static (before
the listener exists: transient local) and an odometry-like moving /tf; the listener resolves
the camera's optical frame into `map` at given stamps, checked against hand-computed poses."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("tf2_msgs.msg")

from geometry_msgs.msg import TransformStamped
from tf2_msgs.msg import TFMessage

from objembed_ros.ros.tf_listener import (
    BACKEND_TF2_ROS,
    BACKEND_TOPICS,
    TF_QOS,
    TF_STATIC_QOS,
    TfLookup,
)
from objembed_ros.testing.ros_harness import RosClient

S = 1_000_000_000


def yaw_quat(deg: float) -> tuple[float, float, float, float]:
    h = math.radians(deg) / 2
    return (0.0, 0.0, math.sin(h), math.cos(h))


def tf(parent, child, stamp_ns, xyz, quat) -> TransformStamped:
    m = TransformStamped()
    m.header.frame_id, m.child_frame_id = parent, child
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), S)
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = xyz
    (m.transform.rotation.x, m.transform.rotation.y, m.transform.rotation.z,
     m.transform.rotation.w) = quat
    return m


STATIC = TFMessage(transforms=[
    tf("map", "odom", 0, (1.0, 2.0, 0.0), yaw_quat(90)),
    tf("base_link", "camera_link", 0, (0.2, 0.0, 0.5), yaw_quat(0)),
    # REP 103 optical frame: z forward (= link x), x right (= link -y), y down (= link -z)
    tf("camera_link", "camera_optical", 0, (0.0, 0.0, 0.0), (-0.5, 0.5, -0.5, 0.5)),
])
# odometry: 0.5 m/s along odom x, turning 10 degrees per second, samples at 1..5 s
MOVING = TFMessage(transforms=[tf("odom", "base_link", k * S, (0.5 * k, 0.0, 0.0),
                                  yaw_quat(10 * k)) for k in range(1, 6)])


def expected_optical_in_map(t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """By hand: the optical origin in map and the optical z axis (viewing direction) in map."""
    x_base, a = 0.5 * t_s, math.radians(10 * t_s)
    # camera_link origin in odom: base + R(a) (0.2, 0, 0.5)
    cx, cy, cz = x_base + 0.2 * math.cos(a), 0.2 * math.sin(a), 0.5
    # map = R(90 deg) odom + (1, 2, 0): (x, y) -> (-y, x)
    origin = np.array([1.0 - cy, 2.0 + cx, cz])
    view_odom = (math.cos(a), math.sin(a))  # optical z = camera_link x = base x
    view = np.array([-view_odom[1], view_odom[0], 0.0])
    return origin, view


def test_listener_resolves_camera_into_map_from_real_tf_traffic():
    with RosClient("tf_test_publisher") as pub, RosClient("tf_test_listener") as sub:
        static_pub = pub.node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        tf_pub = pub.node.create_publisher(TFMessage, "/tf", TF_QOS)
        static_pub.publish(STATIC)  # before the listener exists
        time.sleep(0.2)
        lookup = TfLookup(sub.node, cache_s=60.0)
        assert lookup.backend in (BACKEND_TOPICS, BACKEND_TF2_ROS)

        def resolved() -> bool:
            tf_pub.publish(MOVING)  # /tf is volatile: keep sending, as a robot does
            return lookup.lookup("map", "camera_optical", int(4.5 * S))[0] is not None

        RosClient.wait_for(resolved, timeout=60.0, what="map <- camera_optical")
        for t_s in (1.0, 2.5, 3.0, 4.5):
            got, reason = lookup.lookup("map", "camera_optical", int(t_s * S))
            assert got is not None, reason
            origin, view = expected_optical_in_map(t_s)
            np.testing.assert_allclose(got.apply(np.zeros(3)), origin, atol=1e-9)
            forward = got.apply(np.array([0.0, 0.0, 1.0])) - origin
            np.testing.assert_allclose(forward, view, atol=1e-9)
        # an object 2 m in front of the camera at 2.5 s
        got, _ = lookup.lookup("map", "camera_optical", int(2.5 * S))
        origin, view = expected_optical_in_map(2.5)
        np.testing.assert_allclose(got.apply(np.array([0.0, 0.0, 2.0])), origin + 2 * view,
                                   atol=1e-9)
        none, reason = lookup.lookup("map", "camera_optical", 9 * S)
        assert none is None and "future" in reason
        none, reason = lookup.lookup("map", "no_such_frame", 2 * S)
        assert none is None and "no_such_frame" in reason
        lookup.close()


def test_bad_transforms_are_skipped_not_fatal():
    from objembed_ros.core.transforms import TransformBuffer
    from objembed_ros.ros.tf_listener import feed_tf_message

    buf = TransformBuffer()
    msg = TFMessage(transforms=[tf("a", "b", S, (1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
                                tf("a", "a", S, (1.0, 0.0, 0.0), yaw_quat(0)),
                                tf("a", "c", S, (1.0, 0.0, 0.0), yaw_quat(0))])
    assert feed_tf_message(buf, msg, static=False) == 2
    assert buf.lookup("a", "c", S).translation == (1.0, 0.0, 0.0)

"""The object memory wired into the real node (subprocess): frames with depth + camera_info
while /tf moves the camera, ~/recall answers with positions in the fixed frame, and the
memory file brings them back after a restart. Also: ~/recall refused while unconfigured or
inactive, and a clear answer when the memory is disabled.

The reference positions are computed here by hand with scipy's Rotation (not the node's
core/transforms.py): a constant-depth image and the whole image as the only proposal make the
camera-frame point exact: ((u - cx) / fx * z, (v - cy) / fy * z, z) at the box centre."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from geometry_msgs.msg import TransformStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from node_helpers import header
from rclpy.qos import qos_profile_sensor_data
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from objembed_msgs.srv import Recall
from objembed_ros.ros.convert import depth_to_image, rgb_to_image
from objembed_ros.ros.tf_listener import TF_QOS, TF_STATIC_QOS

NS = "/mem"
S = 1_000_000_000
W, H = 128, 96
FX, FY, CX, CY = 100.0, 110.0, 40.0, 30.0  # principal point off-centre: x and y are tested
DEPTH_M = 2.0
STAMPS = (1 * S, 2 * S, 3 * S)
# map -> odom (static), odom -> base_link (odometry, per stamp), base_link -> camera_optical
# (static; REP 103 optical axes: z forward = base x, x right = base -y, y down = base -z)
MAP_ODOM = ((1.0, 2.0, 0.0), Rotation.from_euler("z", 90, degrees=True))
BASE_OPTICAL = ((0.2, 0.0, 0.5), Rotation.from_quat([-0.5, 0.5, -0.5, 0.5]))


def odom_base(stamp_ns: int) -> tuple[tuple[float, float, float], Rotation]:
    """Odometry: 1.5 m/s along odom x while turning 30 degrees per second."""
    t = stamp_ns / S
    return (1.5 * t, 0.0, 0.0), Rotation.from_euler("z", 30 * t, degrees=True)


def tf(parent: str, child: str, stamp_ns: int,
       pose: tuple[tuple[float, float, float], Rotation]) -> TransformStamped:
    m = TransformStamped()
    m.header.frame_id, m.child_frame_id = parent, child
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), S)
    t, r = m.transform.translation, m.transform.rotation
    t.x, t.y, t.z = pose[0]
    r.x, r.y, r.z, r.w = (float(v) for v in pose[1].as_quat())
    return m


def expected_in_map(stamp_ns: int) -> np.ndarray:
    """The whole-image box centre at DEPTH_M, camera frame -> map, in float64 by hand."""
    u, v = W / 2 - 0.5, H / 2 - 0.5  # box centre, pixel centres at integer + 0.5
    p = np.array([(u - CX) / FX * DEPTH_M, (v - CY) / FY * DEPTH_M, DEPTH_M])
    for xyz, rot in (BASE_OPTICAL, odom_base(stamp_ns), MAP_ODOM):  # inner to outer
        p = rot.apply(p) + np.asarray(xyz)
    return p


def node_parameters(tiny_objembed_dir: Path, **extra: object) -> dict:
    return {"checkpoint": str(tiny_objembed_dir), "proposer": "whole_image",
            "image_topics": ["image"], "depth_topics": ["depth"],
            "camera_info_topics": ["camera_info"], "memory_min_iou": 0.0, **extra}


def recall(ros_client, text: str = "a photo") -> Recall.Response:
    client = ros_client.node.create_client(Recall, f"{NS}/grounding_node/recall")
    try:
        return ros_client.call(client, Recall.Request(query_type=Recall.Request.QUERY_TEXT,
                                                      text=text, top_k=0), timeout=60)
    finally:
        ros_client.node.destroy_client(client)


def positions(resp: Recall.Response) -> dict[int, tuple[int, str, np.ndarray]]:
    """last-seen stamp -> (id, position_frame, position) of each recalled entry."""
    out = {}
    for e in resp.entries:
        stamp = e.last_seen.sec * S + e.last_seen.nanosec
        assert stamp not in out, f"two entries last seen at {stamp}"
        out[stamp] = (e.id, e.position_frame,
                      np.array([e.position.x, e.position.y, e.position.z]))
    return out


def test_recall_positions_in_map_survive_a_restart(launch_node, ros_client, tiny_objembed_dir,
                                                    photo, photo_wide, tmp_path: Path) -> None:
    params = node_parameters(tiny_objembed_dir, memory_path=str(tmp_path / "memory.db"),
                             fixed_frame="map",
                             memory_write_interval=600.0)  # only cleanup's flush writes
    first = launch_node(namespace=NS, parameters=params)
    n = ros_client.node
    static_pub = n.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    tf_pub = n.create_publisher(TFMessage, "/tf", TF_QOS)
    static_pub.publish(TFMessage(transforms=[tf("map", "odom", 0, MAP_ODOM),
                                             tf("base_link", "camera_optical", 0, BASE_OPTICAL)]))
    moving = TFMessage(transforms=[tf("odom", "base_link", s, odom_base(s)) for s in STAMPS])
    pub_image = n.create_publisher(Image, f"{NS}/image", qos_profile_sensor_data)
    pub_depth = n.create_publisher(Image, f"{NS}/depth", qos_profile_sensor_data)
    pub_info = n.create_publisher(CameraInfo, f"{NS}/camera_info", qos_profile_sensor_data)

    deadline = time.monotonic() + 120
    while not recall(ros_client).success:  # active (and its /tf subscription exists)
        assert time.monotonic() < deadline, "node never became active"
        time.sleep(0.5)
    ros_client.wait_for(lambda: tf_pub.get_subscription_count() > 0, 30, "node on /tf")
    tf_pub.publish(moving)
    time.sleep(0.5)  # /tf for every stamp is in the node's buffer before any image

    images = [photo[:H, 100:100 + W], photo_wide[100:100 + H, 200:200 + W],
              photo[200:200 + H, 50:50 + W]]
    depth = np.full((H, W), DEPTH_M, np.float32)
    for stamp, rgb in zip(STAMPS, images, strict=True):
        info = CameraInfo(header=header(stamp, "camera_optical"), width=W, height=H,
                          k=[FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0])
        deadline = time.monotonic() + 60
        while stamp not in positions(resp := recall(ros_client)):  # best-effort topics
            assert resp.success, resp.message
            assert time.monotonic() < deadline, f"frame {stamp} never remembered"
            tf_pub.publish(moving)
            pub_info.publish(info)
            pub_depth.publish(depth_to_image(depth, header(stamp, "camera_optical")))
            pub_image.publish(rgb_to_image(np.ascontiguousarray(rgb),
                                           header(stamp, "camera_optical")))
            time.sleep(0.3)

    resp = recall(ros_client)
    assert resp.success, resp.message
    seen = positions(resp)
    assert sorted(seen) == list(STAMPS), resp.message  # one entry per place, none extra
    for stamp, (_, frame, xyz) in seen.items():
        assert frame == "map", (stamp, frame, resp.message)
        # constant depth: the camera-frame point is exact, so only float error remains
        np.testing.assert_allclose(xyz, expected_in_map(stamp), atol=1e-5, err_msg=str(stamp))
    # the odometry moved the camera: the places lie further apart than memory_merge_distance
    assert min(math.dist(a[2], b[2]) for a in seen.values() for b in seen.values()
               if a is not b) > 0.5

    # restart on the same file: the same entries at the same places, without new frames
    assert first.stop() in (0, -2, 130)
    launch_node(namespace=NS, parameters=params)
    deadline = time.monotonic() + 120
    while not (resp := recall(ros_client)).success:
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.5)
    again = positions(resp)
    assert sorted(again) == list(STAMPS), resp.message
    for stamp, (entry_id, frame, xyz) in again.items():
        assert (entry_id, frame) == seen[stamp][:2]
        np.testing.assert_allclose(xyz, seen[stamp][2], atol=1e-6)


def test_recall_refused_until_active_and_answered_when_disabled(
        launch_node, ros_client, tiny_objembed_dir) -> None:
    """unconfigured and inactive: refused with the state; active with memory_enabled=false:
    success=false saying so (never a hang, never a silent empty list)."""
    launch_node(namespace=NS, parameters=node_parameters(
        tiny_objembed_dir, autostart=False, memory_enabled=False))
    change = ros_client.node.create_client(ChangeState, f"{NS}/grounding_node/change_state")

    def transition(tid: int) -> None:
        assert ros_client.call(change, ChangeState.Request(transition=Transition(id=tid)),
                               timeout=120).success

    resp = recall(ros_client)
    assert not resp.success and "model not ready (node unconfigured" in resp.message
    transition(Transition.TRANSITION_CONFIGURE)
    resp = recall(ros_client)
    assert not resp.success and resp.message.startswith("node inactive"), resp.message
    transition(Transition.TRANSITION_ACTIVATE)
    resp = recall(ros_client)
    assert (resp.success, resp.message) == (False, "memory disabled (memory_enabled=false)")

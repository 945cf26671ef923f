"""The generated interfaces import, carry what they document, and work between processes."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from objembed_msgs.msg import FrameMatch, GroundedObject, GroundedObjectArray
from objembed_msgs.srv import FindImage, Ground, SetQueries

NODES = Path(__file__).resolve().parent / "nodes"


def test_grounded_object_fields_and_types() -> None:
    obj = GroundedObject(x1=1.5, y1=2.0, x2=10.0, y2=20.0, score=0.25, similarity=0.5, iou=0.5,
                         cosine=-0.1, label="red handle", proposal_index=3,
                         proposal_score=math.nan, position_valid=True, depth_samples=12,
                         position_status="ok")
    obj.position.z = 1.25
    obj.size.x = 0.1
    assert (obj.x1, obj.y2, obj.proposal_index) == (1.5, 20.0, 3)
    assert math.isnan(obj.proposal_score)
    assert obj.position.z == 1.25 and obj.size.x == pytest.approx(0.1)


def test_array_and_service_definitions() -> None:
    arr = GroundedObjectArray(query="cup", query_type=GroundedObjectArray.QUERY_TEXT,
                              image_width=640, image_height=480, num_candidates=100)
    arr.header.frame_id = "cam"
    arr.objects = [GroundedObject(score=s) for s in (0.9, 0.5)]
    assert GroundedObjectArray.QUERY_IMAGE == 1 and len(arr.objects) == 2
    req = Ground.Request(queries=["a", "b"], top_k=5, min_score=0.1, boxes=[0.0, 0.0, 1.0, 1.0],
                         wait_for_fresh_frame=True, timeout=0.5, camera="/cam/image")
    assert list(req.boxes) == [0.0, 0.0, 1.0, 1.0]
    resp = Ground.Response(success=False, message="no frame yet")
    assert resp.results == []
    assert SetQueries.Request(queries=["person"]).queries == ["person"]
    fi = FindImage.Request(query_type=FindImage.Request.QUERY_CACHED_FRAME, top_k=3)
    fi.frame_stamp.sec = 7
    assert FindImage.Request.QUERY_TEXT == 0 and fi.frame_stamp.sec == 7
    assert FrameMatch(cosine=0.5).cosine == 0.5


def test_two_processes_publish_and_serve(launch_node, ros_client) -> None:
    """A node in another process publishes GroundedObjectArray and answers Ground calls."""
    proc = launch_node(str(NODES / "interface_echo_node.py"), namespace="echo")
    received: list[GroundedObjectArray] = []
    ros_client.node.create_subscription(GroundedObjectArray, "/echo/groundings",
                                        received.append, 10)
    client = ros_client.node.create_client(Ground, "/echo/ground")
    ros_client.wait_for(lambda: bool(received), 30, "a GroundedObjectArray from the echo node")
    msg = received[0]
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert msg.objects[0].x2 == 3.5 and msg.objects[0].label == "echo"

    resp = ros_client.call(client, Ground.Request(queries=["mug", "red handle"],
                                                  boxes=[1.0, 2.0, 3.0, 4.0]))
    assert resp.success, resp.message
    assert [r.query for r in resp.results] == ["mug", "red handle"]
    assert resp.results[1].objects[0].y2 == 4.0
    bad = ros_client.call(client, Ground.Request(queries=["  "]))
    assert not bad.success and bad.message == "empty query"
    assert proc.alive(), proc.log()


def test_shm_profile_carries_720p_frames_intact(launch_node, ros_client, tmp_path) -> None:
    """A 1280x720 rgb8 image crosses processes byte for byte with the shipped DDS profile."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    script = tmp_path / "relay.py"
    script.write_text(
        "import rclpy\nfrom rclpy.qos import qos_profile_sensor_data\n"
        "from sensor_msgs.msg import Image\nrclpy.init()\nn = rclpy.create_node('relay')\n"
        "pub = n.create_publisher(Image, 'out', qos_profile_sensor_data)\n"
        "n.create_subscription(Image, 'in', pub.publish, qos_profile_sensor_data)\n"
        "try:\n    rclpy.spin(n)\nexcept KeyboardInterrupt:\n    pass\n"
    )
    launch_node(str(script))
    got: list[Image] = []
    ros_client.node.create_subscription(Image, "out", got.append, qos_profile_sensor_data)
    pub = ros_client.node.create_publisher(Image, "in", qos_profile_sensor_data)
    pixels = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    msg = Image(height=720, width=1280, encoding="rgb8", step=1280 * 3, data=pixels.tobytes())
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        pub.publish(msg)
        time.sleep(0.1)
    assert got, "no 720p frame came back through the relay"
    back = np.frombuffer(bytes(got[0].data), np.uint8).reshape(720, 1280, 3)
    assert np.array_equal(back, pixels)

"""The frame-consumer extension point and the subscription QoS, on real nodes.

Consumers: a GroundingNode in this process (its own rclpy context and executor, real topics):
each encoded frame reaches every consumer with the frame, the standing queries' results, the
source header and the camera, on the worker thread; a consumer that raises is counted and
never stops the worker or the consumers after it.

QoS: the subscriptions' QoS as other participants see it (graph introspection), defaults and
an override through the standard qos_overrides parameters; a best-effort publisher of external
proposals is heard."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from node_helpers import header, in_process_node
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_msgs.srv import Ground
from objembed_ros.ros.convert import rgb_to_image
from objembed_ros.ros.launcher import default_params_file


def test_frame_consumers_get_every_frame_and_cannot_kill_the_worker(
        tiny_objembed_dir: Path, photo: np.ndarray, ros_client) -> None:
    seen: list[tuple] = []

    def failing(*_args: object) -> None:
        raise RuntimeError("consumer bug")

    def recording(frame, results, hdr, camera) -> None:
        seen.append((frame.stamp_ns, [r.query for r in results], hdr, camera,
                     threading.current_thread().name, [r.stamp_ns for r in results]))

    with in_process_node("/consumers", {
            "checkpoint": str(tiny_objembed_dir), "proposer": "whole_image",
            "standing_queries": ["a face", "a cup"], "top_k": 0}) as node:
        node.add_frame_consumer(failing)
        node.add_frame_consumer(recording)
        node.autostart()
        assert node.state == "active", node.model_error
        pub = ros_client.node.create_publisher(Image, "/consumers/image",
                                               qos_profile_sensor_data)
        rgb = np.ascontiguousarray(photo[:64, :96])
        for stamp in (1_000_000_000, 2_000_000_000):
            deadline = time.monotonic() + 60
            while not any(s[0] == stamp for s in seen):
                pub.publish(rgb_to_image(rgb, header(stamp)))
                time.sleep(0.2)
                assert time.monotonic() < deadline
        first = next(s for s in seen if s[0] == 1_000_000_000)
        assert first[1] == ["a face", "a cup"] and first[5] == [1_000_000_000] * 2
        assert first[2] == header(1_000_000_000)  # the source header, unchanged
        assert first[3] == "/consumers/image" and first[4] == "objembed_worker"
        time.sleep(1.0)  # let a frame still in the worker finish
        # the failing consumer ran (and failed) once per frame, the worker and the consumer
        # after it went on every time
        assert node.consumer_errors.snapshot() == {failing.__qualname__: len(seen)}
        node.remove_frame_consumer(recording)
        n = len(seen)
        pub.publish(rgb_to_image(rgb, header(3_000_000_000)))
        time.sleep(1.0)
        assert len(seen) == n


def test_subscription_qos_defaults_and_overrides(launch_node, ros_client,
                                                 tiny_objembed_dir: Path,
                                                 photo: np.ndarray) -> None:
    launch_node(params_file=default_params_file(), namespace="qos", parameters={
        "checkpoint": str(tiny_objembed_dir), "proposer": "external",
        "depth_topics": ["depth"], "camera_info_topics": ["camera_info"],
        "qos_overrides./qos/image.subscription.reliability": "reliable",
        "qos_overrides./qos/image.subscription.depth": 3})
    node = ros_client.node

    def qos_of(topic: str) -> QoSProfile:
        deadline = time.monotonic() + 60
        while True:
            infos = node.get_subscriptions_info_by_topic(topic)
            if infos:
                return infos[0].qos_profile
            assert time.monotonic() < deadline, topic
            time.sleep(0.2)

    def depth_param(topic: str) -> int:  # DDS discovery does not carry the history depth
        name = f"qos_overrides.{topic}.subscription.depth"
        client = node.create_client(GetParameters, "/qos/grounding_node/get_parameters")
        return ros_client.call(client, GetParameters.Request(names=[name]), 60).values[0] \
            .integer_value

    assert qos_of("/qos/image").reliability == ReliabilityPolicy.RELIABLE  # overridden
    assert depth_param("/qos/image") == 3
    for topic in ("/qos/depth", "/qos/camera_info"):
        assert qos_of(topic).reliability == ReliabilityPolicy.BEST_EFFORT, topic
        assert depth_param(topic) == 1
    assert qos_of("/qos/external_proposals").reliability == ReliabilityPolicy.BEST_EFFORT
    assert depth_param("/qos/external_proposals") == 10
    # a best-effort detector's boxes pair with the image and get encoded
    pub_boxes = node.create_publisher(GroundedObjectArray, "/qos/external_proposals",
                                      qos_profile_sensor_data)
    pub_image = node.create_publisher(Image, "/qos/image", QoSProfile(depth=1))
    ground = node.create_client(Ground, "/qos/grounding_node/ground")
    rgb = np.ascontiguousarray(photo[:64, :96])
    h = header(5_000_000_000)
    boxes = GroundedObjectArray(header=h, objects=[GroundedObject(x1=1.0, y1=2.0, x2=40.0,
                                                                  y2=50.0, score=0.9)])
    deadline = time.monotonic() + 60
    while True:
        pub_boxes.publish(boxes)
        pub_image.publish(rgb_to_image(rgb, h))
        resp = ros_client.call(ground, Ground.Request(queries=["a face"]), 60)
        if resp.success:
            break
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.2)
    obj = resp.results[0].objects[0]
    assert [obj.x1, obj.y1, obj.x2, obj.y2] == [1.0, 2.0, 40.0, 50.0]
    assert obj.proposal_score == np.float32(0.9) and obj.proposal_index == 0

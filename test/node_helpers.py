"""Shared pieces of the node integration tests: a module-scoped client and frame publishers."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_msgs.srv import FindImage, Ground, SetQueries
from objembed_ros.ros.convert import rgb_to_image
from objembed_ros.testing.ros_harness import RosClient

NS = "/objembed_test"


def header(stamp_ns: int, frame_id: str = "cam_optical") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return h


@contextmanager
def in_process_node(namespace: str, parameters: dict[str, Any]) -> Iterator[Any]:
    """A GroundingNode in this process (its own rclpy context and a spinning executor, real
    topics), for tests that reach into the node; shut down and destroyed afterwards."""
    from objembed_ros.ros.node import GroundingNode

    context = Context()
    rclpy.init(context=context)
    node = GroundingNode(context=context, namespace=namespace, parameter_overrides=[
        Parameter(name, value=value) for name, value in parameters.items()])
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node
    finally:
        node.begin_shutdown()
        node.release(join_timeout=5)
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.shutdown(context=context)


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class NodeHandle:
    """Publishers, subscriptions and clients of one test module's node."""

    client: RosClient
    ns: str = NS
    timings: list[DiagnosticArray] = field(default_factory=list)
    groundings: list[GroundedObjectArray] = field(default_factory=list)
    diagnostics: list[DiagnosticArray] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.client.node
        self.pub_image = n.create_publisher(Image, f"{self.ns}/image", qos_profile_sensor_data)
        self.pub_depth = n.create_publisher(Image, f"{self.ns}/depth", qos_profile_sensor_data)
        self.pub_info = n.create_publisher(CameraInfo, f"{self.ns}/camera_info",
                                           qos_profile_sensor_data)
        self.pub_boxes = n.create_publisher(GroundedObjectArray,
                                            f"{self.ns}/external_proposals", 10)
        node = f"{self.ns}/grounding_node"
        n.create_subscription(DiagnosticArray, f"{node}/timings", self.timings.append, 50)
        n.create_subscription(GroundedObjectArray, f"{node}/groundings",
                              self.groundings.append, 100)
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.ground = n.create_client(Ground, f"{node}/ground")
        self.set_queries = n.create_client(SetQueries, f"{node}/set_queries")
        self.find_image = n.create_client(FindImage, f"{node}/find_image")

    def call_ground(self, call_timeout: float = 60.0, **kwargs: Any) -> Ground.Response:
        return self.client.call(self.ground, Ground.Request(**kwargs), call_timeout)

    def publish_frame(self, rgb: np.ndarray, stamp_ns: int, boxes: np.ndarray,
                      scores: np.ndarray | None = None, wait: bool = True,
                      timeout: float = 60.0) -> Header:
        """Boxes (as another detector's output) + image with the same header; waits until
        the node reports the frame encoded (its ~/timings message with that stamp)."""
        h = header(stamp_ns)
        props = GroundedObjectArray(header=h)
        for i, b in enumerate(boxes):
            s = float(scores[i]) if scores is not None else 0.5
            props.objects.append(GroundedObject(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]),
                                                y2=float(b[3]), score=s))
        image = rgb_to_image(rgb, h)
        seen = len(self.timings)
        deadline = time.monotonic() + timeout
        self.pub_boxes.publish(props)
        self.pub_image.publish(image)
        if not wait:
            return h
        # best effort: resend until the node has encoded this stamp
        last = time.monotonic()
        while not any(t.header.stamp == h.stamp for t in self.timings[seen:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"frame {stamp_ns} not encoded in {timeout} s")
            if time.monotonic() - last > 3.0:  # either may have gone out before discovery
                self.pub_boxes.publish(props)
                self.pub_image.publish(image)
                last = time.monotonic()
            time.sleep(0.01)
        return h

    def diag_values(self, timeout: float = 10.0) -> dict[str, str]:
        """Key/values of the node's next /diagnostics status."""
        seen = len(self.diagnostics)
        self.client.wait_for(lambda: len(self.diagnostics) > seen, timeout, "diagnostics")
        status = self.diagnostics[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        values["_level"] = str(status.level)
        values["_message"] = status.message
        return values

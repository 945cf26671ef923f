"""The node's per-frame outputs: ~/groundings, ~/markers, ~/debug_image and ~/timings (lifecycle
publishers: they publish only while the node is active). Markers and the overlay cost nothing
unless someone subscribes."""
from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from objembed_msgs.msg import GroundedObjectArray
from objembed_ros.grounder import CachedFrame
from objembed_ros.ros import convert, vision, viz


class Outputs:
    """Publishers created on configure, destroyed on cleanup."""

    def __init__(self, node: LifecycleNode) -> None:
        self.node = node
        self.groundings: Any = None
        self.markers: Any = None
        self.debug: Any = None
        self.timings: Any = None
        self.detections: Any = None  # vision_msgs outputs, where vision_msgs is installed
        self.detections_3d: Any = None
        self._vision_logged = False

    def create(self) -> None:
        node = self.node
        self.groundings = node.create_lifecycle_publisher(GroundedObjectArray, "~/groundings", 10)
        self.markers = node.create_lifecycle_publisher(MarkerArray, "~/markers", 10)
        self.debug = node.create_lifecycle_publisher(Image, "~/debug_image", 1)
        # per-frame stage timings, header = source image header (for benches and profiling)
        self.timings = node.create_lifecycle_publisher(DiagnosticArray, "~/timings", 10)
        self._create_detections()

    def destroy(self) -> None:
        for pub in (self.groundings, self.markers, self.debug, self.timings):
            if pub is not None:
                self.node.destroy_lifecycle_publisher(pub)
        self.groundings = self.markers = self.debug = self.timings = None
        for pub in (self.detections, self.detections_3d):
            if pub is not None:
                self.node.destroy_lifecycle_publisher(pub)
        self.detections = self.detections_3d = None

    def _create_detections(self) -> None:
        """~/detections and ~/detections_3d where vision_msgs imports; else one log line."""
        if not vision.available():
            if not self._vision_logged:
                self.node.get_logger().info(vision.unavailable_reason())
                self._vision_logged = True
            return
        vm = vision.messages()
        self.detections = self.node.create_lifecycle_publisher(vm.Detection2DArray,
                                                               "~/detections", 10)
        self.detections_3d = self.node.create_lifecycle_publisher(vm.Detection3DArray,
                                                                  "~/detections_3d", 10)

    def publish_detections(self, arrays: list[GroundedObjectArray], header: Header,
                           has_depth: bool) -> None:
        """One frame's standing-query groundings as Detection2DArray (and Detection3DArray
        when the camera has depth); converted only while someone subscribes."""
        if not arrays:
            return
        pub = self.detections
        if pub is not None and pub.get_subscription_count() > 0:
            pub.publish(vision.to_detection2d_array(arrays, header))
        pub = self.detections_3d
        if has_depth and pub is not None and pub.get_subscription_count() > 0:
            pub.publish(vision.to_detection3d_array(arrays, header))

    def clear_markers(self) -> None:
        if self.markers is not None:
            self.markers.publish(viz.clear_markers())

    def publish_groundings(self, arrays: list[GroundedObjectArray]) -> None:
        if self.groundings is not None:
            for arr in arrays:
                self.groundings.publish(arr)

    def publish_visuals(self, frame: CachedFrame, arrays: list[GroundedObjectArray]) -> None:
        node = self.node
        n = int(node.get_parameter("debug_max_objects").value)
        if (self.markers is not None and node.get_parameter("publish_markers").value
                and self.markers.get_subscription_count() > 0):
            self.markers.publish(viz.markers_for(
                arrays, float(node.get_parameter("marker_lifetime").value), n))
        if self.debug is not None and self.debug.get_subscription_count() > 0:
            overlay = viz.draw_overlay(frame.rgb, arrays, n)
            self.debug.publish(convert.rgb_to_image(overlay, frame.meta.header))

    def wants_timings(self) -> bool:
        return self.timings is not None and self.timings.get_subscription_count() > 0

    def publish_timings(self, header: Header, camera: str, stages: dict[str, float]) -> None:
        status = DiagnosticStatus(name=f"{self.node.get_name()}: frame timings",
                                  hardware_id=camera, message="seconds per stage")
        status.values = [KeyValue(key=k, value=f"{v:.6f}") for k, v in stages.items()]
        self.timings.publish(DiagnosticArray(header=header, status=[status]))

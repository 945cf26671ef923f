"""The object memory as the grounding node runs it (memory_enabled): opened on configure,
fed every encoded frame as a frame consumer, flushed and closed on cleanup/shutdown, with the
markers of the last ~/recall answer on ~/recall_markers. The memory itself is ros/recall.py
(MemoryService) over core/memory.py; this is only its lifecycle inside the node."""
from __future__ import annotations

from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from objembed_msgs.msg import MemoryEntry
from objembed_ros.grounder import CachedFrame, Grounder, GroundingResult
from objembed_ros.ros import viz
from objembed_ros.ros.inputs import FrameMeta
from objembed_ros.ros.recall import MemoryService, grounder_embedders


class NodeMemory:
    """Owns the node's MemoryService (None while closed or disabled) and its marker topic."""

    def __init__(self, node: LifecycleNode) -> None:
        self.node = node
        self.service: MemoryService | None = None
        self._markers: Any = None

    def open(self, values: dict[str, Any], grounder: Grounder) -> str | None:
        """With memory_enabled: load the memory (memory_path), listen to /tf (fixed_frame),
        feed it every encoded frame and create ~/recall_markers. The reason on failure."""
        if not values["memory_enabled"]:
            return None
        node = self.node
        try:
            self.service = MemoryService.open(
                node, values, tf_callback_group=MutuallyExclusiveCallbackGroup(),
                **grounder_embedders(
                    grounder, lambda: float(node.get_parameter("default_timeout").value)))
            self._markers = node.create_lifecycle_publisher(MarkerArray, "~/recall_markers", 10)
        except Exception as exc:  # e.g. an unwritable memory_path: configure fails, node lives
            self.close()
            return f"cannot open the object memory: {type(exc).__name__}: {exc}"
        node.add_frame_consumer(self.remember)
        return None

    def remember(self, frame: CachedFrame, results: list[GroundingResult], header: Header,
                 camera: str) -> None:
        """Frame consumer: offer the frame, with its paired depth and intrinsics, to the
        memory (returns at once; the memory thread does the rest)."""
        service = self.service
        if service is None:
            return
        meta: FrameMeta = frame.meta
        if self.node.inputs.paired_depth(frame):
            service.on_frame(frame, results, header, meta.depth_m, meta.intrinsics)
        else:
            service.on_frame(frame, results, header)

    def publish_markers(self, entries: list[MemoryEntry]) -> None:
        """Markers of one ~/recall answer; they stay until the next answer replaces them."""
        service, pub = self.service, self._markers
        if service is not None and pub is not None:
            pub.publish(viz.memory_markers(entries, service.fixed_frame, 0.0))

    def close(self) -> None:
        """Stop feeding the memory, flush its store (cleanup, shutdown)."""
        self.node.remove_frame_consumer(self.remember)
        service, self.service = self.service, None
        if service is not None:
            service.close()
        pub, self._markers = self._markers, None
        if pub is not None:
            self.node.destroy_lifecycle_publisher(pub)

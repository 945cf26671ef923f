"""The node's inputs: image/depth/camera_info/external-proposal subscriptions, their QoS,
pairing (core/pairing.py), transport health per camera, and 3D attachment for results.

QoS: sensor-data defaults (best effort, keep-last 1 for images and depth), overridable at
start through rclpy's standard QoS overriding parameters, e.g.
`qos_overrides./camera/image.subscription.reliability: reliable` (history, depth, reliability).
External proposals (GroundedObjectArray, and vision_msgs/Detection2DArray where vision_msgs is
installed) default to best effort, keep-last 10: a best-effort subscription matches both
best-effort and reliable publishers.

Callbacks only validate headers and hand the newest frame to the worker (`submit`); pixel
work happens on the worker.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_ros.core.depth import (
    STATUS_NO_CAMERA_INFO,
    STATUS_NO_DEPTH,
    Intrinsics,
    depth_to_metres,
)
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import PAIR_OK, StampBuffer
from objembed_ros.core.pairing import camera_matches, depth_status, pair_newest_image, slop_ns
from objembed_ros.core.stats import RateMeter, TransportMeter
from objembed_ros.grounder import CachedFrame, GroundingResult, add_positions
from objembed_ros.ros import convert, vision


def sensor_qos(depth: int) -> QoSProfile:
    """Best effort, keep-last `depth` (rclpy's sensor-data profile with our depth)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT)


IMAGE_QOS_DEPTH = 1  # only the newest frame matters
PROPOSALS_QOS_DEPTH = 10


def shared_memory_profile() -> bool:
    """Whether this process runs Fast DDS with a profile file (the shipped one is SHM)."""
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return rmw.startswith("rmw_fastrtps") and bool(os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"))


@dataclass
class FrameMeta:
    """What the node attaches to a cached frame: the source header and the paired depth."""

    header: Header
    camera: str
    received: float  # time.monotonic() when the image arrived
    depth_m: np.ndarray | None = None
    intrinsics: Intrinsics | None = None
    depth_status: str = STATUS_NO_DEPTH
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Camera:
    """Per-camera inputs and meters."""

    topic: str  # resolved image topic = the camera's name in messages and requests
    reliable: bool = False  # the image subscription's reliability after overrides
    depth: StampBuffer[Image] = field(default_factory=lambda: StampBuffer(6))
    info: Intrinsics | None = None
    has_depth_topic: bool = False
    has_info_topic: bool = False
    images: StampBuffer[tuple[Image, float]] = field(default_factory=lambda: StampBuffer(10))
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_encoded: RateMeter = field(default_factory=RateMeter)
    transport: TransportMeter = field(default_factory=TransportMeter)


# (image, received, external proposals or None): one job for the worker
Job = tuple[Image, float, GroundedObjectArray | None]


class Inputs:
    """Subscriptions and pairing for one node. `submit(topic, job)` hands a frame to the
    worker; `reject(where, reason, message)` counts a bad input; `active()` says whether
    frames should be handed on at all (inactive: counted, not encoded)."""

    def __init__(self, node: Node, group: CallbackGroup, submit: Callable[[str, Job], None],
                 reject: Callable[[str, str, str], None], active: Callable[[], bool]) -> None:
        self.node = node
        self.group = group
        self.submit = submit
        self.reject = reject
        self.active = active
        self.cameras: dict[str, Camera] = {}
        self.external: StampBuffer[GroundedObjectArray] = StampBuffer(20)
        self.external_mode = False
        self._entities: list[Any] = []

    # ---------------------------------------------------------------- creation
    def create(self, values: dict[str, Any]) -> None:
        self.cameras = {}
        self.external_mode = values["proposer"] == "external"
        for i, topic in enumerate(values["image_topics"]):
            cam = Camera(topic=self.node.resolve_topic_name(topic))
            self.cameras[cam.topic] = cam
            qos = self._subscribe(Image, topic, self._image_callback(cam),
                                  sensor_qos(IMAGE_QOS_DEPTH), cam.transport)
            cam.reliable = qos.reliability == ReliabilityPolicy.RELIABLE
            if values["depth_topics"]:
                cam.has_depth_topic = True
                self._subscribe(Image, values["depth_topics"][i], self._depth_callback(cam),
                                sensor_qos(IMAGE_QOS_DEPTH))
            if values["camera_info_topics"]:
                cam.has_info_topic = True
                self._subscribe(CameraInfo, values["camera_info_topics"][i],
                                self._info_callback(cam), sensor_qos(IMAGE_QOS_DEPTH))
        if self.external_mode:
            self._subscribe(GroundedObjectArray, values["external_proposals_topic"],
                            self._on_external, sensor_qos(PROPOSALS_QOS_DEPTH))
            if vision.available():
                self._subscribe(vision.messages().Detection2DArray,
                                values["external_detections_topic"],
                                self._on_external_detections, sensor_qos(PROPOSALS_QOS_DEPTH))

    def _subscribe(self, msg_type: Any, topic: str, callback: Callable[[Any], None],
                   qos: QoSProfile, transport: TransportMeter | None = None) -> QoSProfile:
        """Subscribe with QoS overridable by parameters; returns the QoS in effect. Counts
        the middleware's lost-message events into `transport` where the RMW reports them."""
        options = QoSOverridingOptions.with_default_policies()
        events = None
        if transport is not None:
            events = SubscriptionEventCallbacks(
                message_lost=lambda info: transport.lost(info.total_count_change,
                                                         time.monotonic()))
        try:
            sub = self.node.create_subscription(
                msg_type, topic, callback, qos, callback_group=self.group,
                qos_overriding_options=options, event_callbacks=events)
        except UnsupportedEventTypeError:
            sub = self.node.create_subscription(
                msg_type, topic, callback, qos, callback_group=self.group,
                qos_overriding_options=options)
        self._entities.append(sub)
        return qos  # updated in place by the overriding parameters

    def destroy(self) -> None:
        for entity in self._entities:
            self.node.destroy_subscription(entity)
        self._entities = []
        self.cameras = {}
        self.external.clear()

    def clear_pending(self) -> None:
        """Drop images and proposals waiting to be paired (deactivate)."""
        for cam in self.cameras.values():
            cam.images.clear()
        self.external.clear()

    # ---------------------------------------------------------------- callbacks
    def _image_callback(self, cam: Camera) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            now = time.monotonic()
            cam.rate_in.tick(now)
            cam.transport.arrived(convert.header_stamp_ns(msg.header), now, len(msg.data))
            if not self.active():
                return
            try:
                convert.check_image(msg)  # header-only checks; pixels are the worker's job
            except convert.ImageConversionError as err:
                self.reject("image", err.reason, f"{cam.topic}: {err}")
                return
            if self.external_mode:
                cam.images.add(convert.header_stamp_ns(msg.header), (msg, now))
                self._pair_external(cam)
                return
            self.submit(cam.topic, (msg, now, None))
        return callback

    def _depth_callback(self, cam: Camera) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            if msg.encoding not in convert.DEPTH_ENCODINGS:
                self.reject("depth", "bad_encoding",
                            f"{cam.topic}: depth encoding {msg.encoding!r} (16UC1 or 32FC1)")
                return
            cam.depth.add(convert.header_stamp_ns(msg.header), msg)
        return callback

    def _info_callback(self, cam: Camera) -> Callable[[CameraInfo], None]:
        def callback(msg: CameraInfo) -> None:
            info = convert.camera_info_to_intrinsics(msg)
            if info is None:
                self.reject("camera_info", "no_k", f"{cam.topic}: CameraInfo with K unset")
                return
            cam.info = info
        return callback

    def _declared_camera(self, msg: GroundedObjectArray) -> str:
        return self.node.resolve_topic_name(msg.camera) if msg.camera else ""

    def _on_external(self, msg: GroundedObjectArray) -> None:
        if not self.active():
            return
        try:
            convert.external_boxes(msg)
        except InputError as err:
            self.reject("external_proposals", "bad_boxes", str(err))
            return
        self.external.add(convert.header_stamp_ns(msg.header), msg)
        declared = self._declared_camera(msg)
        for cam in self.cameras.values():
            if camera_matches(declared, cam.topic):
                self._pair_external(cam)

    def _on_external_detections(self, msg: Any) -> None:
        """vision_msgs/Detection2DArray proposals: converted, then paired exactly like
        GroundedObjectArray ones (no camera field: they pair with any camera)."""
        if not self.active():
            return
        try:
            boxes, scores = vision.detection2d_array_to_proposals(msg)
        except InputError as err:
            self.reject("external_detections", "bad_boxes", str(err))
            return
        objects = [GroundedObject(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]),
                                  y2=float(b[3]), score=float(sc))
                   for b, sc in zip(boxes, scores, strict=True)]
        self._on_external(GroundedObjectArray(header=msg.header, objects=objects))

    def _pair_external(self, cam: Camera) -> None:
        slop = slop_ns(self.node.get_parameter("sync_slop").value)
        paired = pair_newest_image(cam.images, self.external, slop, cam.topic,
                                   self._declared_camera)
        if paired is not None:
            _, (img, received), boxes_msg = paired
            self.submit(cam.topic, (img, received, boxes_msg))

    # ---------------------------------------------------------------- 3D
    def with_positions(self, result: GroundingResult, frame: CachedFrame) -> GroundingResult:
        """Attach 3D when depth topics are configured (pairs depth lazily, once per frame)."""
        meta: FrameMeta = frame.meta
        if not self.paired_depth(frame):
            return result
        if meta.depth_m is None:
            return add_positions(result, None, None, missing_status=meta.depth_status)
        if meta.intrinsics is None:
            return add_positions(result, None, None, missing_status=STATUS_NO_CAMERA_INFO)
        return add_positions(result, meta.depth_m, meta.intrinsics)

    def paired_depth(self, frame: CachedFrame) -> bool:
        """Pair the frame's depth and intrinsics into frame.meta (lazily, once per frame);
        False when its camera has neither a depth nor a camera_info topic."""
        meta: FrameMeta = frame.meta
        cam = self.cameras.get(meta.camera)
        if cam is None or not (cam.has_depth_topic or cam.has_info_topic):
            return False
        with meta.lock:
            if meta.depth_m is None:
                self._pair_depth(cam, frame.stamp_ns, meta)
            meta.intrinsics = meta.intrinsics or cam.info
        return True

    def _pair_depth(self, cam: Camera, stamp_ns: int, meta: FrameMeta) -> None:
        slop = slop_ns(self.node.get_parameter("sync_slop").value)
        status, depth_msg, _ = cam.depth.nearest(stamp_ns, slop)
        if status != PAIR_OK or depth_msg is None:
            meta.depth_status = depth_status(status)
            return
        try:
            meta.depth_m = depth_to_metres(convert.image_to_depth(depth_msg))
            meta.depth_status = "ok"
        except InputError as err:
            self.reject("depth", getattr(err, "reason", "bad_depth"), str(err))
            meta.depth_status = STATUS_NO_DEPTH

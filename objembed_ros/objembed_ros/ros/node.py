"""GroundingNode: cameras in, grounded objects out, language queries answered from a cache.

A thin lifecycle shell over objembed_ros.grounder.Grounder:
- on_configure loads the model (a missing/broken checkpoint -> FAILURE with a clear log; the
  node stays unconfigured and its services answer "model not ready"), creates the inputs,
  outputs and the worker thread; on_cleanup frees the model.
- Subscription callbacks only validate headers and hand the newest frame to the worker
  (newest frame wins, drops counted). The worker runs proposals + one ObjEmbed pass, caches
  the frame, and publishes the standing queries' groundings with the source header.
- Services run in their own callback group on a MultiThreadedExecutor and are answered
  from the frame cache, so they never wait behind inference (a new query text costs one
  text pass; a known one a matrix product).

External proposals (proposer = "external"): ROS has no vision_msgs from pip, so another
detector's boxes come in as objembed_msgs/GroundedObjectArray on `external_proposals_topic`:
x1..y2 in source-image pixels, `score` = the detector's confidence (kept as proposal_score),
header = the header of the image they were found in (paired by stamp within sync_slop), and
`camera` = that image topic (empty matches any camera).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from objembed_msgs.msg import GroundedObjectArray
from objembed_msgs.srv import FindImage, Ground, SetQueries
from objembed_ros.accel.backends import BACKENDS
from objembed_ros.core.depth import (
    STATUS_NO_CAMERA_INFO,
    STATUS_NO_DEPTH,
    STATUS_STALE_DEPTH,
    Intrinsics,
    depth_to_metres,
)
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import PAIR_EMPTY, PAIR_OK, LatestMailbox, StampBuffer
from objembed_ros.core.stats import LatencyWindow, RateMeter, ReasonCounter, Throttle
from objembed_ros.grounder import (
    DTYPES,
    PROPOSERS,
    CachedFrame,
    Grounder,
    GrounderBusy,
    GrounderConfig,
    GroundingResult,
    add_positions,
)
from objembed_ros.ros import convert, viz

NODE_NAME = "grounding_node"
ATTN = ("auto", "sdpa", "eager", "flash_attention_2")
RELIABILITY = ("best_effort", "reliable")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Parameters read only at on_configure: changing them needs cleanup + configure.
APPLIED_ON_CONFIGURE = (
    "checkpoint", "proposer", "wedetect_checkpoint", "num_proposals", "device", "dtype",
    "attn", "max_boxes", "frame_cache_size", "text_cache_size",
)


@dataclass
class _Param:
    name: str
    default: Any
    ptype: int
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None


PARAMETERS: tuple[_Param, ...] = (
    _Param("checkpoint", "", ParameterType.PARAMETER_STRING,
           "ObjEmbed checkpoint directory (Hugging Face format). Applied on configure."),
    _Param("proposer", "wedetect", ParameterType.PARAMETER_STRING,
           "Box source: 'wedetect' (WeDetect-Uni), 'external' (boxes from "
           "external_proposals_topic) or 'whole_image' (one whole-image box). On configure."),
    _Param("wedetect_checkpoint", "", ParameterType.PARAMETER_STRING,
           "Original WeDetect-Uni .pth file (proposer 'wedetect'). Applied on configure."),
    _Param("num_proposals", 100, ParameterType.PARAMETER_INTEGER,
           "Proposals kept per frame (the paper uses 100). Applied on configure.",
           int_range=(1, 1000)),
    _Param("device", "cpu", ParameterType.PARAMETER_STRING,
           "Torch device: 'cpu', 'cuda' or 'cuda:N'. Applied on configure."),
    _Param("dtype", "float32", ParameterType.PARAMETER_STRING,
           "Model weights dtype: float32, bfloat16 or float16. Applied on configure."),
    _Param("attn", "auto", ParameterType.PARAMETER_STRING,
           "Attention kernel: auto, sdpa, eager or flash_attention_2. Applied on configure."),
    _Param("projector_backend", "torch", ParameterType.PARAMETER_STRING,
           "Object projector runtime: torch, onnxruntime or tensorrt. An unavailable one falls "
           "back (tensorrt -> onnxruntime -> torch) with the reason in the log and "
           "diagnostics. Applied on configure."),
    _Param("engine_cache_dir", "", ParameterType.PARAMETER_STRING,
           "Folder of ONNX exports and TensorRT engines (keyed by model, grid, GPU, TensorRT "
           "version and precision); empty: ~/.cache/objembed_ros/engines. On configure."),
    _Param("allow_engine_build", True, ParameterType.PARAMETER_BOOL,
           "Export/build a missing or stale ONNX graph or engine on first use of a camera "
           "resolution; false: such a frame fails with the build command to run. On configure."),
    _Param("text_cuda_graphs", False, ParameterType.PARAMETER_BOOL,
           "CUDA only: replay captured CUDA graphs for the text pass. On configure."),
    _Param("max_boxes", 300, ParameterType.PARAMETER_INTEGER,
           "Most boxes one image pass may score (proposals, external or supplied boxes).",
           int_range=(1, 2000)),
    _Param("image_topics", ["image"], ParameterType.PARAMETER_STRING_ARRAY,
           "Colour image topics (relative names follow the namespace and remappings); each "
           "camera keeps its own frame cache.", read_only=True),
    _Param("depth_topics", [], ParameterType.PARAMETER_STRING_ARRAY,
           "Aligned depth topics (16UC1 mm or 32FC1 m), parallel to image_topics; empty: no 3D.",
           read_only=True),
    _Param("camera_info_topics", [], ParameterType.PARAMETER_STRING_ARRAY,
           "CameraInfo topics parallel to image_topics (intrinsics for 3D).", read_only=True),
    _Param("external_proposals_topic", "external_proposals", ParameterType.PARAMETER_STRING,
           "objembed_msgs/GroundedObjectArray of another detector's boxes (proposer "
           "'external'), paired to images by header stamp.", read_only=True),
    _Param("standing_queries", [], ParameterType.PARAMETER_STRING_ARRAY,
           "Queries grounded on every encoded frame and published on ~/groundings (one "
           "GroundedObjectArray per query). Also set by ~/set_queries."),
    _Param("top_k", 10, ParameterType.PARAMETER_INTEGER,
           "Objects kept per standing query; 0 keeps all.", int_range=(0, 1000)),
    _Param("min_score", 0.0, ParameterType.PARAMETER_DOUBLE,
           "Standing-query objects scoring below this are dropped.", float_range=(0.0, 1.0)),
    _Param("qos_reliability", "best_effort", ParameterType.PARAMETER_STRING,
           "Reliability of the image/depth/camera_info subscriptions: best_effort (sensor "
           "data) or reliable.", read_only=True),
    _Param("qos_depth", 1, ParameterType.PARAMETER_INTEGER,
           "Keep-last history depth of the image and depth subscriptions.",
           read_only=True, int_range=(1, 100)),
    _Param("sync_slop", 0.02, ParameterType.PARAMETER_DOUBLE,
           "Seconds: depth / external proposals pair with a colour frame when their stamps "
           "differ by at most this.", float_range=(0.0, 1.0)),
    _Param("frame_cache_size", 8, ParameterType.PARAMETER_INTEGER,
           "Encoded frames kept per camera for services. Applied on configure.",
           int_range=(1, 256)),
    _Param("text_cache_size", 256, ParameterType.PARAMETER_INTEGER,
           "Query-text embeddings kept (LRU). Applied on configure.", int_range=(0, 100000)),
    _Param("max_query_tokens", 256, ParameterType.PARAMETER_INTEGER,
           "Longest query accepted, in tokenizer tokens; longer ones are refused.",
           int_range=(1, 8192)),
    _Param("publish_markers", True, ParameterType.PARAMETER_BOOL,
           "Publish ~/markers (MarkerArray) for objects with a 3D position, when subscribed."),
    _Param("marker_lifetime", 0.5, ParameterType.PARAMETER_DOUBLE,
           "Seconds a marker stays without a newer frame.", float_range=(0.0, 60.0)),
    _Param("debug_max_objects", 5, ParameterType.PARAMETER_INTEGER,
           "Objects per query drawn on ~/debug_image and as markers.", int_range=(1, 100)),
    _Param("autostart", True, ParameterType.PARAMETER_BOOL,
           "Configure and activate on start (pip installs have no lifecycle manager).",
           read_only=True),
    _Param("diagnostics_period", 1.0, ParameterType.PARAMETER_DOUBLE,
           "Seconds between /diagnostics messages.", read_only=True,
           float_range=(0.05, 60.0)),
    _Param("max_frame_age", 0.0, ParameterType.PARAMETER_DOUBLE,
           "Ground calls refuse a cached frame older than this many seconds (by receive "
           "time); 0 disables the check.", float_range=(0.0, 3600.0)),
    _Param("default_timeout", 5.0, ParameterType.PARAMETER_DOUBLE,
           "Seconds a service call may wait for the model when its request gives no timeout.",
           float_range=(0.0, 600.0)),
)


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
class _Camera:
    """Per-camera inputs."""

    topic: str  # resolved image topic = the camera's name in messages and requests
    depth: StampBuffer[Image] = field(default_factory=lambda: StampBuffer(6))
    info: Intrinsics | None = None
    has_depth_topic: bool = False
    has_info_topic: bool = False
    images: StampBuffer[tuple[Image, float]] = field(default_factory=lambda: StampBuffer(10))
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_encoded: RateMeter = field(default_factory=RateMeter)


def _descriptor(p: _Param) -> ParameterDescriptor:
    d = ParameterDescriptor(name=p.name, type=p.ptype, description=p.description,
                            read_only=p.read_only)
    if p.int_range is not None:
        d.integer_range = [IntegerRange(from_value=p.int_range[0], to_value=p.int_range[1],
                                        step=1)]
    if p.float_range is not None:
        d.floating_point_range = [FloatingPointRange(
            from_value=p.float_range[0], to_value=p.float_range[1], step=0.0)]
    return d


def validate_settings(values: dict[str, Any]) -> str | None:
    """Why these parameter values cannot work together, or None (ranges are checked by the
    descriptors; this checks choices and cross-parameter rules)."""
    checks: list[tuple[bool, str]] = [
        (values["proposer"] in PROPOSERS, f"proposer must be one of {PROPOSERS}"),
        (values["dtype"] in DTYPES, f"dtype must be one of {DTYPES}"),
        (values["attn"] in ATTN, f"attn must be one of {ATTN}"),
        (values["projector_backend"] in BACKENDS,
         f"projector_backend must be one of {BACKENDS}"),
        (bool(DEVICE_RE.match(values["device"])), "device must be cpu, cuda or cuda:N"),
        (values["qos_reliability"] in RELIABILITY,
         f"qos_reliability must be one of {RELIABILITY}"),
        (len(values["image_topics"]) > 0 and all(t.strip() for t in values["image_topics"]),
         "image_topics must name at least one topic and no empty ones"),
        (len(set(values["image_topics"])) == len(values["image_topics"]),
         "image_topics must not repeat a topic"),
        (len(values["depth_topics"]) in (0, len(values["image_topics"])),
         "depth_topics must be empty or as long as image_topics"),
        (len(values["camera_info_topics"]) in (0, len(values["image_topics"])),
         "camera_info_topics must be empty or as long as image_topics"),
        (all(q.strip() for q in values["standing_queries"]),
         "standing_queries must not contain empty queries"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    return None


class GroundingNode(LifecycleNode):
    """Lifecycle node grounding language queries in camera frames (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for p in PARAMETERS:
            self._declare(p)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self.grounder: Grounder | None = None
        self.model_state = "unconfigured"
        self.model_error = ""
        self._active = False
        self._cameras: dict[str, _Camera] = {}
        self._mailbox: LatestMailbox[tuple[Image, float, Any]] = LatestMailbox()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._entities: list[Any] = []  # subscriptions/publishers made on configure
        self._external: StampBuffer[GroundedObjectArray] = StampBuffer(20)
        self._standing: list[str] = [q.strip() for q in self._param_value("standing_queries")]

        self.rejected = ReasonCounter()  # bad inputs by reason
        self.service_failures = ReasonCounter()
        self.encode_latency = LatencyWindow()  # proposals + image pass
        self.frame_latency = LatencyWindow()  # image received -> groundings published
        self.overhead_latency = LatencyWindow()  # frame_latency minus model time
        self.service_latency = LatencyWindow()
        self.services_answered = 0
        self._throttle = Throttle(5.0)

        self._service_group = ReentrantCallbackGroup()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self.create_service(Ground, "~/ground", self._on_ground,
                            callback_group=self._service_group)
        self.create_service(SetQueries, "~/set_queries", self._on_set_queries,
                            callback_group=self._service_group)
        self.create_service(FindImage, "~/find_image", self._on_find_image,
                            callback_group=self._service_group)
        # Diagnostics run in every lifecycle state: "unconfigured, checkpoint missing" is
        # exactly what an operator needs to see.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self.create_timer(period, self._publish_diagnostics, callback_group=self._timer_group)
        self._groundings_pub: Any = None
        self._markers_pub: Any = None
        self._debug_pub: Any = None
        self._timings_pub: Any = None

    # ------------------------------------------------------------------ parameters
    def _declare(self, p: _Param) -> None:
        if isinstance(p.default, list) and not p.default:
            # an empty array carries no type: declare typed, then set the empty default
            # (a read-only one left unset reads as [] through _param_value)
            self.declare_parameter(p.name, Parameter.Type.STRING_ARRAY, _descriptor(p))
            if not p.read_only and self._param_value(p.name) == []:
                self.set_parameters([Parameter(p.name, Parameter.Type.STRING_ARRAY, [])])
            return
        self.declare_parameter(p.name, p.default, _descriptor(p))

    def _values(self) -> dict[str, Any]:
        return {p.name: self._param_value(p.name) for p in PARAMETERS}

    def _param_value(self, name: str) -> Any:
        try:
            value = self.get_parameter(name).value
        except ParameterUninitializedException:  # a typed, empty array parameter
            return []
        return list(value) if isinstance(value, (list, tuple)) else value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values = self._values()
        for p in params:
            value = p.value
            values[p.name] = list(value) if isinstance(value, (list, tuple)) else value
        reason = validate_settings(values)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        later = [p.name for p in params if p.name in APPLIED_ON_CONFIGURE]
        if later and self.grounder is not None:
            self.get_logger().info(f"{', '.join(later)} will apply on the next configure")
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        for p in params:
            if p.name == "standing_queries":
                self._standing = [q.strip() for q in p.value]
            elif p.name == "max_query_tokens" and self.grounder is not None:
                self.grounder.config.max_query_tokens = int(p.value)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = self._values()
        reason = validate_settings(values)
        if reason is not None:
            return self._configure_failed(f"bad parameters: {reason}")
        self.model_state = "loading"
        config = GrounderConfig(
            checkpoint=values["checkpoint"], proposer=values["proposer"],
            wedetect_checkpoint=values["wedetect_checkpoint"],
            num_proposals=values["num_proposals"], device=values["device"],
            dtype=values["dtype"], attn=values["attn"], max_boxes=values["max_boxes"],
            text_cache_size=values["text_cache_size"],
            frame_cache_size=values["frame_cache_size"],
            max_query_tokens=values["max_query_tokens"],
            projector_backend=values["projector_backend"],
            engine_cache_dir=values["engine_cache_dir"],
            allow_engine_build=values["allow_engine_build"],
            text_cuda_graphs=values["text_cuda_graphs"])
        t0 = time.monotonic()
        try:
            grounder = Grounder.load(config)
        except Exception as exc:  # any load failure leaves the node unconfigured, alive
            return self._configure_failed(f"cannot load the model: {type(exc).__name__}: {exc}")
        self.get_logger().info(
            f"model loaded in {time.monotonic() - t0:.1f} s: {config.checkpoint} "
            f"(proposer {config.proposer}, {config.device}, {config.dtype}); {grounder.backend}")
        try:
            self._create_io(values)
        except Exception as exc:
            self._destroy_io()
            grounder.close()
            return self._configure_failed(f"cannot create topics: {type(exc).__name__}: {exc}")
        self.grounder = grounder
        self.model_error = ""
        self.model_state = "configured"
        self._stop.clear()
        self._mailbox.reopen()
        self._worker = threading.Thread(target=self._work, name="objembed_worker", daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, why: str) -> TransitionCallbackReturn:
        self.model_state = "unconfigured"
        self.model_error = why
        self.get_logger().error(f"configure failed, node stays unconfigured: {why}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.model_state = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.model_state = "configured"
        self._mailbox.clear()
        if self._markers_pub is not None:
            self._markers_pub.publish(viz.clear_markers())
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.model_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.model_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.model_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop the worker, drop topics, free the model (and CUDA cache)."""
        self._active = False
        self._stop.set()
        self._mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        self._destroy_io()
        grounder, self.grounder = self.grounder, None
        if grounder is not None:
            grounder.close()

    def autostart(self) -> None:
        """configure + activate, as a lifecycle manager would (param `autostart`)."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # ------------------------------------------------------------------ topics
    def _qos(self, depth: int) -> QoSProfile:
        reliable = self.get_parameter("qos_reliability").value == "reliable"
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)

    def _create_io(self, values: dict[str, Any]) -> None:
        qos = self._qos(values["qos_depth"])
        self._cameras = {}
        for i, topic in enumerate(values["image_topics"]):
            cam = _Camera(topic=self.resolve_topic_name(topic))
            self._cameras[cam.topic] = cam
            self._entities.append(self.create_subscription(
                Image, topic, self._image_callback(cam), qos,
                callback_group=self._input_group))
            if values["depth_topics"]:
                cam.has_depth_topic = True
                self._entities.append(self.create_subscription(
                    Image, values["depth_topics"][i], self._depth_callback(cam), qos,
                    callback_group=self._input_group))
            if values["camera_info_topics"]:
                cam.has_info_topic = True
                self._entities.append(self.create_subscription(
                    CameraInfo, values["camera_info_topics"][i], self._info_callback(cam),
                    self._qos(5), callback_group=self._input_group))
        if values["proposer"] == "external":
            self._entities.append(self.create_subscription(
                GroundedObjectArray, values["external_proposals_topic"], self._on_external,
                QoSProfile(depth=10), callback_group=self._input_group))
        self._groundings_pub = self.create_lifecycle_publisher(
            GroundedObjectArray, "~/groundings", 10)
        self._markers_pub = self.create_lifecycle_publisher(MarkerArray, "~/markers", 10)
        self._debug_pub = self.create_lifecycle_publisher(Image, "~/debug_image", 1)
        # per-frame stage timings, header = source image header (for benches and profiling)
        self._timings_pub = self.create_lifecycle_publisher(DiagnosticArray, "~/timings", 10)

    def _destroy_io(self) -> None:
        for entity in self._entities:
            self.destroy_subscription(entity)
        self._entities = []
        for pub in (self._groundings_pub, self._markers_pub, self._debug_pub, self._timings_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._groundings_pub = self._markers_pub = self._debug_pub = self._timings_pub = None
        self._cameras = {}
        self._external.clear()

    def _reject(self, where: str, reason: str, message: str) -> None:
        """Count a bad input and warn, at most once per 5 s per kind."""
        key = f"{where}:{reason}"
        self.rejected.add(key)
        if self._throttle.ready(key):
            self.get_logger().warning(f"rejected {where}: {message} "
                                      f"({self.rejected.snapshot().get(key, 0)} so far)")

    def _image_callback(self, cam: _Camera) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            now = time.monotonic()
            cam.rate_in.tick(now)
            if not self._active:
                return
            try:
                convert.check_image(msg)  # header-only checks; pixels are the worker's job
            except convert.ImageConversionError as err:
                self._reject("image", err.reason, f"{cam.topic}: {err}")
                return
            if self.get_parameter("proposer").value == "external":
                cam.images.add(convert.header_stamp_ns(msg.header), (msg, now))
                self._pair_external(cam)
                return
            self._mailbox.put(cam.topic, (msg, now, None))
        return callback

    def _depth_callback(self, cam: _Camera) -> Callable[[Image], None]:
        def callback(msg: Image) -> None:
            if msg.encoding not in convert.DEPTH_ENCODINGS:
                self._reject("depth", "bad_encoding",
                             f"{cam.topic}: depth encoding {msg.encoding!r} (16UC1 or 32FC1)")
                return
            cam.depth.add(convert.header_stamp_ns(msg.header), msg)
        return callback

    def _info_callback(self, cam: _Camera) -> Callable[[CameraInfo], None]:
        def callback(msg: CameraInfo) -> None:
            info = convert.camera_info_to_intrinsics(msg)
            if info is None:
                self._reject("camera_info", "no_k", f"{cam.topic}: CameraInfo with K unset")
                return
            cam.info = info
        return callback

    def _on_external(self, msg: GroundedObjectArray) -> None:
        if not self._active:
            return
        try:
            convert.external_boxes(msg)
        except InputError as err:
            self._reject("external_proposals", "bad_boxes", str(err))
            return
        self._external.add(convert.header_stamp_ns(msg.header), msg)
        for cam in self._cameras.values():
            if not msg.camera or self.resolve_topic_name(msg.camera) == cam.topic:
                self._pair_external(cam)

    def _pair_external(self, cam: _Camera) -> None:
        """Hand the newest image that has boxes with a matching stamp to the worker."""
        slop = int(self.get_parameter("sync_slop").value * 1e9)
        latest = cam.images.latest()
        if latest is None:
            return
        stamp, (img, received) = latest
        status, boxes_msg, _ = self._external.nearest(stamp, slop)
        if status == PAIR_OK and boxes_msg is not None and (
                not boxes_msg.camera or self.resolve_topic_name(boxes_msg.camera) == cam.topic):
            cam.images.clear()
            self._mailbox.put(cam.topic, (img, received, boxes_msg))

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        """Encode the newest frame of each camera; never on a ROS callback thread."""
        while not self._stop.is_set():
            job = self._mailbox.take(timeout=0.2)
            if job is None:
                continue
            topic, (msg, received, boxes_msg) = job
            cam = self._cameras.get(topic)
            if cam is None or self.grounder is None:
                continue
            try:
                self._process(cam, msg, received, boxes_msg)
            except InputError as err:
                self._reject("image", getattr(err, "reason", "bad_input"), f"{topic}: {err}")
            except Exception as exc:  # keep the worker alive; the log says what broke
                self._reject("frame", "processing_error", f"{topic}: {type(exc).__name__}: {exc}")

    def _process(self, cam: _Camera, msg: Image, received: float,
                 boxes_msg: GroundedObjectArray | None) -> None:
        grounder = self.grounder
        if grounder is None:
            return
        t_start = time.monotonic()
        rgb = convert.image_to_rgb(msg)
        boxes = scores = None
        if boxes_msg is not None:
            boxes, scores = convert.external_boxes(boxes_msg)
        meta = FrameMeta(header=msg.header, camera=cam.topic, received=received)
        stamp = convert.header_stamp_ns(msg.header)
        t_conv = time.monotonic()
        frame = grounder.encode_frame(rgb, stamp, cam.topic, boxes=boxes, box_scores=scores,
                                      meta=meta)
        t_enc = time.monotonic()
        model_s = frame.timings.get("proposals", 0.0) + frame.timings.get("encode", 0.0)
        self.encode_latency.add(model_s)
        cam.rate_encoded.tick()
        arrays: list[GroundedObjectArray] = []
        queries = list(self._standing)
        if queries:
            try:
                results = grounder.ground(queries, frame,
                                          top_k=int(self.get_parameter("top_k").value),
                                          min_score=float(self.get_parameter("min_score").value))
            except InputError as err:  # e.g. a standing query over the token limit
                self._reject("standing_queries", "bad_query", str(err))
                results = []
            results = [self._with_positions(r, frame) for r in results]
            arrays = [convert.result_to_msg(r, msg.header) for r in results]
            for arr in arrays:
                self._groundings_pub.publish(arr)
        t_pub = time.monotonic()
        if arrays:
            total = t_pub - received
            self.frame_latency.add(total)
            self.overhead_latency.add(max(total - model_s, 0.0))
        self._publish_visuals(frame, arrays)
        if self._timings_pub is not None and self._timings_pub.get_subscription_count() > 0:
            stages = dict(frame.timings)
            stages.update(queue=t_start - received, convert=t_conv - t_start,
                          ground_publish=t_pub - t_enc, model=model_s,
                          node_total=t_pub - received)
            self._timings_pub.publish(self._timings_msg(msg.header, cam.topic, stages))

    def _timings_msg(self, header: Header, camera: str, stages: dict[str, float]) -> Any:
        status = DiagnosticStatus(name=f"{self.get_name()}: frame timings", hardware_id=camera,
                                  message="seconds per stage")
        status.values = [KeyValue(key=k, value=f"{v:.6f}") for k, v in stages.items()]
        return DiagnosticArray(header=header, status=[status])

    def _publish_visuals(self, frame: CachedFrame, arrays: list[GroundedObjectArray]) -> None:
        """Markers and the overlay cost nothing unless someone subscribes."""
        n = int(self.get_parameter("debug_max_objects").value)
        if (self._markers_pub is not None and self.get_parameter("publish_markers").value
                and self._markers_pub.get_subscription_count() > 0):
            self._markers_pub.publish(viz.markers_for(
                arrays, float(self.get_parameter("marker_lifetime").value), n))
        if self._debug_pub is not None and self._debug_pub.get_subscription_count() > 0:
            overlay = viz.draw_overlay(frame.rgb, arrays, n)
            self._debug_pub.publish(convert.rgb_to_image(overlay, frame.meta.header))

    def _with_positions(self, result: GroundingResult, frame: CachedFrame) -> GroundingResult:
        """Attach 3D when depth topics are configured (pairs depth lazily, once per frame)."""
        meta: FrameMeta = frame.meta
        cam = self._cameras.get(meta.camera)
        if cam is None or not (cam.has_depth_topic or cam.has_info_topic):
            return result
        with meta.lock:
            if meta.depth_m is None:
                self._pair_depth(cam, frame.stamp_ns, meta)
            meta.intrinsics = meta.intrinsics or cam.info
        if meta.depth_m is None:
            return add_positions(result, None, None, missing_status=meta.depth_status)
        if meta.intrinsics is None:
            return add_positions(result, None, None, missing_status=STATUS_NO_CAMERA_INFO)
        return add_positions(result, meta.depth_m, meta.intrinsics)

    def _pair_depth(self, cam: _Camera, stamp_ns: int, meta: FrameMeta) -> None:
        slop = int(self.get_parameter("sync_slop").value * 1e9)
        status, depth_msg, _ = cam.depth.nearest(stamp_ns, slop)
        if status == PAIR_EMPTY:
            meta.depth_status = STATUS_NO_DEPTH
            return
        if status != PAIR_OK or depth_msg is None:
            meta.depth_status = STATUS_STALE_DEPTH
            return
        try:
            meta.depth_m = depth_to_metres(convert.image_to_depth(depth_msg))
            meta.depth_status = "ok"
        except InputError as err:
            self._reject("depth", getattr(err, "reason", "bad_depth"), str(err))
            meta.depth_status = STATUS_NO_DEPTH

    # ------------------------------------------------------------------ services
    def _not_ready(self) -> str | None:
        if self.grounder is not None:
            return None
        state = self.model_state
        why = f": {self.model_error}" if self.model_error else ""
        return f"model not ready (node {state}{why})"

    def _deadline(self, timeout: float) -> float:
        if timeout > 0:
            return time.monotonic() + timeout
        return time.monotonic() + float(self.get_parameter("default_timeout").value)

    def _camera_name(self, camera: str) -> str | None:
        if not camera:
            return None
        try:
            return self.resolve_topic_name(camera)
        except Exception:
            return camera

    def _select_frame(self, camera: str | None, wait_fresh: bool, timeout: float,
                      t_call: float) -> tuple[CachedFrame | None, str]:
        """The frame to answer from, or (None, why)."""
        grounder = self.grounder
        assert grounder is not None
        if camera is not None and camera not in self._cameras:
            return None, f"unknown camera {camera!r} (known: {', '.join(self._cameras)})"
        if wait_fresh:
            seq = grounder.frames.last_seq
            deadline = t_call + max(timeout, 0.0)
            while True:
                entry = grounder.frames.wait_newer(seq, camera, deadline - time.monotonic())
                if entry is None:
                    return None, f"timeout: no fresh frame within {timeout:.3g} s"
                if entry.item.meta.received >= t_call:
                    return entry.item, ""
                seq = entry.seq
        entry = grounder.frames.latest(camera)
        if entry is None and timeout > 0:
            entry = grounder.frames.wait_newer(0, camera, t_call + timeout - time.monotonic())
            if entry is None:
                return None, f"timeout: no frame yet after {timeout:.3g} s"
        if entry is None:
            return None, "no frame yet"
        max_age = float(self.get_parameter("max_frame_age").value)
        age = time.monotonic() - entry.item.meta.received
        if max_age > 0 and age > max_age:
            return None, f"no recent frame: newest is {age:.2f} s old > max_frame_age {max_age}"
        return entry.item, ""

    def _fail(self, response: Any, kind: str, message: str) -> Any:
        self.service_failures.add(kind)
        response.success = False
        response.message = message
        return response

    # What a grounder error means to a service caller, in one place.
    _GROUNDER_ERRORS = (GrounderBusy, InputError, RuntimeError)

    def _fail_from(self, response: Any, err: Exception) -> Any:
        """A failed response for one of _GROUNDER_ERRORS: busy model -> timeout, bad input ->
        bad_request, model released meanwhile -> model not ready."""
        if isinstance(err, GrounderBusy):
            return self._fail(response, "timeout", str(err))
        if isinstance(err, InputError):
            return self._fail(response, "bad_request", str(err))
        return self._fail(response, "model_not_ready", f"model not ready: {err}")

    def _on_ground(self, request: Ground.Request, response: Ground.Response) -> Ground.Response:
        t_call = time.monotonic()
        try:
            return self._ground(request, response, t_call)
        finally:
            self.services_answered += 1
            self.service_latency.add(time.monotonic() - t_call)

    def _ground(self, request: Ground.Request, response: Ground.Response,
                t_call: float) -> Ground.Response:
        why = self._not_ready()
        if why:
            return self._fail(response, "model_not_ready", why)
        grounder = self.grounder
        assert grounder is not None
        try:
            queries = grounder.check_queries(list(request.queries))
            boxes = convert.boxes_from_flat(request.boxes) if len(request.boxes) else None
        except self._GROUNDER_ERRORS as err:
            return self._fail_from(response, err)
        timeout = float(request.timeout)
        frame, why = self._select_frame(self._camera_name(request.camera),
                                        request.wait_for_fresh_frame, timeout, t_call)
        if frame is None:
            return self._fail(response, "no_frame", why)
        deadline = self._deadline(timeout - (time.monotonic() - t_call)
                                  if timeout > 0 else 0.0)
        try:
            if boxes is not None:
                results = grounder.ground_boxes(queries, frame, boxes, request.top_k,
                                                request.min_score, deadline)
            else:
                results = grounder.ground(queries, frame, request.top_k, request.min_score,
                                          deadline)
        except self._GROUNDER_ERRORS as err:
            return self._fail_from(response, err)
        results = [self._with_positions(r, frame) for r in results]
        response.results = [convert.result_to_msg(r, frame.meta.header) for r in results]
        response.success = True
        response.message = (f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'} on "
                            f"{frame.camera} frame with {frame.num_boxes} boxes")
        return response

    def _on_set_queries(self, request: SetQueries.Request,
                        response: SetQueries.Response) -> SetQueries.Response:
        queries = [q.strip() for q in request.queries]
        if any(not q for q in queries):
            return self._fail(response, "bad_request", "empty query")
        if self.grounder is not None:
            try:
                self.grounder.check_queries(queries) if queries else None
            except self._GROUNDER_ERRORS as err:
                return self._fail_from(response, err)
        result = self.set_parameters([Parameter("standing_queries",
                                                Parameter.Type.STRING_ARRAY, queries)])[0]
        if not result.successful:
            return self._fail(response, "bad_request", result.reason)
        response.success = True
        response.message = (f"{len(queries)} standing queries" if queries
                            else "standing queries cleared")
        return response

    def _on_find_image(self, request: FindImage.Request,
                       response: FindImage.Response) -> FindImage.Response:
        t_call = time.monotonic()
        try:
            why = self._not_ready()
            if why:
                return self._fail(response, "model_not_ready", why)
            grounder = self.grounder
            assert grounder is not None
            camera = self._camera_name(request.camera)
            deadline = self._deadline(0.0)
            kind = request.query_type
            if kind == FindImage.Request.QUERY_TEXT:
                matches = grounder.find_frames(text=request.text, camera=camera,
                                               top_k=request.top_k, deadline=deadline)
            elif kind == FindImage.Request.QUERY_IMAGE:
                rgb = convert.image_to_rgb(request.image)
                matches = grounder.find_frames(image=rgb, camera=camera, top_k=request.top_k,
                                               deadline=deadline)
            elif kind == FindImage.Request.QUERY_CACHED_FRAME:
                stamp = convert.stamp_to_ns(request.frame_stamp.sec, request.frame_stamp.nanosec)
                entry = grounder.frames.by_stamp(stamp, camera)
                if entry is None:
                    return self._fail(response, "no_frame",
                                      f"no cached frame with stamp {request.frame_stamp.sec}."
                                      f"{request.frame_stamp.nanosec:09d}")
                matches = grounder.find_frames(frame=entry.item, camera=camera,
                                               top_k=request.top_k, deadline=deadline)
            else:
                return self._fail(response, "bad_request", f"unknown query_type {kind}")
        except convert.ImageConversionError as err:
            self._reject("query_image", err.reason, str(err))
            return self._fail(response, "bad_request", f"bad query image: {err}")
        except self._GROUNDER_ERRORS as err:
            return self._fail_from(response, err)
        finally:
            self.services_answered += 1
            self.service_latency.add(time.monotonic() - t_call)
        if not matches:
            return self._fail(response, "no_frame", "no frame yet")
        response.matches = [convert.frame_match_to_msg(m, m.meta.header) for m in matches]
        response.success = True
        response.message = f"{len(matches)} frames ranked"
        return response

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> DiagnosticStatus:
        """One status with everything an operator asks first."""
        grounder = self.grounder
        rejected = self.rejected.snapshot()
        values: dict[str, str] = {
            "state": self.model_state,
            "model_error": self.model_error,
            "checkpoint": str(self.get_parameter("checkpoint").value),
            "proposer": str(self.get_parameter("proposer").value),
            "projector_backend": grounder.backend if grounder is not None else "",
            "frames_dropped": str(self._mailbox.dropped),
            "rejected_inputs": str(sum(rejected.values())),
            "services_answered": str(self.services_answered),
            "service_failures": str(self.service_failures.total()),
            "standing_queries": str(len(self._standing)),
        }
        for topic, cam in list(self._cameras.items()):
            values[f"{topic}: rate_in_hz"] = f"{cam.rate_in.rate():.2f}"
            values[f"{topic}: rate_encoded_hz"] = f"{cam.rate_encoded.rate():.2f}"
            values[f"{topic}: frames_encoded"] = str(cam.rate_encoded.total)
        for key, n in sorted(rejected.items()):
            values[f"rejected {key}"] = str(n)
        for key, n in sorted(self.service_failures.snapshot().items()):
            values[f"service_failure {key}"] = str(n)
        for name, window in (("encode", self.encode_latency), ("frame", self.frame_latency),
                             ("node_overhead", self.overhead_latency),
                             ("service", self.service_latency)):
            for q, ms in window.percentiles_ms().items():
                values[f"{name}_latency_{q}_ms"] = f"{ms:.3f}"
        if grounder is not None:
            values["frames_cached"] = str(len(grounder.frames))
            for k, v in grounder.text_cache_stats().items():
                values[f"text_cache_{k}"] = str(v)
        if self.model_error:
            level, message = DiagnosticStatus.ERROR, f"{self.model_state}: {self.model_error}"
        elif not self._active:
            level, message = DiagnosticStatus.WARN, self.model_state
        elif rejected:
            level, message = DiagnosticStatus.WARN, f"active, {sum(rejected.values())} " \
                                                    "inputs rejected"
        else:
            level, message = DiagnosticStatus.OK, "active"
        status = DiagnosticStatus(level=level, name=f"objembed_ros: {self.get_name()}",
                                  message=message, hardware_id=values["checkpoint"])
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = GroundingNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        # from a one-shot timer so the services answer "model not ready" while loading
        def start() -> None:
            timer.cancel()
            node.autostart()

        timer = node.create_timer(0.0, start, callback_group=MutuallyExclusiveCallbackGroup())
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._release()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()

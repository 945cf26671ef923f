"""The node's parameters: one table (name, default, type, range, description), their
descriptors, the cross-parameter checks, and the GrounderConfig they build.

Image/depth/camera_info/external-proposal QoS is not here: it uses rclpy's standard QoS
overriding parameters (`qos_overrides.<topic>.subscription.<policy>`, see ros/inputs.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from objembed_ros.accel.backends import BACKENDS
from objembed_ros.core.resize import parse_size
from objembed_ros.encoder.preprocess import PREPROCESS_CHOICES
from objembed_ros.grounder import DTYPES, PROPOSERS, GrounderConfig
from objembed_ros.ros import recall

NODE_NAME = "grounding_node"
ATTN = ("auto", "sdpa", "eager", "flash_attention_2")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Param:
    """One ROS parameter of the node: declared with descriptor(p) from these fields."""

    name: str
    default: Any
    ptype: int
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    on_configure: bool = False  # read only at on_configure: a change needs cleanup + configure


PARAMETERS: tuple[Param, ...] = (
    Param("checkpoint", "", ParameterType.PARAMETER_STRING,
           "ObjEmbed checkpoint directory (Hugging Face format). Applied on configure.",
           on_configure=True),
    Param("proposer", "wedetect", ParameterType.PARAMETER_STRING,
           "Box source: 'wedetect' (WeDetect-Uni), 'external' (boxes from "
           "external_proposals_topic), 'whole_image' (one whole-image box) or 'grid' "
           "(multi-scale sliding windows, a detector-free fallback). On configure.",
           on_configure=True),
    Param("wedetect_checkpoint", "", ParameterType.PARAMETER_STRING,
           "Original WeDetect-Uni .pth file (proposer 'wedetect'). Applied on configure.",
           on_configure=True),
    Param("num_proposals", 100, ParameterType.PARAMETER_INTEGER,
           "Proposals kept per frame (the paper uses 100). Applied on configure.",
           int_range=(1, 1000), on_configure=True),
    Param("device", "cpu", ParameterType.PARAMETER_STRING,
           "Torch device: 'cpu', 'cuda' or 'cuda:N'. Applied on configure.", on_configure=True),
    Param("dtype", "float32", ParameterType.PARAMETER_STRING,
           "Model weights dtype: float32, bfloat16 or float16. Applied on configure.",
           on_configure=True),
    Param("attn", "auto", ParameterType.PARAMETER_STRING,
           "Attention kernel: auto, sdpa, eager or flash_attention_2. Applied on configure.",
           on_configure=True),
    Param("projector_backend", "torch", ParameterType.PARAMETER_STRING,
           "Object projector runtime: torch, onnxruntime or tensorrt. An unavailable one falls "
           "back (tensorrt -> onnxruntime -> torch) with the reason in the log and "
           "diagnostics. Applied on configure.", on_configure=True),
    Param("engine_cache_dir", "", ParameterType.PARAMETER_STRING,
           "Folder of ONNX exports and TensorRT engines (keyed by model, grid, GPU, TensorRT "
           "version and precision); empty: ~/.cache/objembed_ros/engines. On configure.",
           on_configure=True),
    Param("engine_resolutions", [], ParameterType.PARAMETER_STRING_ARRAY,
           "Camera resolutions 'WxH' (e.g. '1280x720') whose projector graphs/engines are "
           "prepared on configure (projector_backend onnxruntime/tensorrt). Frames of any other "
           "resolution run the projector in torch (warned once); nothing is exported or built "
           "on a frame. On configure.", on_configure=True),
    Param("allow_engine_build", False, ParameterType.PARAMETER_BOOL,
           "On configure, export/build a missing or stale ONNX graph or TensorRT engine for "
           "engine_resolutions (TensorRT: minutes); false: configure fails with the "
           "model/build_engines.py command that builds it. On configure.", on_configure=True),
    Param("text_cuda_graphs", False, ParameterType.PARAMETER_BOOL,
           "CUDA only: replay captured CUDA graphs for the text pass. On configure.",
           on_configure=True),
    Param("preprocess", "auto", ParameterType.PARAMETER_STRING,
          "Frame preprocessing: 'exact' = PIL on the host, bit-for-bit the official pixels; "
          "'device' = one uint8 upload, resize/normalise/patchify and the WeDetect letterbox "
          "on the model's device (differences measured in the README); 'auto' = device on "
          "CUDA, exact otherwise. Applied on configure.", on_configure=True),
    Param("max_boxes", 300, ParameterType.PARAMETER_INTEGER,
           "Most boxes one image pass may score (proposals, external or supplied boxes).",
           int_range=(1, 2000), on_configure=True),
    Param("image_topics", ["image"], ParameterType.PARAMETER_STRING_ARRAY,
           "Colour image topics (relative names follow the namespace and remappings); each "
           "camera keeps its own frame cache.", read_only=True),
    Param("depth_topics", [], ParameterType.PARAMETER_STRING_ARRAY,
           "Aligned depth topics (16UC1 mm or 32FC1 m), parallel to image_topics; empty: no 3D.",
           read_only=True),
    Param("camera_info_topics", [], ParameterType.PARAMETER_STRING_ARRAY,
           "CameraInfo topics parallel to image_topics (intrinsics for 3D).", read_only=True),
    Param("external_proposals_topic", "external_proposals", ParameterType.PARAMETER_STRING,
           "objembed_msgs/GroundedObjectArray of another detector's boxes (proposer "
           "'external'), paired to images by header stamp.", read_only=True),
    Param("external_detections_topic", "external_detections", ParameterType.PARAMETER_STRING,
           "vision_msgs/Detection2DArray of another detector's boxes (proposer 'external', "
           "where vision_msgs is installed), paired to images by header stamp like "
           "external_proposals_topic.", read_only=True),
    Param("standing_queries", [], ParameterType.PARAMETER_STRING_ARRAY,
           "Queries grounded on every encoded frame and published on ~/groundings (one "
           "GroundedObjectArray per query). Also set by ~/set_queries."),
    Param("top_k", 10, ParameterType.PARAMETER_INTEGER,
           "Objects kept per standing query; 0 keeps all.", int_range=(0, 1000)),
    Param("min_score", 0.0, ParameterType.PARAMETER_DOUBLE,
           "Standing-query objects scoring below this are dropped.", float_range=(0.0, 1.0)),
    # tracking and lock-on (core/tracking.py, ros/lock_on.py); a change resets the tracks
    # and aborts running locks (ros/node_tracking.TRACKING_PARAMETERS)
    Param("tracking_enabled", True, ParameterType.PARAMETER_BOOL,
           "Track standing (and locked) queries' objects across frames: track_id on "
           "~/groundings and ~/detections, and the ~/lock_on action."),
    Param("track_confirm_hits", 3, ParameterType.PARAMETER_INTEGER,
           "Matched frames before a track is confirmed and its id published.",
           int_range=(1, 100)),
    Param("track_max_coast", 15, ParameterType.PARAMETER_INTEGER,
           "Frames a confirmed track stays unmatched (coasting) before it is deleted.",
           int_range=(0, 1000)),
    Param("track_min_iou", 0.3, ParameterType.PARAMETER_DOUBLE,
           "Least IoU of a track's predicted box with a detection to match it.",
           float_range=(0.0, 1.0)),
    Param("track_min_cosine", 0.3, ParameterType.PARAMETER_DOUBLE,
           "Least ObjEmbed embedding cosine of a track with a detection to match it.",
           float_range=(-1.0, 1.0)),
    Param("track_reid_min_cosine", 0.8, ParameterType.PARAMETER_DOUBLE,
           "A coasting track matches a detection it does not overlap when the cosine is at "
           "least this (re-identification after occlusion); > 1 disables it.",
           float_range=(-1.0, 2.0)),
    Param("track_iou_weight", 0.5, ParameterType.PARAMETER_DOUBLE,
           "Weight of IoU against embedding cosine in the association affinity.",
           float_range=(0.0, 1.0)),
    Param("lock_lost_after", 2.0, ParameterType.PARAMETER_DOUBLE,
           "Seconds (header stamps) a locked target may stay unseen before the lock is LOST, "
           "when the LockOn goal gives lost_after 0.", float_range=(0.01, 3600.0)),
    Param("lock_reacquire_min_cosine", 0.8, ParameterType.PARAMETER_DOUBLE,
           "Least cosine of a new track with a lost target's appearance to take it over; > 1 "
           "disables re-acquisition by appearance.", float_range=(-1.0, 2.0)),
    Param("lock_max_goals", 16, ParameterType.PARAMETER_INTEGER,
           "Most ~/lock_on goals running at once.", int_range=(1, 64)),
    Param("sync_slop", 0.02, ParameterType.PARAMETER_DOUBLE,
           "Seconds: depth / external proposals pair with a colour frame when their stamps "
           "differ by at most this.", float_range=(0.0, 1.0)),
    Param("frame_cache_size", 8, ParameterType.PARAMETER_INTEGER,
           "Encoded frames kept per camera for services. Applied on configure.",
           int_range=(1, 256), on_configure=True),
    Param("text_cache_size", 256, ParameterType.PARAMETER_INTEGER,
           "Query-text embeddings kept (LRU). Applied on configure.", int_range=(0, 100000),
           on_configure=True),
    Param("max_query_tokens", 256, ParameterType.PARAMETER_INTEGER,
           "Longest query accepted, in tokenizer tokens; longer ones are refused.",
           int_range=(1, 8192)),
    Param("publish_markers", True, ParameterType.PARAMETER_BOOL,
           "Publish ~/markers (MarkerArray) for objects with a 3D position, when subscribed."),
    Param("marker_lifetime", 0.5, ParameterType.PARAMETER_DOUBLE,
           "Seconds a marker stays without a newer frame.", float_range=(0.0, 60.0)),
    Param("debug_max_objects", 5, ParameterType.PARAMETER_INTEGER,
           "Objects per query drawn on ~/debug_image and as markers.", int_range=(1, 100)),
    Param("autostart", True, ParameterType.PARAMETER_BOOL,
           "Configure and activate on start (pip installs have no lifecycle manager).",
           read_only=True),
    Param("diagnostics_period", 1.0, ParameterType.PARAMETER_DOUBLE,
           "Seconds between /diagnostics messages.", read_only=True,
           float_range=(0.05, 60.0)),
    Param("max_frame_age", 0.0, ParameterType.PARAMETER_DOUBLE,
           "Ground calls refuse a cached frame older than this many seconds (by receive "
           "time); 0 disables the check.", float_range=(0.0, 3600.0)),
    Param("default_timeout", 5.0, ParameterType.PARAMETER_DOUBLE,
           "Seconds a service call may wait for the model (text passes, supplied boxes, query "
           "images), counted from when its frame is chosen.",
           float_range=(0.0, 600.0)),
    Param("max_wait", 30.0, ParameterType.PARAMETER_DOUBLE,
           "Longest frame wait a service call may ask for (Ground.timeout): larger timeouts "
           "are clamped to this and the answer says so.", float_range=(0.0, 3600.0)),
    # the object memory (ros/recall.py, ros/node_memory.py), read on configure
    Param("memory_enabled", True, ParameterType.PARAMETER_BOOL,
          "Keep an object memory of every frame's proposals and serve ~/recall (RAM only "
          "unless memory_path is set). Applied on configure.", on_configure=True),
    Param("memory_path", "", ParameterType.PARAMETER_STRING,
          "SQLite file the memory persists to (created if missing; a corrupt or other-version "
          "file is renamed aside); empty: RAM only. On configure.", on_configure=True),
    Param("memory_max_entries", 10_000, ParameterType.PARAMETER_INTEGER,
          "Most objects remembered; the least recently seen (with credit per sighting) are "
          "evicted beyond it.", int_range=(1, 1_000_000), on_configure=True),
    Param("memory_min_iou", 0.5, ParameterType.PARAMETER_DOUBLE,
          "Predicted IoU, sigmoid(iou logit), a proposal needs to enter the memory.",
          float_range=(0.0, 1.0), on_configure=True),
    Param("memory_max_per_frame", 10, ParameterType.PARAMETER_INTEGER,
          "Most proposals per frame entering the memory, best predicted IoU first.",
          int_range=(1, 1000), on_configure=True),
    Param("memory_merge_cosine", 0.75, ParameterType.PARAMETER_DOUBLE,
          "Cosine of object embeddings above which a sighting may merge into an entry.",
          float_range=(-1.0, 1.0), on_configure=True),
    Param("memory_merge_distance", 0.3, ParameterType.PARAMETER_DOUBLE,
          "Metres: a sighting merges only with entries this close in fixed_frame.",
          float_range=(0.001, 100.0), on_configure=True),
    Param("memory_merge_box_iou", 0.5, ParameterType.PARAMETER_DOUBLE,
          "Without fixed-frame positions: box IoU with the entry's last box (same camera) "
          "needed to merge.", float_range=(0.0, 1.0), on_configure=True),
    Param("memory_merge_window", 2.0, ParameterType.PARAMETER_DOUBLE,
          "Seconds: without fixed-frame positions, only entries seen this recently by the "
          "same camera can merge.", float_range=(0.0, 3600.0), on_configure=True),
    Param("memory_crop_size", 96, ParameterType.PARAMETER_INTEGER,
          "Long side in pixels of each entry's JPEG crop; 0: no crops.", int_range=(0, 512),
          on_configure=True),
    Param("memory_recall_max_results", 100, ParameterType.PARAMETER_INTEGER,
          "Most entries one ~/recall answer carries.", int_range=(1, 10_000),
          on_configure=True),
    Param("memory_ann_min_entries", 0, ParameterType.PARAMETER_INTEGER,
          "From this many entries, recall takes its candidates from an HNSW index (usearch) "
          "and scores them exactly (faster on a busy CPU, approximate candidates, slow index "
          "build: see README); 0: always the exact scan. On configure.",
          int_range=(0, 10_000_000), on_configure=True),
    Param("memory_write_interval", 1.0, ParameterType.PARAMETER_DOUBLE,
          "Seconds between batched writes of the memory file (off the frame path).",
          float_range=(0.05, 600.0), on_configure=True),
    Param("fixed_frame", "", ParameterType.PARAMETER_STRING,
          "Frame memory positions are kept in (e.g. map or odom), from /tf; empty or "
          "unresolvable: the camera's optical frame.", on_configure=True),
)

# Parameters read only at on_configure: changing them needs cleanup + configure.
APPLIED_ON_CONFIGURE: tuple[str, ...] = tuple(p.name for p in PARAMETERS if p.on_configure)


def descriptor(p: Param) -> ParameterDescriptor:
    d = ParameterDescriptor(name=p.name, type=p.ptype, description=p.description,
                            read_only=p.read_only)
    if p.int_range is not None:
        d.integer_range = [IntegerRange(from_value=p.int_range[0], to_value=p.int_range[1],
                                        step=1)]
    if p.float_range is not None:
        d.floating_point_range = [FloatingPointRange(
            from_value=p.float_range[0], to_value=p.float_range[1], step=0.0)]
    return d


def _all_sizes(texts: list[str]) -> bool:
    try:
        [parse_size(t) for t in texts]
    except ValueError:
        return False
    return True


def validate_settings(values: dict[str, Any]) -> str | None:
    """Why these parameter values cannot work together, or None (ranges are checked by the
    descriptors; this checks choices and cross-parameter rules)."""
    checks: list[tuple[bool, str]] = [
        (values["proposer"] in PROPOSERS, f"proposer must be one of {PROPOSERS}"),
        (values["dtype"] in DTYPES, f"dtype must be one of {DTYPES}"),
        (values["attn"] in ATTN, f"attn must be one of {ATTN}"),
        (values["preprocess"] in PREPROCESS_CHOICES,
         f"preprocess must be one of {PREPROCESS_CHOICES}"),
        (values["projector_backend"] in BACKENDS,
         f"projector_backend must be one of {BACKENDS}"),
        (bool(DEVICE_RE.match(values["device"])), "device must be cpu, cuda or cuda:N"),
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
        (_all_sizes(values["engine_resolutions"]),
         "engine_resolutions must be sizes 'WxH' such as '1280x720'"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    try:
        recall.memory_config(values)
    except ValueError as err:
        return f"object memory: {err}"
    return None


def declare_all(node: Node) -> None:
    """Declare every parameter of PARAMETERS on the node, with its descriptor."""
    for p in PARAMETERS:
        if isinstance(p.default, list) and not p.default:
            # an empty array carries no type: declare typed, then set the empty default
            # (a read-only one left unset reads as [] through value())
            node.declare_parameter(p.name, Parameter.Type.STRING_ARRAY, descriptor(p))
            if not p.read_only and value(node, p.name) == []:
                node.set_parameters([Parameter(p.name, Parameter.Type.STRING_ARRAY, [])])
            continue
        node.declare_parameter(p.name, p.default, descriptor(p))


def value(node: Node, name: str) -> Any:
    """A parameter's value (arrays as lists; an unset typed array as [])."""
    try:
        v = node.get_parameter(name).value
    except ParameterUninitializedException:
        return []
    return list(v) if isinstance(v, (list, tuple)) else v


def values(node: Node) -> dict[str, Any]:
    return {p.name: value(node, p.name) for p in PARAMETERS}


def grounder_config(v: dict[str, Any]) -> GrounderConfig:
    names = ("checkpoint", "proposer", "wedetect_checkpoint", "num_proposals", "device",
             "dtype", "attn", "max_boxes", "text_cache_size", "frame_cache_size",
             "max_query_tokens", "projector_backend", "engine_cache_dir",
             "allow_engine_build", "text_cuda_graphs", "preprocess")
    return GrounderConfig(**{n: v[n] for n in names},
                          engine_resolutions=tuple(parse_size(t) for t in v["engine_resolutions"]))


"""The object memory's ROS side, owned by the node: per-frame sightings in, ~/recall out.

The node builds one ``MemoryService`` (``MemoryService.open``) on configure, calls
``on_frame`` after each encoded frame on its worker thread, serves ~/recall with
``handle_recall`` and closes it on cleanup (which flushes the store). The policy lives in
core/memory.py, the store in memory/, transform lookups in ros/tf_listener.py.

Response frames: each MemoryEntry's position is in ``position_frame``: the node's
fixed_frame when the camera frame resolved into it at the sighting's stamp, else the camera's
optical frame of the last sighting (``last_header.frame_id``, stamp = last_seen). Positions in a
camera frame describe where the object was relative to the camera when it was last seen; the
response message says when any entry is in that state.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from objembed_msgs.msg import MemoryEntry
from objembed_msgs.srv import Recall
from objembed_ros.core.depth import Intrinsics, estimate_position
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import stamp_to_ns
from objembed_ros.core.memory import (
    MemoryChanges,
    MemoryConfig,
    ObjectMemory,
    RecallHit,
    Sighting,
    labels_by_proposal,
    select_proposals,
)
from objembed_ros.core.scoring import sigmoid
from objembed_ros.memory import SqliteStore, StoreWriter
from objembed_ros.ros.convert import image_to_rgb


@dataclass(frozen=True)
class PendingFrame:
    """The part of one encoded frame the memory thread needs (picked proposals only)."""

    camera: str
    stamp_ns: int
    frame_id: str
    image_size: tuple[int, int]
    boxes: np.ndarray  # (P, 4) xyxy source pixels
    embeddings: np.ndarray  # (P, D)
    iou: np.ndarray  # (P,) predicted IoU
    labels: list[str]
    rgb: np.ndarray | None
    depth_m: np.ndarray | None
    intrinsics: Intrinsics | None


def pending_frame(frame: Any, results: Sequence[Any], header: Header,
                  depth_m: np.ndarray | None, intrinsics: Intrinsics | None,
                  config: MemoryConfig) -> PendingFrame:
    """The proposals of a CachedFrame that enter the memory (select_proposals), copied."""
    picked = select_proposals(frame.iou_logits, config.min_iou, config.max_per_frame)
    labels = labels_by_proposal(results)
    return PendingFrame(
        camera=frame.camera, stamp_ns=int(frame.stamp_ns), frame_id=header.frame_id,
        image_size=tuple(frame.image_size),  # type: ignore[arg-type]
        boxes=np.asarray(frame.boxes, np.float64)[picked],
        embeddings=np.asarray(frame.object_embeddings, np.float32)[picked],
        iou=sigmoid(np.asarray(frame.iou_logits, np.float64)[picked]),
        labels=[labels.get(int(i), "") for i in picked], rgb=frame.rgb, depth_m=depth_m,
        intrinsics=intrinsics)


def memory_config(values: dict[str, Any]) -> MemoryConfig:
    """MemoryConfig from parameter values (the memory_* parameters of ros/params.py;
    ValueError naming what is invalid)."""
    return MemoryConfig(
        max_entries=int(values["memory_max_entries"]),
        min_iou=float(values["memory_min_iou"]),
        max_per_frame=int(values["memory_max_per_frame"]),
        merge_cosine=float(values["memory_merge_cosine"]),
        merge_distance_m=float(values["memory_merge_distance"]),
        merge_box_iou=float(values["memory_merge_box_iou"]),
        merge_window_ns=int(float(values["memory_merge_window"]) * 1e9),
        crop_max_side=int(values["memory_crop_size"]),
        ann_min_entries=int(values["memory_ann_min_entries"]))


def ns_to_time(ns: int) -> Time:
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def entry_to_msg(hit: RecallHit, include_crop: bool) -> MemoryEntry:
    """One recalled entry -> objembed_msgs/MemoryEntry (see MemoryEntry.msg for fields)."""
    e = hit.entry
    header = Header(frame_id=e.frame_id, stamp=ns_to_time(e.last_seen_ns))
    msg = MemoryEntry(id=int(e.id), score=float(hit.score), cosine=float(hit.cosine),
                      label=e.label, camera=e.camera, last_header=header,
                      first_seen=ns_to_time(e.first_seen_ns),
                      last_seen=ns_to_time(e.last_seen_ns), hits=int(e.hits),
                      image_width=int(e.image_size[0]), image_height=int(e.image_size[1]),
                      position_valid=e.position_valid,
                      position_frame=e.position_frame if e.position_valid else e.frame_id)
    msg.x1, msg.y1, msg.x2, msg.y2 = (float(v) for v in e.box)
    if e.position_valid:
        msg.position.x, msg.position.y, msg.position.z = (float(v) for v in e.position_mean)
        sx, sy, sz = e.position_stddev
        msg.position_stddev.x, msg.position_stddev.y, msg.position_stddev.z = sx, sy, sz
    if include_crop and e.crop:
        msg.crop = CompressedImage(header=header, format="jpeg", data=e.crop)
    return msg


def check_recall_request(request: Recall.Request) -> str | None:
    """The reason a Recall request cannot be served, or None (image content is checked when
    it is converted)."""
    if request.query_type == Recall.Request.QUERY_TEXT:
        if not request.text.strip():
            return "empty text query"
    elif request.query_type != Recall.Request.QUERY_IMAGE:
        return (f"unknown query_type {request.query_type} (QUERY_TEXT={Recall.Request.QUERY_TEXT}"
                f", QUERY_IMAGE={Recall.Request.QUERY_IMAGE})")
    if not (math.isfinite(request.min_score) and 0.0 <= request.min_score <= 1.0):
        return f"min_score must be in [0, 1], got {request.min_score}"
    for name in ("since", "until"):
        t = getattr(request, name)
        if t.sec < 0 or not 0 <= t.nanosec < 1_000_000_000:
            return f"{name} is not a valid time (sec {t.sec}, nanosec {t.nanosec})"
    since = stamp_to_ns(request.since.sec, request.since.nanosec)
    until = stamp_to_ns(request.until.sec, request.until.nanosec)
    if since and until and since > until:
        return f"empty time window: since {since * 1e-9:.3f} s is after until {until * 1e-9:.3f} s"
    return None


def ann_factory(config: MemoryConfig, log: Callable[[str], None]
                ) -> Callable[[int], Any] | None:
    """memory/ann.py's HNSW index when memory_ann_min_entries > 0 and usearch is installed
    (else None: recall scans, and the log says why)."""
    if config.ann_min_entries <= 0:
        return None
    try:
        import usearch.index  # noqa: F401
    except ImportError as exc:
        log(f"memory: usearch not importable ({exc}); recall scans every entry")
        return None
    from objembed_ros.memory.ann import UsearchIndex

    return UsearchIndex


class MemoryService:
    """The node's object memory: the in-RAM ObjectMemory, the store writer, the /tf lookup.

    embed_text(text) -> (D,) object-query embedding (InputError for a bad query);
    embed_image(rgb) -> (D,) embedding of a query image; logit_params() -> (logit_log_scale,
    logit_bias) of the loaded checkpoint. These may raise InputError, or TimeoutError /
    RuntimeError (ModelBusy, GrounderBusy, ModelNotReady, ModelFailure), which become
    success=false answers naming the error. Frames offered with on_frame wait in
    a queue of queue_size (the oldest is dropped and counted when it is full) for the memory
    thread.
    """

    def __init__(self, memory: ObjectMemory, *, writer: StoreWriter | None = None,
                 tf: Any = None, fixed_frame: str = "",
                 embed_text: Callable[[str], np.ndarray],
                 embed_image: Callable[[np.ndarray], np.ndarray] | None = None,
                 logit_params: Callable[[], tuple[float, float]],
                 max_results: int = 100, log: Callable[[str], None] | None = None,
                 queue_size: int = 8) -> None:
        self.memory = memory
        self.writer = writer
        self.tf = tf
        self.fixed_frame = fixed_frame.lstrip("/")
        self.embed_text = embed_text
        self.embed_image = embed_image
        self.logit_params = logit_params
        self.max_results = int(max_results)
        self.log = log or (lambda msg: None)
        self.last_tf_problem = ""
        self.frames_seen = 0
        self.frames_dropped = 0
        self.frames_failed = 0
        self._queue: deque[PendingFrame] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="object-memory", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, node: Any, values: dict[str, Any], tf_callback_group: Any = None,
             **kwargs: Any) -> MemoryService:
        """Build from the node's parameter values: load the store (memory_path), start its
        writer, listen to /tf when fixed_frame is set (subscriptions in tf_callback_group).
        kwargs: embed_text, embed_image, logit_params (see the class docstring)."""
        from objembed_ros.ros.tf_listener import TfLookup

        log = node.get_logger().warning
        config = memory_config(values)
        writer = None
        entries = []
        store = None
        if values["memory_path"]:
            store = SqliteStore(values["memory_path"], report=log)
            entries = store.load_all()
        memory = ObjectMemory(config, ann_factory=ann_factory(config, log))
        if store is not None:
            changes = memory.load(entries)
            writer = StoreWriter(store, interval_s=float(values["memory_write_interval"]),
                                 report=log)
            writer.submit(changes)  # entries over max_entries evicted at load
        tf = (TfLookup(node, callback_group=tf_callback_group) if values["fixed_frame"]
              else None)
        return cls(memory, writer=writer, tf=tf, fixed_frame=values["fixed_frame"],
                   max_results=int(values["memory_recall_max_results"]), log=log, **kwargs)

    # -- frame path (the node's worker thread) ---------------------------------------------
    def on_frame(self, frame: Any, results: Sequence[Any], header: Header,
                 depth_m: np.ndarray | None = None,
                 intrinsics: Intrinsics | None = None) -> bool:
        """Offer one encoded frame (grounder.CachedFrame) to the memory; returns at once.

        Picks the proposals that enter (core.memory.select_proposals), copies their rows and
        queues them for the memory thread, which does depth -> 3D, the /tf lookup, crops,
        merging and the store. results: the frame's GroundingResults for the standing
        queries (labels); header: the source image's; depth_m / intrinsics: the paired
        aligned depth (metres, NaN invalid) and intrinsics, None when absent. frame.rgb and
        depth_m are kept by reference until processed: do not modify them afterwards.
        Returns False when the queue was full and the oldest pending frame was dropped.
        """
        item = pending_frame(frame, results, header, depth_m, intrinsics, self.memory.config)
        with self._cond:
            if self._closed:
                return False
            kept = len(self._queue) < self._queue.maxlen  # type: ignore[operator]
            if not kept:
                self.frames_dropped += 1
            self._queue.append(item)
            self._cond.notify()
        return kept

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self.ingest(item)
            except Exception as exc:  # a bad frame must not stop the memory
                self.frames_failed += 1
                self.log(f"memory: frame at {item.stamp_ns} ns not remembered: {exc!r}")
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued frame is in the memory (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def ingest(self, item: PendingFrame) -> MemoryChanges:
        """One frame's picked proposals into the memory (the memory thread runs this):
        3D from depth, into fixed_frame when /tf resolves it at the image stamp, then
        ObjectMemory.observe and the store writer."""
        self.frames_seen += 1
        if item.boxes.shape[0] == 0:
            return MemoryChanges()
        transform = None
        if self.fixed_frame and self.tf is not None and item.depth_m is not None:
            transform, reason = self.tf.lookup(self.fixed_frame, item.frame_id, item.stamp_ns)
            if transform is None and reason != self.last_tf_problem:
                self.log(f"memory: positions stay in {item.frame_id!r}: {reason}")
            self.last_tf_problem = reason
        sightings = []
        for k in range(item.boxes.shape[0]):
            box = tuple(float(v) for v in item.boxes[k])
            position, position_frame, fixed = None, "", False
            if item.depth_m is not None:
                pos = estimate_position(box, item.image_size, item.depth_m, item.intrinsics)
                if pos.valid:
                    if transform is not None:
                        position = tuple(float(v) for v in transform.apply(np.array(pos.xyz)))
                        position_frame, fixed = self.fixed_frame, True
                    else:
                        position, position_frame = pos.xyz, item.frame_id
            sightings.append(Sighting(
                embedding=item.embeddings[k], box=box, iou=float(item.iou[k]),  # type: ignore[arg-type]
                camera=item.camera, stamp_ns=item.stamp_ns, image_size=item.image_size,
                frame_id=item.frame_id, position=position,  # type: ignore[arg-type]
                position_frame=position_frame, fixed=fixed, label=item.labels[k]))
        changes = self.memory.observe(sightings, item.rgb)
        if self.writer is not None:
            self.writer.submit(changes)
        return changes

    # -- ~/recall (a service thread) --------------------------------------------------------
    def handle_recall(self, request: Recall.Request, response: Recall.Response
                      ) -> Recall.Response:
        """Validate, embed the query, rank the memory; always success + message."""
        response.success, response.entries = False, []
        reason = check_recall_request(request)
        if reason is not None:
            response.message = reason
            return response
        try:
            if request.query_type == Recall.Request.QUERY_TEXT:
                query = self.embed_text(request.text.strip())
            else:
                if self.embed_image is None:
                    response.message = "image queries are not available on this node"
                    return response
                query = self.embed_image(image_to_rgb(request.image))
            scale, bias = self.logit_params()
            hits = self.memory.recall(
                np.asarray(query, np.float32).reshape(-1), scale, bias,
                camera=request.camera,
                since_ns=stamp_to_ns(request.since.sec, request.since.nanosec),
                until_ns=stamp_to_ns(request.until.sec, request.until.nanosec),
                top_k=int(request.top_k), min_score=float(request.min_score),
                max_results=self.max_results)
        except InputError as exc:
            response.message = f"bad request: {exc}"
            return response
        except (TimeoutError, RuntimeError) as exc:  # ModelBusy/GrounderBusy, ModelNotReady..
            response.message = f"{type(exc).__name__}: {exc}"
            return response
        except ValueError as exc:  # e.g. a query of another width than the memory's
            response.message = f"cannot search the memory: {exc}"
            return response
        response.entries = [entry_to_msg(h, request.include_crops) for h in hits]
        response.success = True
        response.message = self._summary(hits, request.top_k)
        return response

    def _summary(self, hits: list[RecallHit], top_k: int) -> str:
        parts = [f"{len(hits)} of {len(self.memory)} remembered objects"]
        if len(hits) == self.max_results and (top_k <= 0 or top_k > self.max_results):
            parts.append(f"capped at memory_recall_max_results={self.max_results}")
        loose = sum(1 for h in hits if h.entry.position_valid and not h.entry.position_fixed)
        if loose:
            why = (f"fixed_frame {self.fixed_frame!r} not resolved"
                   + (f" ({self.last_tf_problem})" if self.last_tf_problem else "")
                   if self.fixed_frame else "no fixed_frame set")
            parts.append(f"{loose} position(s) in the camera frame: {why}")
        return "; ".join(parts)

    def status(self) -> dict[str, str]:
        """Key/values for the node's diagnostics."""
        out = {"memory entries": str(len(self.memory)), "memory frames": str(self.frames_seen),
               "memory frames dropped": str(self.frames_dropped),
               "memory frames failed": str(self.frames_failed)}
        if self.writer is not None:
            out["memory pending writes"] = str(self.writer.pending())
            out["memory write errors"] = str(self.writer.write_errors)
            problem = getattr(self.writer.store, "problem", None)
            if problem:
                out["memory file problem"] = problem
        if self.tf is not None:
            out["tf backend"] = self.tf.backend
            if self.last_tf_problem:
                out["tf last problem"] = self.last_tf_problem
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Remember the queued frames, stop the memory thread, flush and close the store
        (lifecycle cleanup)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tf is not None:
            self.tf.close()
            self.tf = None


def grounder_embedders(grounder: Any, timeout_s: Callable[[], float]) -> dict[str, Any]:
    """MemoryService's embed_text / embed_image / logit_params from a loaded Grounder.

    embed_text: the object-query text embedding of one checked query (a text pass bounded by
    timeout_s()); embed_image: the object embedding of the whole query image (one image pass
    with the image as its only box, not cached). Both block: call them off the executor.
    """
    def embed_text(text: str) -> np.ndarray:
        queries = grounder.check_queries([text])
        deadline = time.monotonic() + timeout_s()
        return grounder.text_embeddings(queries, deadline=deadline)[0]

    def embed_image(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        frame = grounder.encode_frame(rgb, boxes=np.array([[0, 0, w, h]], np.float32),
                                      cache=False)
        return frame.object_embeddings[0]

    def logit_params() -> tuple[float, float]:
        p = grounder.logit_params
        return float(p.logit_log_scale), float(p.logit_bias)

    return {"embed_text": embed_text, "embed_image": embed_image, "logit_params": logit_params}

"""The replay loop: recorded frames through the Grounder (the node's core), outputs into a
new recording, latency and accuracy into a report.

Order and pairing: messages are read in log-time order. A colour frame is handled once the
recording has advanced `sync_slop` past it, so a depth image recorded just after it is
already read; depth pairs by header stamp (nearest within the slop, core.frames.StampBuffer),
camera_info is the one nearest in stamp (the node takes the newest received, which is the
same while intrinsics do not change; reading ahead must not take a later frame's). Outputs
are written at the colour frame's log time, so the output recording stays in log-time order.

Timing: rate 0 handles every frame as fast as possible. rate R > 0 reads the recording at R x
its recorded pace; a frame is dropped when a newer frame of the same camera is ready by the
time the model is free (newest frame wins, like the node's worker).
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.core.depth import STATUS_NO_CAMERA_INFO, STATUS_NO_DEPTH, STATUS_STALE_DEPTH
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import PAIR_EMPTY, PAIR_OK, StampBuffer
from objembed_ros.grounder import add_positions
from objembed_ros.replay import messages as m
from objembed_ros.replay.bag import OutputBag, Recording, ReplayError, Topic
from objembed_ros.replay.latency import StageTimes, machine
from objembed_ros.replay.metrics import Evaluation, GroundTruth
from objembed_ros.replay.report import CsvStream, progress_bar

DEPTH_TYPES = (m.IMAGE,)
ANY_STAMP = 2**62  # pairing slop that accepts any stamp


@dataclass
class ReplayOptions:
    """What to replay and how; the CLI fills it from its flags."""

    bag: Path
    output: Path | None = None
    output_storage: str = "mcap"
    report: Path | None = None  # JSON; CSVs next to it (<stem>_frames.csv, _groundings.csv),
    # written frame by frame
    image_topics: list[str] = field(default_factory=list)
    depth_topics: list[str] = field(default_factory=list)  # parallel to image_topics
    camera_info_topics: list[str] = field(default_factory=list)  # parallel to image_topics
    queries: list[str] = field(default_factory=list)
    namespace: str = "/objembed"
    rate: float = 0.0  # 0: as fast as possible; R: R x recorded timing
    sync_slop: float = 0.02
    top_k: int = 10
    min_score: float = 0.0
    debug_max_objects: int = 5
    marker_lifetime: float = 0.5
    overlay: bool = True
    max_frames: int = 0  # 0: all
    ground_truth: Path | None = None
    eval_top_k: int = 100  # detections per class and frame for AP
    progress: bool | None = None  # None: a bar when stderr is a terminal
    config: dict[str, Any] = field(default_factory=dict)  # model settings for the report


@dataclass
class _Camera:
    image: Topic
    depth: Topic | None = None
    info: Topic | None = None
    depth_buffer: StampBuffer = field(default_factory=lambda: StampBuffer(32))
    info_buffer: StampBuffer = field(default_factory=lambda: StampBuffer(32))


@dataclass
class _Item:
    topic: Topic
    log_time: int
    raw: bytes
    index: int  # position among the topic's messages
    camera: _Camera | None  # set for colour frames


def select_cameras(rec: Recording, opt: ReplayOptions) -> list[_Camera]:
    """The cameras to replay: colour topic (+ depth, camera_info); ReplayError naming the
    recording's topics when one is missing or of the wrong type."""
    def find(name: str, kinds: tuple[str, ...], role: str) -> Topic:
        topic = rec.topics.get(name) or rec.topics.get("/" + name.lstrip("/"))
        listing = ", ".join(f"{t.name} [{t.msgtype}]" for t in rec.topics.values())
        if topic is None:
            raise ReplayError(f"{role} topic {name!r} is not in {rec.path}; it has: {listing}")
        if topic.msgtype not in kinds:
            raise ReplayError(f"{role} topic {name!r} is {topic.msgtype}, expected "
                              f"{' or '.join(kinds)}")
        return topic

    names = list(opt.image_topics)
    if not names:
        skip = {n.lstrip("/") for n in opt.depth_topics}
        names = [t.name for t in rec.topics.values()
                 if t.msgtype in m.COLOUR_TYPES and t.name.lstrip("/") not in skip
                 and "depth" not in t.name]
        if len(names) != 1:
            raise ReplayError(f"give --image-topic: {rec.path} has {len(names)} colour image "
                              f"topics ({', '.join(names) or 'none'})")
    for flag, extra in (("--depth-topic", opt.depth_topics),
                        ("--camera-info-topic", opt.camera_info_topics)):
        if extra and len(extra) != len(names):
            raise ReplayError(f"{flag} is given {len(extra)} times for {len(names)} image "
                              "topics (they are parallel lists)")
    cams = []
    for i, name in enumerate(names):
        cam = _Camera(find(name, m.COLOUR_TYPES, "image"))
        if opt.depth_topics:
            cam.depth = find(opt.depth_topics[i], DEPTH_TYPES, "depth")
        if opt.camera_info_topics:
            cam.info = find(opt.camera_info_topics[i], (m.CAMERA_INFO,), "camera_info")
        cams.append(cam)
    return cams


def output_topics(rec: Recording, namespace: str) -> dict[str, str]:
    """The replay's topics (name -> type): <ns>/groundings, <ns>/markers, <ns>/debug_image;
    ReplayError when the recording has one already."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    outputs = {f"{ns}/groundings": m.GROUNDED_OBJECT_ARRAY, f"{ns}/markers": m.MARKER_ARRAY,
               f"{ns}/debug_image": m.IMAGE}
    taken = sorted(set(outputs) & set(rec.topics))
    if taken:
        raise ReplayError(f"the recording already has {', '.join(taken)}; choose another "
                          "--namespace")
    return outputs


def check_recording(opt: ReplayOptions) -> None:
    """Everything that can fail before a model is loaded: the recording and its topics, the
    output path, the ground-truth file (ReplayError / InputError)."""
    with Recording(opt.bag) as rec:
        select_cameras(rec, opt)
        output_topics(rec, opt.namespace)
    if opt.output is not None and opt.output.exists():
        raise ReplayError(f"{opt.output} exists already; the output must be a new path")
    if opt.ground_truth is not None:
        GroundTruth.load(opt.ground_truth)


BoxesFor = Callable[[np.ndarray], "np.ndarray | None"]


class Replay:
    """One replay of one recording through one Grounder."""

    def __init__(self, grounder: Any, options: ReplayOptions,
                 boxes_for: BoxesFor = lambda rgb: None) -> None:
        self.grounder = grounder
        self.opt = options
        self.boxes_for = boxes_for
        self.msgs = m.Messages(m.make_typestore())
        self.truth = GroundTruth.load(options.ground_truth) if options.ground_truth else None
        self.evaluation = Evaluation(self.truth) if self.truth else None
        self.stages = StageTimes()
        self.rejected: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.frames_seen = self.processed = self.dropped = 0
        report = options.report
        self.frames_csv = CsvStream(report and report.with_name(f"{report.stem}_frames.csv"))
        self.groundings_csv = CsvStream(
            report and report.with_name(f"{report.stem}_groundings.csv"))
        self._model_s = 0.0  # proposals + image pass, summed over frames
        self.error = ""
        self._slop_ns = int(options.sync_slop * 1e9)
        self._out: OutputBag | None = None
        self._groundings_topic = self._markers_topic = self._debug_topic = ""
        self._t0 = self._wall0 = 0.0
        self._busy_until = -math.inf
        self._overlay_ok = options.overlay

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Replay the recording; the report is returned (and written) even when reading
        stops early. ReplayError before anything was processed (bad topic, bad file)."""
        wall_start = time.perf_counter()
        with Recording(self.opt.bag) as rec:
            cams = select_cameras(rec, self.opt)
            if self.opt.output is not None:
                self._open_output(rec)
            try:
                self._loop(rec, cams)
            except (Exception, KeyboardInterrupt) as exc:  # keep what was processed
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                if self._out is not None:
                    self._out.close()
                self.frames_csv.close()
                self.groundings_csv.close()
            if rec.truncated:
                self.error = self.error or f"recording truncated: {rec.truncated}"
            report = self._report(rec, cams, time.perf_counter() - wall_start)
        if self.opt.report is not None:
            self.opt.report.parent.mkdir(parents=True, exist_ok=True)
            self.opt.report.write_text(json.dumps(report, indent=2))
        return report

    def _open_output(self, rec: Recording) -> None:
        outputs = output_topics(rec, self.opt.namespace)
        self._groundings_topic, self._markers_topic, self._debug_topic = outputs
        out = OutputBag(self.opt.output, self.opt.output_storage, self.msgs.store)
        try:
            for topic in rec.topics.values():
                out.copy_topic(topic)
            for name, msgtype in outputs.items():
                out.add_topic(name, msgtype)
        except BaseException:
            out.close()
            raise
        self._out = out

    def _loop(self, rec: Recording, cams: list[_Camera]) -> None:
        by_image = {c.image.name: c for c in cams}
        by_depth = {c.depth.name: c for c in cams if c.depth}
        by_info = {c.info.name: c for c in cams if c.info}
        read = list(rec.topics.values()) if self._out is not None else (
            [c.image for c in cams] + [t for c in cams for t in (c.depth, c.info) if t])
        total = sum(c.image.count or 0 for c in cams) or None
        bar = progress_bar(total, self.opt.progress)
        index: Counter[str] = Counter()
        queue: deque[_Item] = deque()
        try:
            for topic, log_time, raw in rec.messages(read):
                if self.opt.rate > 0:
                    self._wait_until(log_time)
                cam = by_image.get(topic.name)
                queue.append(_Item(topic, log_time, raw, index[topic.name], cam))
                index[topic.name] += 1
                if cam is not None:
                    self.frames_seen += 1
                    bar.update(1)
                elif topic.name in by_depth:
                    self._on_depth(by_depth[topic.name], raw, topic)
                elif topic.name in by_info:
                    self._on_info(by_info[topic.name], raw)
                self._drain(queue, log_time)
                if self.opt.max_frames and self.processed >= self.opt.max_frames:
                    queue.clear()
                    return
            self._drain(queue, math.inf)
        finally:
            bar.close()

    def _wait_until(self, log_time: int) -> None:
        now = time.monotonic()
        if self._wall0 == 0.0:
            self._t0, self._wall0 = log_time, now
        delay = self._wall0 + (log_time - self._t0) / 1e9 / self.opt.rate - now
        if delay > 0:
            time.sleep(delay)

    def _rec_now(self) -> float:
        return self._t0 + (time.monotonic() - self._wall0) * self.opt.rate * 1e9

    def _drain(self, queue: deque[_Item], last_read: float) -> None:
        while queue:
            head = queue[0]
            if head.camera is None:
                self._copy(queue.popleft())
                continue
            start = head.log_time + self._slop_ns
            if self.opt.rate > 0:
                start = max(start, self._busy_until)
            if last_read < start:
                return
            self._copy(queue.popleft())
            if self.opt.rate > 0 and any(o.camera is head.camera and o.log_time + self._slop_ns
                                         <= start for o in queue):
                self.dropped += 1
                continue
            if self.opt.max_frames and self.processed >= self.opt.max_frames:
                continue
            self._process(head)
            if self.opt.rate > 0:
                self._busy_until = self._rec_now()

    def _copy(self, item: _Item) -> None:
        if self._out is not None:
            self._out.write(item.topic.name, item.log_time, item.raw)

    def _on_depth(self, cam: _Camera, raw: bytes, topic: Topic) -> None:
        try:
            msg = self.msgs.deserialize(raw, topic.msgtype)
        except Exception as exc:  # a corrupt message: count it, keep going
            self.rejected[f"depth:undecodable ({type(exc).__name__})"] += 1
            return
        cam.depth_buffer.add(m.stamp_ns(msg.header), msg)

    def _on_info(self, cam: _Camera, raw: bytes) -> None:
        try:
            msg = self.msgs.deserialize(raw, m.CAMERA_INFO)
            info = m.camera_info_intrinsics(msg)
        except Exception as exc:
            self.rejected[f"camera_info:undecodable ({type(exc).__name__})"] += 1
            return
        if info is None:
            self.rejected["camera_info:no_k"] += 1
        else:
            cam.info_buffer.add(m.stamp_ns(msg.header), info)

    # -- one frame ----------------------------------------------------------------------------
    def _process(self, item: _Item) -> None:
        cam = item.camera
        assert cam is not None
        t0 = time.perf_counter()
        try:
            msg = self.msgs.deserialize(item.raw, item.topic.msgtype)
            rgb = m.colour_to_rgb(msg)
        except m.ImageDecodeError as err:
            self.rejected[f"image:{err.reason}"] += 1
            self._warn(f"{item.topic.name} #{item.index}: {err}")
            return
        except Exception as exc:  # a corrupt message
            self.rejected[f"image:undecodable ({type(exc).__name__})"] += 1
            self._warn(f"{item.topic.name} #{item.index}: {type(exc).__name__}: {exc}")
            return
        t1 = time.perf_counter()
        stamp = m.stamp_ns(msg.header)
        try:
            frame = self.grounder.encode_frame(rgb, stamp, cam.image.name,
                                               boxes=self.boxes_for(rgb), cache=False)
        except InputError as err:
            self.rejected["image:bad_input"] += 1
            self._warn(f"{item.topic.name} #{item.index}: {err}")
            return
        t2 = time.perf_counter()
        results = (self.grounder.ground(self.opt.queries, frame, top_k=self.opt.top_k,
                                        min_score=self.opt.min_score)
                   if self.opt.queries else [])
        t3 = time.perf_counter()
        results, depth_status = self._with_positions(results, cam, stamp)
        t4 = time.perf_counter()
        arrays = [self.msgs.grounded_array(r, msg.header) for r in results]
        self._write_outputs(item, rgb, msg.header, arrays)
        t5 = time.perf_counter()
        timings = {"decode": t1 - t0, **frame.timings, "scoring": t3 - t2,
                   "positions": t4 - t3, "output": t5 - t4}
        timings["frame"] = t4 - t0
        self.stages.add(timings)
        self.processed += 1
        self._model_s += timings.get("proposals", 0.0) + timings.get("encode", 0.0)
        self.frames_csv.write({
            "topic": item.topic.name, "index": item.index, "stamp_ns": stamp,
            "log_time_ns": item.log_time, "width": frame.image_size[0],
            "height": frame.image_size[1], "num_boxes": frame.num_boxes,
            "depth_status": depth_status,
            **{f"{k}_ms": round(v * 1e3, 3) for k, v in timings.items()}})
        for res in results:
            for rank, obj in enumerate(res.objects):
                pos = obj.position
                self.groundings_csv.write({
                    "topic": item.topic.name, "stamp_ns": stamp, "query": res.query,
                    "rank": rank, "score": obj.score, "similarity": obj.similarity,
                    "iou": obj.iou, "x1": obj.box[0], "y1": obj.box[1], "x2": obj.box[2],
                    "y2": obj.box[3],
                    "position_status": pos.status if pos else "not_computed",
                    "x": pos.xyz[0] if pos and pos.valid else "",
                    "y": pos.xyz[1] if pos and pos.valid else "",
                    "z": pos.xyz[2] if pos and pos.valid else ""})
        if self.truth is not None:
            image_id = self.truth.image_id(item.topic.name, item.index, stamp)
            if image_id is not None:
                self._evaluate(image_id, frame)

    def _with_positions(self, results: list[Any], cam: _Camera,
                        stamp: int) -> tuple[list[Any], str]:
        """3D as the node attaches it: only when the camera has depth or camera_info."""
        if cam.depth is None and cam.info is None:
            return results, "not_computed"
        status, depth_msg, _ = cam.depth_buffer.nearest(stamp, self._slop_ns)
        depth_m = None
        if status == PAIR_OK and depth_msg is not None:
            try:
                depth_m = m.depth_to_m(depth_msg)
            except m.ImageDecodeError as err:
                self.rejected[f"depth:{err.reason}"] += 1
                self._warn(f"{cam.depth.name if cam.depth else 'depth'}: {err}")
        if depth_m is None:
            why = (STATUS_STALE_DEPTH if status not in (PAIR_EMPTY, PAIR_OK)
                   else STATUS_NO_DEPTH)
            return [add_positions(r, None, None, missing_status=why) for r in results], why
        _, intrinsics, _ = cam.info_buffer.nearest(stamp, ANY_STAMP)
        if intrinsics is None:
            return [add_positions(r, None, None, missing_status=STATUS_NO_CAMERA_INFO)
                    for r in results], STATUS_NO_CAMERA_INFO
        return [add_positions(r, depth_m, intrinsics) for r in results], "ok"

    def _write_outputs(self, item: _Item, rgb: np.ndarray, header: Any,
                       arrays: list[Any]) -> None:
        out = self._out
        if out is None:
            return
        for arr in arrays:
            out.write(self._groundings_topic, item.log_time, self.msgs.serialize(arr))
        out.write(self._markers_topic, item.log_time, self.msgs.serialize(
            self.msgs.markers(arrays, self.opt.marker_lifetime, self.opt.debug_max_objects)))
        if self._overlay_ok:
            overlay = m.render_overlay(rgb, arrays, self.opt.debug_max_objects)
            out.write(self._debug_topic, item.log_time,
                      self.msgs.serialize(self.msgs.rgb_image(overlay, header)))

    def _evaluate(self, image_id: int, frame: Any) -> None:
        assert self.truth is not None and self.evaluation is not None
        categories = self.truth.categories
        if self.truth.has_boxes:
            names = list(categories.values())
            for cat_id, res in zip(categories, self.grounder.ground(
                    names, frame, top_k=self.opt.eval_top_k), strict=True):
                self.evaluation.add_detections(image_id, cat_id, [o.box for o in res.objects],
                                               [o.score for o in res.objects])
        expressions = self.truth.expressions.get(image_id, [])
        if expressions:
            results = self.grounder.ground([e.text for e in expressions], frame, top_k=1)
            for expr, res in zip(expressions, results, strict=True):
                self.evaluation.add_referring(image_id, expr,
                                              res.objects[0].box if res.objects else None)

    def _warn(self, text: str) -> None:
        if len(self.warnings) < 100:
            self.warnings.append(text)

    # -- the report ---------------------------------------------------------------------------
    def _report(self, rec: Recording, cams: list[_Camera], wall_s: float) -> dict[str, Any]:
        stages = self.stages.summary()
        report: dict[str, Any] = {
            "tool": "objembed-replay",
            "complete": not self.error, "error": self.error,
            "input": {"path": str(rec.path), "storage": rec.storage,
                      "topics": {t.name: {"type": t.msgtype, "count": t.count}
                                 for t in rec.topics.values()},
                      "cameras": [{"image": c.image.name,
                                   "depth": c.depth.name if c.depth else None,
                                   "camera_info": c.info.name if c.info else None}
                                  for c in cams]},
            "output": None if self._out is None else {
                "path": str(self._out.path), "storage": self.opt.output_storage,
                "counts": dict(self._out.counts)},
            "config": {**self.opt.config, "queries": list(self.opt.queries),
                       "rate": self.opt.rate, "sync_slop": self.opt.sync_slop,
                       "top_k": self.opt.top_k, "min_score": self.opt.min_score},
            "machine": machine(str(self.opt.config.get("device", "cpu"))),
            "frames": {"seen": self.frames_seen, "processed": self.processed,
                       "dropped": self.dropped, "rejected": dict(self.rejected)},
            "latency": {
                "stages": stages,
                "wall_s": round(wall_s, 3),
                "throughput_fps": round(self.processed / wall_s, 3) if wall_s > 0 else None,
                "model_fps": (round(self.processed / self._model_s, 3)
                              if self._model_s > 0 else None),
                "encoder_stages": sorted(k for k in stages if k.startswith("encoder.")),
            },
            "accuracy": self.evaluation.summary() if self.evaluation else None,
            "warnings": self.warnings,
        }
        return report

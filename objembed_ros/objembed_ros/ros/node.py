"""GroundingNode: cameras in, grounded objects out, language queries answered from a cache.

A thin lifecycle shell over objembed_ros.grounder.Grounder. Parameters live in ros/params.py,
subscriptions/QoS/pairing in ros/inputs.py, the services in ros/services.py, /diagnostics in
ros/diagnostics.py; ROS-free policy in core/ (selection, pairing, boxes, stats).

Lifecycle (what each state means here):
- unconfigured: no model. Every functional service (~/ground, ~/find_image, ~/set_queries,
  ~/recall) answers success=false, "model not ready (node unconfigured...)". /diagnostics runs.
- configure loads the model (a missing/broken checkpoint -> FAILURE with the reason in the log
  and /diagnostics; the node stays unconfigured and alive), creates subscriptions,
  publishers and the worker thread.
- inactive: the model stays loaded; incoming frames are counted (rates, transport health) but
  neither encoded nor cached; every functional service answers success=false,
  "node inactive...". Deactivate drops the cached frames, frames waiting for the worker,
  images waiting for proposals, and answers every pending call ("node deactivated");
  model work of those calls that has not started is cancelled.
- active: frames are encoded and served. Activate resumes with an empty cache.
- cleanup releases the model (and CUDA memory), the worker and the topics, and flushes and
  closes the object memory (memory_enabled; ros/recall.py), opened on configure.
- shutdown (SIGINT/SIGTERM, handled explicitly, also when started with SIGINT ignored):
  pending calls are answered "shutting down", then everything is released; the process
  ends within a few seconds even while a model pass runs.

Threading: subscription callbacks validate headers and hand the newest frame to one worker
thread (newest frame wins, drops counted). The worker runs proposals + one ObjEmbed pass,
caches the frame, completes calls waiting for it, publishes the standing queries' groundings
with the source header, then calls the frame consumers. Service handlers are coroutines that
never block an executor thread (see ros/services.py).

Frame consumers (the extension point for trackers, memory, other publishers): register a
callable with `add_frame_consumer(fn)`; after each encoded frame the worker calls
`fn(frame, results, header, camera)` with the CachedFrame, the standing queries' results
(list[GroundingResult], with 3D when depth is configured; [] without standing queries), the
source std_msgs/Header and the resolved image topic. Consumers run on the worker thread, one
after another, never on an executor thread; an exception is caught, counted
(`frame_consumer_errors` in /diagnostics) and logged (throttled), and the next frame is
processed as usual. A slow consumer delays the next frame, never a service call.

External proposals (proposer = "external"): another detector's boxes come in as
objembed_msgs/GroundedObjectArray on `external_proposals_topic`: x1..y2 in source-image
pixels, `score` = the detector's confidence (kept as proposal_score), header = the header of
the image they were found in (paired by stamp within sync_slop), and `camera` = that image
topic (empty matches any camera). Where vision_msgs is installed, vision_msgs/Detection2DArray
on `external_detections_topic` is accepted too (paired the same way, with any camera).

Tracking and lock-on (parameter tracking_enabled): the worker grounds the standing queries
plus the queries of running ~/lock_on goals, tracks their objects (core/tracking.Tracking),
publishes the standing queries' results with their track ids on ~/groundings (and
~/detections), then advances the locks (ros/lock_on.LockOnServer). A tracking parameter
change drops the tracks and aborts running locks; deactivate and cleanup abort them too.
ros/node_tracking.py holds this wiring (as ros/node_memory.py holds the object memory's).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from objembed_msgs.msg import GroundedObjectArray, MemoryEntry
from objembed_msgs.srv import FindImage, Ground, Recall, SetQueries
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import LatestMailbox
from objembed_ros.core.stats import FailureStreak, LatencyWindow, ReasonCounter, Throttle
from objembed_ros.grounder import CachedFrame, Grounder, GroundingResult
from objembed_ros.ros import convert, params
from objembed_ros.ros.diagnostics import node_status
from objembed_ros.ros.inputs import Camera, FrameMeta, Inputs, Job
from objembed_ros.ros.launcher import die_with_parent, exit_now, stop_on_signals
from objembed_ros.ros.node_memory import NodeMemory
from objembed_ros.ros.node_tracking import NodeTracking
from objembed_ros.ros.outputs import Outputs
from objembed_ros.ros.recall import MemoryService
from objembed_ros.ros.services import Services

NODE_NAME = params.NODE_NAME
WAIT_TICK_S = 0.05  # how often expired frame waits are answered
SHUTDOWN_GRACE_S = 1.0  # time pending calls get to receive their "shutting down" answer
LOCK_RESULT_SETTLE_S = 0.3  # extra spinning at shutdown for aborted locks' results to go out
# Requests queue (reliable, deep): a burst of calls must not push earlier ones out of the
# reader's history before the executor takes them (the default depth 10 loses the 11th).
SERVICE_QOS = QoSProfile(depth=1000)
# Frames failing in a row before /diagnostics reports ERROR ("frames keep failing").
PROCESSING_ERRORS_IN_A_ROW = 5

# fn(frame, results of the standing queries, source header, resolved image topic)
FrameConsumer = Callable[[CachedFrame, list[GroundingResult], Header, str], None]


class GroundingNode(LifecycleNode):
    """Lifecycle node grounding language queries in camera frames (see module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        params.declare_all(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self.grounder: Grounder | None = None
        self.state = "unconfigured"
        self.model_error = ""
        self.closing = False
        self._active = False
        self._frame_lock = threading.Lock()  # "active" check + cache add vs deactivate
        self.mailbox: LatestMailbox[Job] = LatestMailbox()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._consumers: list[FrameConsumer] = []
        self.object_memory = NodeMemory(self)  # opened on configure (memory_enabled)
        self.standing: list[str] = [q.strip() for q in params.value(self, "standing_queries")]

        self.rejected = ReasonCounter()  # bad inputs by reason
        self.service_failures = ReasonCounter()
        self.consumer_errors = ReasonCounter()
        # frames whose processing raised (CUDA OOM, engine errors, bugs): ERROR when they
        # keep failing (core/stats.FailureStreak), OK again after a frame succeeds
        self.processing_errors = FailureStreak(PROCESSING_ERRORS_IN_A_ROW)
        self.encode_latency = LatencyWindow()  # proposals + image pass
        self.frame_latency = LatencyWindow()  # image received -> groundings published
        self.overhead_latency = LatencyWindow()  # frame_latency minus model time
        self.service_latency = LatencyWindow()
        self.services_answered = 0
        self._throttle = Throttle(5.0)

        self.inputs = Inputs(self, MutuallyExclusiveCallbackGroup(), self.mailbox.put,
                             self.reject, lambda: self._active)
        self.handlers = Services(self)
        group = ReentrantCallbackGroup()
        for srv_type, name, handler in ((Ground, "~/ground", self.handlers.ground),
                                        (SetQueries, "~/set_queries", self.handlers.set_queries),
                                        (FindImage, "~/find_image", self.handlers.find_image)):
            self.create_service(srv_type, name, handler, qos_profile=SERVICE_QOS,
                                callback_group=group)
        self.create_service(Recall, "~/recall", self.handlers.recall, qos_profile=SERVICE_QOS,
                            callback_group=group)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(WAIT_TICK_S, lambda: self.handlers.waiters.expire(time.monotonic()),
                          callback_group=timers)
        # Diagnostics run in every lifecycle state: "unconfigured, checkpoint missing" is
        # exactly what an operator needs to see.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(float(self.get_parameter("diagnostics_period").value),
                          self._publish_diagnostics, callback_group=timers)
        self.outputs = Outputs(self)
        self.tracking = NodeTracking(self)  # tracks + ~/lock_on (tracking_enabled)

    # ------------------------------------------------------------------ extension point
    def add_frame_consumer(self, consumer: FrameConsumer) -> None:
        """Call `consumer(frame, results, header, camera)` after every encoded frame (on the
        worker thread; exceptions are caught, counted and logged)."""
        self._consumers = [*self._consumers, consumer]

    def remove_frame_consumer(self, consumer: FrameConsumer) -> None:
        self._consumers = [c for c in self._consumers if c is not consumer]

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, changed: list[Parameter]) -> SetParametersResult:
        values = params.values(self)
        for p in changed:
            values[p.name] = list(p.value) if isinstance(p.value, (list, tuple)) else p.value
        reason = params.validate_settings(values)
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        later = [p.name for p in changed if p.name in params.APPLIED_ON_CONFIGURE]
        if later and self.grounder is not None:
            self.get_logger().info(f"{', '.join(later)} will apply on the next configure")
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, changed: list[Parameter]) -> None:
        for p in changed:
            if p.name == "standing_queries":
                self.standing = [q.strip() for q in p.value]
            elif p.name == "max_query_tokens" and self.grounder is not None:
                self.grounder.config.max_query_tokens = int(p.value)
        self.tracking.parameters_changed([p.name for p in changed])

    # ------------------------------------------------------------------ lifecycle
    def refusal(self) -> tuple[str, str] | None:
        """(kind, message) when functional services must refuse in this state, else None."""
        if self.closing or self.state == "finalized":
            return "aborted", "shutting down"
        if self.state == "active" and self.grounder is not None:
            return None
        if self.state == "inactive":
            return "not_active", ("node inactive: activate it to serve requests (frames are "
                                  "not encoded while inactive)")
        why = f": {self.model_error}" if self.model_error else ""
        return "model_not_ready", f"model not ready (node {self.state}{why})"

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = params.values(self)
        reason = params.validate_settings(values)
        if reason is not None:
            return self._configure_failed(f"bad parameters: {reason}")
        self.state = "configuring"
        config = params.grounder_config(values)
        t0 = time.monotonic()
        try:
            grounder = Grounder.load(config)
        except Exception as exc:  # any load failure leaves the node unconfigured, alive
            return self._configure_failed(f"cannot load the model: {type(exc).__name__}: {exc}")
        self.get_logger().info(
            f"model loaded in {time.monotonic() - t0:.1f} s: {config.checkpoint} "
            f"(proposer {config.proposer}, {config.device}, {config.dtype}); {grounder.backend}")
        try:
            self.inputs.create(values)
            self.outputs.create()
        except Exception as exc:
            self.inputs.destroy()
            self.outputs.destroy()
            grounder.close()
            return self._configure_failed(f"cannot create topics: {type(exc).__name__}: {exc}")
        why = self.object_memory.open(values, grounder)
        if why is not None:
            self.inputs.destroy()
            self.outputs.destroy()
            grounder.close()
            return self._configure_failed(why)
        self.grounder = grounder
        self.model_error = ""
        self.state = "inactive"
        self._stop.clear()
        self.mailbox.reopen()
        self._worker = threading.Thread(target=self._work, name="objembed_worker", daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, why: str) -> TransitionCallbackReturn:
        self.state = "unconfigured"
        self.model_error = why
        self.get_logger().error(f"configure failed, node stays unconfigured: {why}")
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self.state = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate("node deactivated")
        self.tracking.lock_on.abort_all("deactivated")
        self.outputs.clear_markers()
        return super().on_deactivate(state)

    def _deactivate(self, why: str) -> None:
        with self._frame_lock:
            self._active = False
            if self.state == "active":
                self.state = "inactive"
            self.mailbox.clear()
            self.inputs.clear_pending()
            if self.grounder is not None:
                self.grounder.frames.clear()
            self.tracking.reset()  # frames after a pause start fresh tracks
        self.handlers.abort_all(why)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.handlers.abort_all("node cleaned up")
        self.tracking.lock_on.abort_all("deactivated")
        self.release()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.begin_shutdown()
        self.release()
        self.state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.handlers.abort_all("node error")
        self.tracking.lock_on.abort_all("node error")
        self.release()
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def begin_shutdown(self) -> None:
        """Refuse new calls and answer every pending one "shutting down"."""
        self.closing = True
        self._deactivate("shutting down")
        # aborts running locks; the executor must spin to send their results
        self.tracking.lock_on.close()

    def release(self, join_timeout: float = 30.0) -> None:
        """Stop the worker, drop topics, free the model (and CUDA cache)."""
        self._deactivate("shutting down" if self.closing else "node released")
        self._stop.set()
        self.mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=join_timeout)
            self._worker = None
        self.object_memory.close()
        self.inputs.destroy()
        self.outputs.destroy()
        grounder, self.grounder = self.grounder, None
        if grounder is not None:
            grounder.close()

    def autostart(self) -> None:
        """configure + activate, as a lifecycle manager would (param `autostart`)."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS and not self.closing:
            self.trigger_activate()

    def reject(self, where: str, reason: str, message: str) -> None:
        """Count a bad input and warn, at most once per 5 s per kind."""
        key = f"{where}:{reason}"
        self.rejected.add(key)
        if self._throttle.ready(key):
            self.get_logger().warning(f"rejected {where}: {message} "
                                      f"({self.rejected.snapshot().get(key, 0)} so far)")

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        """Encode the newest frame of each camera; never on a ROS callback thread."""
        while not self._stop.is_set():
            job = self.mailbox.take(timeout=0.2)
            if job is None:
                continue
            topic, (msg, received, boxes_msg) = job
            cam = self.inputs.cameras.get(str(topic))
            if cam is None or self.grounder is None or not self._active:
                continue
            try:
                self._process(cam, msg, received, boxes_msg)
            except InputError as err:  # the frame's fault: says nothing about the model
                self.reject("image", getattr(err, "reason", "bad_input"), f"{topic}: {err}")
            except Exception as exc:  # keep the worker alive; count, log, diagnostics
                state = self.processing_errors.failure(f"{topic}: {type(exc).__name__}: {exc}")
                if self._throttle.ready("processing_error"):
                    self.get_logger().error(f"frame processing failed ({state.in_a_row} in a "
                                            f"row, {state.total} in all): {state.last}")
            else:
                self.processing_errors.success()

    def _process(self, cam: Camera, msg: Image, received: float,
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
                                      meta=meta, cache=False)
        with self._frame_lock:
            if not self._active:  # deactivated during the pass: not cached, not served
                return
            entry = grounder.frames.add(cam.topic, frame.stamp_ns, frame)
        self.handlers.waiters.offer(entry)
        t_enc = time.monotonic()
        model_s = frame.timings.get("proposals", 0.0) + frame.timings.get("encode", 0.0)
        self.encode_latency.add(model_s)
        cam.rate_encoded.tick()
        results = self._ground_standing(grounder, frame)
        tracked = self.tracking.track(cam.topic, frame, results)
        if tracked is not None:  # the locked-only queries are not published
            results = [r for r in tracked.results if r.query in self.standing]
        arrays = [convert.result_to_msg(r, msg.header) for r in results]
        self.outputs.publish_groundings(arrays)
        self.outputs.publish_detections(arrays, msg.header, cam.has_depth_topic)
        t_pub = time.monotonic()
        if arrays:
            total = t_pub - received
            self.frame_latency.add(total)
            self.overhead_latency.add(max(total - model_s, 0.0))
        if tracked is not None:
            self.tracking.lock_on.on_frame(msg.header, tracked)
        self.outputs.publish_visuals(frame, arrays)
        self._call_consumers(frame, results, msg.header, cam.topic)
        if self.outputs.wants_timings():
            stages = dict(frame.timings)
            stages.update(queue=t_start - received, convert=t_conv - t_start,
                          ground_publish=t_pub - t_enc, model=model_s,
                          node_total=t_pub - received)
            self.outputs.publish_timings(msg.header, cam.topic, stages)

    def _ground_standing(self, grounder: Grounder, frame: CachedFrame) -> list[GroundingResult]:
        """The standing queries' results, plus those of queries locked on this camera when
        tracking is on (each query once; a locked query the grounder refuses, e.g. over the
        token limit, never costs the standing queries their results)."""
        standing = list(self.standing)
        locked = self.tracking.locked_queries(frame.meta.camera, standing)
        results: list[GroundingResult] = []
        for where, queries in (("standing_queries", standing), ("lock_on", locked)):
            if not queries:
                continue
            try:
                results += grounder.ground(
                    queries, frame, top_k=int(self.get_parameter("top_k").value),
                    min_score=float(self.get_parameter("min_score").value),
                    with_image_score=True)
            except InputError as err:  # e.g. a query over the token limit
                self.reject(where, "bad_query", str(err))
        return [self.inputs.with_positions(r, frame) for r in results]

    def _call_consumers(self, frame: CachedFrame, results: list[GroundingResult],
                        header: Header, camera: str) -> None:
        for consumer in self._consumers:
            try:
                consumer(frame, results, header, camera)
            except Exception as exc:  # a consumer never stops the worker
                name = getattr(consumer, "__qualname__", type(consumer).__name__)
                self.consumer_errors.add(name)
                if self._throttle.ready(f"consumer:{name}"):
                    self.get_logger().error(f"frame consumer {name} failed: "
                                            f"{type(exc).__name__}: {exc}")

    @property
    def memory(self) -> MemoryService | None:
        """The open object memory (ros/recall.py), None when disabled or closed."""
        return self.object_memory.service

    def publish_recall_markers(self, entries: list[MemoryEntry]) -> None:
        self.object_memory.publish_markers(entries)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> DiagnosticStatus:
        return node_status(self)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    die_with_parent()
    # Our handlers, not rclpy's: rclpy's would shut the context down before calls in flight
    # could be answered.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = stop_on_signals()
    node = GroundingNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    if node.get_parameter("autostart").value:
        # from a one-shot timer so the services answer "model not ready" while loading
        def start() -> None:
            timer.cancel()
            node.autostart()

        timer = node.create_timer(0.0, start, callback_group=MutuallyExclusiveCallbackGroup())
    while not stop.is_set() and rclpy.ok():
        try:
            executor.spin_once(timeout_sec=0.1)
        except Exception as exc:  # a failing callback is logged, the node keeps running
            node.get_logger().error(f"callback failed: {type(exc).__name__}: {exc}")
    node.get_logger().info("shutting down")
    lock_on = node.tracking.lock_on
    locks = lock_on.active()
    node.begin_shutdown()
    grace = time.monotonic() + SHUTDOWN_GRACE_S
    while (node.handlers.calls_in_flight or lock_on.active()) and time.monotonic() < grace:
        executor.spin_once(timeout_sec=0.05)
    # a lock's goal leaves active() just before rclpy sends its result: a few more turns
    settle = min(grace, time.monotonic() + LOCK_RESULT_SETTLE_S) if locks else 0.0
    while time.monotonic() < settle:
        executor.spin_once(timeout_sec=0.05)
    node.release(join_timeout=1.0)
    lock_on.destroy()
    node.handlers.pool.shutdown(wait=False, cancel_futures=True)
    executor.shutdown(timeout_sec=0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    exit_now(0)


if __name__ == "__main__":
    main()

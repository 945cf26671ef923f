"""The LockOn action (~/lock_on): follow one grounded object across frames of one camera.

The rules live in core.tracking (Tracking, Lock); this is the ROS glue the node owns:

- Goals arrive on the node's executor. A goal is accepted (unless close() was called); a
  bad one (empty query, min_score outside [0, 1], lost_after negative or not finite, unknown
  camera, too many locks, or `unavailable()` giving a reason such as "model not ready") is
  aborted at once with the reason in result.message, because a rejected goal carries no
  reason back to the caller.
- Several goals may run at once, also on the same query and camera (two arms following two
  handles): each goal owns its Lock, all read the same per-(camera, query) tracks.
- `on_frame` is called by the node's worker after each encoded frame, with the tracking
  output. It advances every lock of that camera and publishes feedback; it never waits (a
  short dict lock, non-blocking publishes). A lock that becomes LOST finishes its goal.
- The execute callback is a coroutine awaiting an rclpy Future that on_frame, a cancel,
  abort_all() or close() completes: no executor thread is blocked for the life of a goal.
- Cancel = unlock: the goal ends CANCELED with the last status in the result.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from std_msgs.msg import Header

from objembed_msgs.action import LockOn
from objembed_msgs.msg import GroundedObject, LockStatus
from objembed_ros.core.tracking import Lock, LockParams, LockState, LockUpdate, TrackedFrame
from objembed_ros.ros.convert import object_to_msg

LOST = "lost"
CANCELED = "canceled"
CLOSED = "closed"
_CANCEL_POLL_S = 0.01


@dataclass
class _Goal:
    """One running lock."""

    handle: ServerGoalHandle
    query: str
    camera: str
    lock: Lock
    done: Future
    status: LockStatus = field(default_factory=LockStatus)
    message: str = ""


class LockOnServer:
    """Serves ~/lock_on on `node`; the node calls on_frame() per encoded frame.

    cameras: returns the node's cameras (resolved image topics), first = the default.
    unavailable: returns why locks cannot run now ("" when they can: e.g. "model not
    ready", "tracking disabled"); a goal arriving then is aborted with that reason.
    default_lost_after: seconds, used when a goal gives lost_after 0.
    on_queries_changed: called (from an executor thread) when the set of locked queries
    changes, so the node can ground them on every frame (see queries()).
    """

    def __init__(self, node: Node, callback_group: CallbackGroup, *,
                 cameras: Callable[[], Sequence[str]],
                 unavailable: Callable[[], str] | None = None, default_lost_after: float = 2.0,
                 reacquire_min_cosine: float = 0.8, max_locks: int = 16,
                 on_queries_changed: Callable[[], None] | None = None,
                 action_name: str = "~/lock_on") -> None:
        self._node = node
        self._group = callback_group
        self._cameras = cameras
        self._unavailable = unavailable
        self.default_lost_after = float(default_lost_after)
        self.reacquire_min_cosine = float(reacquire_min_cosine)
        self.max_locks = int(max_locks)
        self._on_queries_changed = on_queries_changed
        self._lock = threading.Lock()
        self._goals: dict[bytes, _Goal] = {}
        self._closed = False
        self._server = ActionServer(
            node, LockOn, action_name, execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=self._on_cancel,
            callback_group=callback_group)

    # -- what the node reads ----------------------------------------------------------------
    def queries(self, camera: str | None = None) -> list[str]:
        """The locked queries (of `camera`, or all), each once, in lock order."""
        with self._lock:
            goals = list(self._goals.values())
        return list(dict.fromkeys(g.query for g in goals if camera is None or g.camera == camera))

    def active(self) -> int:
        with self._lock:
            return len(self._goals)

    # -- per frame (the node's worker thread) -----------------------------------------------
    def on_frame(self, header: Header, tracked: TrackedFrame) -> None:
        """Advance the locks of tracked.camera by one frame and publish their feedback."""
        with self._lock:
            goals = [g for g in self._goals.values()
                     if g.camera == tracked.camera and not g.done.done()]
        if not goals:
            return
        results = {r.query: r for r in tracked.results}
        for goal in goals:
            if goal.handle.is_cancel_requested:
                continue
            update = goal.lock.update(tracked.stamp_ns, tracked.tracks.get(goal.query))
            goal.status = self._status(header, goal.query, update, results.get(goal.query))
            goal.handle.publish_feedback(LockOn.Feedback(status=goal.status))
            if update.state == LockState.LOST:
                self._finish(goal, LOST, update.message or "target lost")

    @staticmethod
    def _status(header: Header, query: str, update: LockUpdate, result) -> LockStatus:
        status = LockStatus(header=header, state=int(update.state), track_id=update.track_id,
                            frames_tracked=update.frames_tracked,
                            frames_since_seen=update.frames_since_seen)
        if update.detection >= 0 and result is not None:
            status.object = object_to_msg(result.objects[update.detection], query)
        else:  # predicted (or no) box: nothing was observed in this frame
            status.object = GroundedObject(label=query, proposal_index=-1,
                                           proposal_score=math.nan,
                                           position_status="not_observed")
            if update.box is not None:
                (status.object.x1, status.object.y1, status.object.x2,
                 status.object.y2) = update.box
        status.object.track_id = update.track_id
        return status

    # -- shutdown -----------------------------------------------------------------------------
    def abort_all(self, message: str) -> None:
        """End every running goal ABORTED with `message` (deactivate, cleanup, a tracking
        parameter change). The executor must keep spinning for the results to go out."""
        with self._lock:
            goals = list(self._goals.values())
        for goal in goals:
            self._finish(goal, CLOSED, message)

    def close(self) -> None:
        """Abort every running goal and refuse new ones (node shutdown)."""
        self._closed = True
        self.abort_all("the grounding node stopped")

    def destroy(self) -> None:
        self.close()
        self._server.destroy()

    # -- action callbacks (executor threads) --------------------------------------------------
    def _on_goal(self, goal: LockOn.Goal) -> GoalResponse:
        return GoalResponse.REJECT if self._closed else GoalResponse.ACCEPT

    def _on_cancel(self, handle: ServerGoalHandle) -> CancelResponse:
        self._watch_cancel(handle)
        return CancelResponse.ACCEPT

    def _watch_cancel(self, handle: ServerGoalHandle) -> None:
        """Finish the goal as CANCELED once rclpy has marked it CANCELING.

        Why a timer: rclpy changes the goal's state only after this callback has returned and
        calls nothing afterwards; ending the goal before that would be an invalid transition.
        The timer (created on cancel only; creating it wakes the executor) checks every
        10 ms and goes away when the goal ends or after 2 s.
        """
        key = bytes(handle.goal_id.uuid)
        polls = [0]

        def check() -> None:
            polls[0] += 1
            with self._lock:
                goal = self._goals.get(key)
            if goal is not None and handle.is_cancel_requested:
                self._finish(goal, CANCELED, "canceled")
            if (goal is not None and goal.done.done()) or not handle.is_active \
                    or polls[0] > 200:
                timer.cancel()
                self._node.destroy_timer(timer)

        timer = self._node.create_timer(_CANCEL_POLL_S, check, callback_group=self._group)

    def _check(self, goal: LockOn.Goal) -> tuple[str, str, LockParams]:
        """(query, camera, params); ValueError with the reason for a bad goal."""
        reason = self._unavailable() if self._unavailable is not None else ""
        if reason:
            raise ValueError(reason)
        query = goal.query.strip()
        if not query:
            raise ValueError("empty query")
        if goal.track_id < -1:
            raise ValueError(f"track_id must be -1 (best object) or a track id, got "
                             f"{goal.track_id}")
        cameras = list(self._cameras())
        if not cameras:
            raise ValueError("the node has no camera")
        camera = cameras[0]
        if goal.camera:
            try:
                camera = self._node.resolve_topic_name(goal.camera)
            except Exception as exc:  # an invalid topic name
                raise ValueError(f"bad camera {goal.camera!r}: {exc}") from exc
            if camera not in cameras:
                raise ValueError(f"unknown camera {goal.camera!r} (known: {', '.join(cameras)})")
        lost_after = goal.lost_after or self.default_lost_after  # 0: the node's default
        return query, camera, LockParams(min_score=float(goal.min_score),  # LockParams checks
                                         lost_after_s=float(lost_after),
                                         reacquire_min_cosine=self.reacquire_min_cosine)

    async def _execute(self, handle: ServerGoalHandle) -> LockOn.Result:
        try:
            query, camera, params = self._check(handle.request)
        except ValueError as err:
            handle.abort()
            return LockOn.Result(status=LockStatus(), message=f"invalid goal: {err}")
        done = Future(executor=self._node.executor)
        done.add_done_callback(lambda _f: None)  # completing it wakes the executor
        goal = _Goal(handle, query, camera, Lock(params, handle.request.track_id), done)
        key = bytes(handle.goal_id.uuid)
        with self._lock:
            running = len(self._goals)
            if running < self.max_locks:
                self._goals[key] = goal
        if running >= self.max_locks:
            handle.abort()
            return LockOn.Result(status=LockStatus(), message=f"invalid goal: too many locks "
                                 f"({running} running, max_locks {self.max_locks})")
        self._queries_changed()
        if handle.is_cancel_requested:  # canceled before it was registered
            self._finish(goal, CANCELED, "canceled")
        reason = await done
        with self._lock:
            self._goals.pop(key, None)
        self._queries_changed()
        if reason == CANCELED and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return LockOn.Result(status=goal.status, message=goal.message)

    def _finish(self, goal: _Goal, reason: str, message: str) -> None:
        goal.message = message
        if not goal.done.done():
            goal.done.set_result(reason)

    def _queries_changed(self) -> None:
        if self._on_queries_changed is not None:
            self._on_queries_changed()


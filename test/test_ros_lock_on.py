"""~/lock_on with real rclpy: a host node serving LockOnServer, fed synthetic tracked frames
as the node's worker would, and a real ActionClient in another context."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Header

from objembed_msgs.action import LockOn
from objembed_msgs.msg import LockStatus
from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.core.tracking import TrackerParams, Tracking
from objembed_ros.ros.lock_on import LockOnServer
from objembed_ros.testing.ros_harness import RosClient

WAIT = 30.0  # generous: the machine is shared
S = 1_000_000_000


class Host:
    """The node side: a node with LockOnServer on a MultiThreadedExecutor."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("lock_on_host", context=self.context)
        self.query_changes = 0
        self.unavailable = ""
        self.server = LockOnServer(self.node, ReentrantCallbackGroup(),
                                   cameras=lambda: ["/cam"], default_lost_after=0.35,
                                   unavailable=lambda: self.unavailable,
                                   on_queries_changed=self._changed)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _changed(self) -> None:
        self.query_changes += 1

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown while waiting
            pass

    def close(self) -> None:
        self.server.destroy()
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.close()


E_TARGET = np.array([1.0, 0.0, 0.0], np.float32)
E_OTHER = np.array([0.0, 1.0, 0.0], np.float32)


class Scene:
    """Two objects on camera /cam for query 'cup': the target at x 20..30 and another cup at
    x 100..110; the worker's part: tracking + on_frame."""

    def __init__(self, server: LockOnServer) -> None:
        self.server = server
        self.tracking = Tracking(TrackerParams(confirm_hits=2, max_coast=20))
        self.t = 0

    def frame(self, target: bool, other: bool = True, target_score: float = 0.9,
              other_score: float = 0.5) -> None:
        objs, embs = [], []
        for show, box, score, emb in ((target, (20.0, 0.0, 30.0, 10.0), target_score, E_TARGET),
                                      (other, (100.0, 0.0, 110.0, 10.0), other_score, E_OTHER)):
            if show:
                objs.append(GroundedBox(box=box, score=score, similarity=score, iou=1.0,
                                        cosine=0.5, proposal_index=len(embs)))
                embs.append(emb)
        objs.sort(key=lambda o: -o.score)
        result = GroundingResult("cup", QUERY_TEXT, "/cam", self.t, (640, 480), len(objs), objs)
        emb = np.array(embs).reshape(-1, 3)
        tracked = self.tracking.update("/cam", self.t, [result], emb)
        header = Header(frame_id="cam_optical")
        header.stamp.sec, header.stamp.nanosec = divmod(self.t, S)
        self.server.on_frame(header, tracked)
        self.t += S // 10


class Goal:
    """Client side of one goal: feedback list and the result."""

    def __init__(self, client: RosClient, action: ActionClient, goal: LockOn.Goal) -> None:
        self.client = client
        self.feedback: list[LockStatus] = []
        send = action.send_goal_async(goal, feedback_callback=self._feedback)
        client.wait_for(send.done, WAIT, "goal response")
        self.handle = send.result()
        assert self.handle.accepted
        self.result_future = self.handle.get_result_async()

    def _feedback(self, msg) -> None:
        self.feedback.append(msg.feedback.status)

    def wait_feedback(self, n: int) -> LockStatus:
        self.client.wait_for(lambda: len(self.feedback) >= n, WAIT, f"feedback #{n}")
        return self.feedback[n - 1]

    def result(self):
        self.client.wait_for(self.result_future.done, WAIT, "result")
        return self.result_future.result()


def test_invalid_goals_end_with_a_reason(host: Host, ros_client: RosClient) -> None:
    action = ActionClient(ros_client.node, LockOn, "/lock_on_host/lock_on")
    assert action.wait_for_server(timeout_sec=WAIT)
    cases = [(LockOn.Goal(query="  "), "empty query"),
             (LockOn.Goal(query="cup", min_score=1.5), "min_score"),
             (LockOn.Goal(query="cup", min_score=float("nan")), "min_score"),
             (LockOn.Goal(query="cup", lost_after=-1.0), "lost_after"),
             (LockOn.Goal(query="cup", track_id=-5), "track_id"),
             (LockOn.Goal(query="cup", camera="other_cam"), "unknown camera 'other_cam'")]
    for goal, reason in cases:
        res = Goal(ros_client, action, goal).result()
        assert res.status == GoalStatus.STATUS_ABORTED, reason
        assert reason in res.result.message, (reason, res.result.message)
    host.unavailable = "model not ready"
    res = Goal(ros_client, action, LockOn.Goal(query="cup")).result()
    assert res.status == GoalStatus.STATUS_ABORTED
    assert res.result.message == "invalid goal: model not ready"
    assert host.server.active() == 0


def test_lock_follows_through_occlusion_cancel_and_lost(host: Host,
                                                        ros_client: RosClient) -> None:
    action = ActionClient(ros_client.node, LockOn, "/lock_on_host/lock_on")
    assert action.wait_for_server(timeout_sec=WAIT)
    scene = Scene(host.server)
    best = Goal(ros_client, action, LockOn.Goal(query="cup", camera="cam"))
    ros_client.wait_for(lambda: host.server.active() == 1, WAIT, "goal registered")
    assert host.server.queries() == ["cup"]

    scene.frame(target=True)  # tracks born, tentative
    assert best.wait_feedback(1).state == LockStatus.ACQUIRING
    scene.frame(target=True)  # confirmed: lock to the best (the target, track 1)
    fb = best.wait_feedback(2)
    assert (fb.state, fb.track_id, fb.frames_tracked) == (LockStatus.TRACKING, 1, 1)
    assert (fb.object.x1, fb.object.x2, fb.object.track_id) == (20.0, 30.0, 1)
    assert (fb.header.stamp.sec, fb.header.stamp.nanosec) == (0, 100_000_000)

    # a second lock on the same query: explicitly the other cup (track 2)
    other = Goal(ros_client, action, LockOn.Goal(query="cup", track_id=2))
    ros_client.wait_for(lambda: host.server.active() == 2, WAIT, "second goal registered")

    scene.frame(target=True, target_score=0.3, other_score=0.95)  # the other scores higher
    fb = best.wait_feedback(3)
    assert (fb.state, fb.track_id, fb.object.x1) == (LockStatus.TRACKING, 1, 20.0)
    fb2 = other.wait_feedback(1)
    assert (fb2.state, fb2.track_id, fb2.object.x1) == (LockStatus.TRACKING, 2, 100.0)

    for k in (1, 2):  # the target is occluded
        scene.frame(target=False)
        fb = best.wait_feedback(3 + k)
        assert (fb.state, fb.track_id, fb.frames_since_seen) == (LockStatus.COASTING, 1, k)
        assert (fb.object.x1, fb.object.x2, fb.object.proposal_index) == (20.0, 30.0, -1)
        assert fb.object.position_status == "not_observed" and fb.object.score == 0.0
    scene.frame(target=True)
    fb = best.wait_feedback(6)
    assert (fb.state, fb.track_id, fb.frames_tracked) == (LockStatus.REACQUIRED, 1, 3)
    scene.frame(target=True)
    assert best.wait_feedback(7).state == LockStatus.TRACKING

    # unlock the first goal: CANCELED with the last status
    cancel = best.handle.cancel_goal_async()
    ros_client.wait_for(cancel.done, WAIT, "cancel response")
    assert len(cancel.result().goals_canceling) == 1
    res = best.result()
    assert res.status == GoalStatus.STATUS_CANCELED
    assert (res.result.status.state, res.result.status.track_id) == (LockStatus.TRACKING, 1)
    ros_client.wait_for(lambda: host.server.active() == 1, WAIT, "goal removed")

    # the other cup leaves the view: coasting, then lost after 0.35 s (the node default)
    n = len(other.feedback)
    for k, t_unseen in enumerate((0.1, 0.2, 0.3), start=1):
        scene.frame(target=True, other=False)
        fb = other.wait_feedback(n + k)
        assert fb.state == LockStatus.COASTING, t_unseen
    scene.frame(target=True, other=False)  # unseen 0.4 s > 0.35 s
    assert other.wait_feedback(n + 4).state == LockStatus.LOST
    res = other.result()
    assert res.status == GoalStatus.STATUS_ABORTED
    assert res.result.status.state == LockStatus.LOST and res.result.status.track_id == 2
    assert "unseen for 0.400 s" in res.result.message
    ros_client.wait_for(lambda: host.server.active() == 0, WAIT, "all goals ended")
    assert host.server.queries() == []
    assert host.query_changes == 4  # two goals registered, two removed
    n = len(other.feedback)
    scene.frame(target=True)  # no goal left: nothing is published
    assert len(other.feedback) == n


def test_abort_all_and_close(host: Host, ros_client: RosClient) -> None:
    action = ActionClient(ros_client.node, LockOn, "/lock_on_host/lock_on")
    assert action.wait_for_server(timeout_sec=WAIT)
    goal = Goal(ros_client, action, LockOn.Goal(query="cup"))
    ros_client.wait_for(lambda: host.server.active() == 1, WAIT, "goal registered")
    host.server.abort_all("deactivated")  # e.g. lifecycle deactivate: later goals still run
    res = goal.result()
    assert (res.status, res.result.message) == (GoalStatus.STATUS_ABORTED, "deactivated")
    goal = Goal(ros_client, action, LockOn.Goal(query="cup"))
    ros_client.wait_for(lambda: host.server.active() == 1, WAIT, "goal registered")
    host.server.close()
    res = goal.result()
    assert res.status == GoalStatus.STATUS_ABORTED
    assert "stopped" in res.result.message
    refused = action.send_goal_async(LockOn.Goal(query="cup"))
    ros_client.wait_for(refused.done, WAIT, "goal response")
    assert not refused.result().accepted

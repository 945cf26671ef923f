"""Tracking, ~/lock_on and the vision_msgs topics wired into the real node (a subprocess
started through the project's launcher, talked to over real topics and a real ActionClient).

The box set is deterministic (external proposals), so the references are the input boxes
themselves: a track id must stay with the same box across frames; a lock on the best object
must follow the box ~/ground ranks first on the same frame; a running lock gets its result
when the node is stopped."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from node_helpers import NodeHandle, header
from rclpy.action import ActionClient
from rclpy.qos import qos_profile_sensor_data

from objembed_msgs.action import LockOn
from objembed_msgs.msg import GroundedObjectArray, LockStatus
from objembed_ros.ros.convert import rgb_to_image
from objembed_ros.ros.launcher import default_params_file

WAIT = 60.0  # generous: the machine is shared
QUERY = "a face"
# three disjoint boxes (no duplicate-box suppression between them) in a 256x256 crop
BOXES = np.array([[10, 10, 110, 120], [140, 20, 250, 100], [30, 150, 200, 250]], np.float32)
STEP_NS = 100_000_000  # 10 fps stamps


def _start(launch_node, ns: str, checkpoint: Path, **parameters: object):
    return launch_node(params_file=default_params_file(), namespace=ns, parameters={
        "checkpoint": str(checkpoint), "proposer": "external", "top_k": 0, **parameters})


def _box(o) -> tuple[float, float, float, float]:
    return (o.x1, o.y1, o.x2, o.y2)


def _query_arrays(handle: NodeHandle) -> list[GroundedObjectArray]:
    return [a for a in handle.groundings if a.query == QUERY]


def test_standing_query_objects_carry_stable_track_ids(launch_node, ros_client,
                                                       tiny_objembed_dir: Path,
                                                       photo: np.ndarray) -> None:
    _start(launch_node, "track", tiny_objembed_dir, standing_queries=[QUERY])
    handle = NodeHandle(ros_client, ns="/track")
    assert handle.ground.wait_for_service(timeout_sec=WAIT)
    rgb = np.ascontiguousarray(photo[:256, :256])
    for i in range(6):
        handle.publish_frame(rgb, (i + 1) * STEP_NS, BOXES)
    ros_client.wait_for(lambda: len(_query_arrays(handle)) >= 6, WAIT, "6 groundings")
    # one array per encoded frame, in order (a resent frame is encoded again: it counts as a
    # matched frame for the tracker too, so go by arrays, not by stamps)
    per_frame = [{_box(o): o.track_id for o in a.objects} for a in _query_arrays(handle)]
    assert all(set(f) == {tuple(b) for b in BOXES.tolist()} for f in per_frame)
    # tentative for the first two matched frames (track_confirm_hits 3), then confirmed
    assert per_frame[0] == per_frame[1] == {tuple(b): -1 for b in BOXES.tolist()}
    confirmed = per_frame[2]
    assert all(t >= 0 for t in confirmed.values()) and len(set(confirmed.values())) == 3
    assert all(f == confirmed for f in per_frame[3:])  # each box keeps its own id


def test_lock_on_follows_the_best_object_and_cancels(launch_node, ros_client,
                                                     tiny_objembed_dir: Path,
                                                     photo: np.ndarray) -> None:
    # no standing queries: the locked query is grounded for the lock alone
    _start(launch_node, "lock", tiny_objembed_dir)
    handle = NodeHandle(ros_client, ns="/lock")
    assert handle.ground.wait_for_service(timeout_sec=WAIT)
    client = ActionClient(ros_client.node, LockOn, "/lock/grounding_node/lock_on")
    assert client.wait_for_server(timeout_sec=WAIT)
    rgb = np.ascontiguousarray(photo[:256, :256])
    handle.publish_frame(rgb, STEP_NS, BOXES)  # a frame is there: the node is active
    feedback: list[LockStatus] = []
    sent = client.send_goal_async(LockOn.Goal(query=QUERY, track_id=-1),
                                  feedback_callback=lambda f: feedback.append(f.feedback.status))
    ros_client.wait_for(sent.done, WAIT, "goal response")
    goal = sent.result()
    assert goal.accepted
    stamp = 2 * STEP_NS
    deadline = time.monotonic() + 4 * WAIT
    while sum(s.state == LockStatus.TRACKING for s in feedback) < 3:
        assert time.monotonic() < deadline, [s.state for s in feedback]
        handle.publish_frame(rgb, stamp, BOXES)
        stamp += STEP_NS
    ros_client.wait_for(lambda: feedback[-1].header.stamp == header(stamp - STEP_NS).stamp,
                        WAIT, "feedback of the last frame")
    tracking = [s for s in feedback if s.state == LockStatus.TRACKING]
    assert len({s.track_id for s in tracking}) == 1 and tracking[0].track_id >= 0
    # the best object of that frame by the node's own ranking service
    best = handle.call_ground(queries=[QUERY], frame_stamp=tracking[-1].header.stamp)
    assert best.success, best.message
    assert _box(tracking[-1].object) == _box(best.results[0].objects[0])
    assert tracking[-1].object.score == best.results[0].objects[0].score
    assert tracking[-1].object.track_id == tracking[-1].track_id
    canceled = goal.cancel_goal_async()
    ros_client.wait_for(canceled.done, WAIT, "cancel response")
    result = goal.get_result_async()
    ros_client.wait_for(result.done, WAIT, "result")
    assert result.result().status == GoalStatus.STATUS_CANCELED
    assert result.result().result.message == "canceled"
    assert result.result().result.status.track_id == tracking[0].track_id


def test_vision_msgs_detections_out_and_detection2d_proposals_in(launch_node, ros_client,
                                                                 tiny_objembed_dir: Path,
                                                                 photo: np.ndarray) -> None:
    vm = pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built")
    _start(launch_node, "vis", tiny_objembed_dir, standing_queries=[QUERY])
    handle = NodeHandle(ros_client, ns="/vis")
    node = ros_client.node
    detections: list = []
    node.create_subscription(vm.Detection2DArray, "/vis/grounding_node/detections",
                             detections.append, 100)
    pub_dets = node.create_publisher(vm.Detection2DArray, "/vis/external_detections",
                                     qos_profile_sensor_data)  # best effort, as detectors do
    pub_image = node.create_publisher(handle.pub_image.msg_type, "/vis/image",
                                      qos_profile_sensor_data)
    assert handle.ground.wait_for_service(timeout_sec=WAIT)
    rgb = np.ascontiguousarray(photo[:256, :256])
    det_scores = [0.75, 0.5, 0.25]

    def proposals(h) -> object:
        msg = vm.Detection2DArray(header=h)
        for (x1, y1, x2, y2), s in zip(BOXES.tolist(), det_scores, strict=True):
            det = vm.Detection2D(header=h)
            det.bbox.center.position.x, det.bbox.center.position.y = (x1 + x2) / 2, (y1 + y2) / 2
            det.bbox.size_x, det.bbox.size_y = x2 - x1, y2 - y1
            hyp = vm.ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = "thing", s
            det.results = [hyp]
            msg.detections.append(det)
        return msg

    for i in range(5):
        h = header((i + 1) * STEP_NS)
        deadline = time.monotonic() + WAIT
        while not any(d.header.stamp == h.stamp for d in detections):
            assert time.monotonic() < deadline, f"frame {i} not grounded from Detection2DArray"
            pub_dets.publish(proposals(h))
            pub_image.publish(rgb_to_image(rgb, h))
            time.sleep(0.5)
    ros_client.wait_for(lambda: any(a.header.stamp == h.stamp for a in _query_arrays(handle)),
                        WAIT, "groundings of the last frame")
    grounded = next(a for a in _query_arrays(handle) if a.header.stamp == h.stamp)
    # the node grounded exactly the Detection2DArray's boxes, their confidence kept
    by_box = {_box(o): o for o in grounded.objects}
    assert set(by_box) == {tuple(b) for b in BOXES.tolist()}
    for b, s in zip(BOXES.tolist(), det_scores, strict=True):
        assert by_box[tuple(b)].proposal_score == np.float32(s)
    out = next(d for d in detections if d.header.stamp == h.stamp)
    assert out.header == h  # the source image header
    assert len(out.detections) == len(grounded.objects)
    for det, obj in zip(out.detections, grounded.objects, strict=True):
        assert det.header == h
        assert [r.hypothesis.class_id for r in det.results] == [QUERY]
        # the same score: ~/groundings carries it as float32, the hypothesis as float64
        assert np.float32(det.results[0].hypothesis.score) == np.float32(obj.score)
        assert obj.track_id >= 0 and det.id == str(obj.track_id)  # confirmed by frame 5
        c, w, ht = det.bbox.center.position, det.bbox.size_x, det.bbox.size_y
        assert (c.x - w / 2, c.y - ht / 2, c.x + w / 2, c.y + ht / 2) == _box(obj)


def test_running_lock_ends_with_a_result_when_the_node_stops(launch_node, ros_client,
                                                             tiny_objembed_dir: Path,
                                                             photo: np.ndarray) -> None:
    """SIGINT while a lock runs: the goal gets its ABORTED result before the process ends."""
    proc = _start(launch_node, "stop", tiny_objembed_dir)
    handle = NodeHandle(ros_client, ns="/stop")
    assert handle.ground.wait_for_service(timeout_sec=WAIT)
    client = ActionClient(ros_client.node, LockOn, "/stop/grounding_node/lock_on")
    assert client.wait_for_server(timeout_sec=WAIT)
    rgb = np.ascontiguousarray(photo[:256, :256])
    handle.publish_frame(rgb, STEP_NS, BOXES)
    feedback: list[LockStatus] = []
    sent = client.send_goal_async(LockOn.Goal(query=QUERY),
                                  feedback_callback=lambda f: feedback.append(f.feedback.status))
    ros_client.wait_for(sent.done, WAIT, "goal response")
    stamp = 2 * STEP_NS
    while not feedback:  # the lock is running on frames
        handle.publish_frame(rgb, stamp, BOXES)
        stamp += STEP_NS
        assert stamp < 100 * STEP_NS
    result = sent.result().get_result_async()
    assert proc.stop() in (0, -2, 130)
    ros_client.wait_for(result.done, WAIT, "result after shutdown")
    assert result.result().status == GoalStatus.STATUS_ABORTED
    assert result.result().result.message == "the grounding node stopped"


def test_parameter_change_and_deactivate_abort_running_locks(launch_node, ros_client,
                                                             tiny_objembed_dir: Path,
                                                             photo: np.ndarray) -> None:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    _start(launch_node, "abort", tiny_objembed_dir)
    handle = NodeHandle(ros_client, ns="/abort")
    base = "/abort/grounding_node"
    assert handle.ground.wait_for_service(timeout_sec=WAIT)
    client = ActionClient(ros_client.node, LockOn, f"{base}/lock_on")
    assert client.wait_for_server(timeout_sec=WAIT)
    rgb = np.ascontiguousarray(photo[:256, :256])
    stamps = iter(range(STEP_NS, 1000 * STEP_NS, STEP_NS))
    handle.publish_frame(rgb, next(stamps), BOXES)

    def running_lock():
        feedback: list[LockStatus] = []
        sent = client.send_goal_async(LockOn.Goal(query=QUERY),
                                      feedback_callback=lambda f: feedback.append(f))
        ros_client.wait_for(sent.done, WAIT, "goal response")
        while not feedback:
            handle.publish_frame(rgb, next(stamps), BOXES)
        return sent.result().get_result_async()

    def ended(result, message: str) -> None:
        ros_client.wait_for(result.done, WAIT, message)
        assert result.result().status == GoalStatus.STATUS_ABORTED
        assert result.result().result.message == message

    result = running_lock()
    set_params = ros_client.node.create_client(SetParameters, f"{base}/set_parameters")
    value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=4)
    resp = ros_client.call(set_params, SetParameters.Request(
        parameters=[Parameter(name="track_confirm_hits", value=value)]), WAIT)
    assert resp.results[0].successful, resp.results[0].reason
    ended(result, "tracking parameters changed")
    result = running_lock()
    change = ros_client.node.create_client(ChangeState, f"{base}/change_state")
    assert ros_client.call(change, ChangeState.Request(
        transition=Transition(id=Transition.TRANSITION_DEACTIVATE)), WAIT).success
    ended(result, "deactivated")

"""core.tracking: hand-computed association, track life, ids and lock-on states."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from objembed_ros.core.boxes import box_iou
from objembed_ros.core.depth import Position3D
from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.core.tracking import (
    Lock,
    LockParams,
    LockState,
    QueryTracker,
    TrackerParams,
    TrackFrame,
    Tracking,
    TrackState,
    with_track_ids,
)

S = 1_000_000_000  # one second in ns
E1 = np.array([[1.0, 0.0, 0.0]], np.float32)
E2 = np.array([[0.0, 1.0, 0.0]], np.float32)
E3 = np.array([[0.0, 0.0, 1.0]], np.float32)


def tracker(**kw) -> QueryTracker:
    return QueryTracker(TrackerParams(**kw), itertools.count(1).__next__)


def step(tr: QueryTracker, t_s: float, boxes, embs, scores=None) -> TrackFrame:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    embs = (np.asarray(embs, np.float32).reshape(len(boxes), 3) if len(boxes)
            else np.zeros((0, 3), np.float32))
    scores = np.full(len(boxes), 0.5) if scores is None else np.asarray(scores, np.float64)
    return tr.update(round(t_s * S), boxes, embs, scores)


def test_box_iou_against_hand_values() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0, 0.0]])


def test_ids_follow_objects_and_confirm_after_n_hits() -> None:
    tr = tracker(confirm_hits=2)
    a, b = [0, 0, 10, 10], [100, 0, 110, 10]
    f0 = step(tr, 0.0, [a, b], np.vstack([E1, E2]))
    assert f0.track_ids.tolist() == [1, 2]
    assert f0.states.tolist() == [TrackState.TENTATIVE] * 2
    assert f0.detection_track_ids.tolist() == [-1, -1]  # tentative ids are not published
    # next frame: both moved 2 px right, given in the other order
    f1 = step(tr, 0.1, [[102, 0, 112, 10], [2, 0, 12, 10]], np.vstack([E2, E1]))
    assert f1.detection_track_ids.tolist() == [2, 1]
    assert f1.states.tolist() == [TrackState.CONFIRMED] * 2
    assert f1.detections.tolist() == [1, 0]  # track 1 took detection 1


def test_confirmed_at_exactly_confirm_hits() -> None:
    tr = tracker(confirm_hits=3)
    box = [0, 0, 10, 10]
    states = [step(tr, t, [box], E1).states.tolist() for t in (0.0, 0.1, 0.2)]
    assert states == [[TrackState.TENTATIVE], [TrackState.TENTATIVE], [TrackState.CONFIRMED]]
    assert step(tr, 0.3, [box], E1).detection_track_ids.tolist() == [1]


def test_constant_velocity_prediction_and_smoothing() -> None:
    tr = tracker(confirm_hits=1, velocity_smoothing=0.5, max_coast=5)
    step(tr, 0.0, [[0, 0, 10, 10]], E1)
    f = step(tr, 1.0, [[5, 0, 15, 10]], E1)  # measured 5 px/s, smoothed from 0: 2.5
    np.testing.assert_allclose(f.velocities, [[2.5, 0.0]])
    f = step(tr, 2.0, [], E1)  # unseen: coasts along the predicted box
    assert f.states.tolist() == [TrackState.COASTING]
    np.testing.assert_allclose(f.boxes, [[7.5, 0, 17.5, 10]])
    assert f.detections.tolist() == [-1]
    assert np.isnan(f.scores[0])
    # seen again at t=3 s, centre 17: measured (17 - 10) / 2 s = 3.5 px/s (from the last
    # matched box, over the gap); smoothed 0.5 * 2.5 + 0.5 * 3.5
    f = step(tr, 3.0, [[12, 0, 22, 10]], E1)
    assert f.track_ids.tolist() == [1] and f.states.tolist() == [TrackState.CONFIRMED]
    np.testing.assert_allclose(f.velocities, [[3.0, 0.0]])


def test_tentative_dies_on_a_miss_confirmed_coasts_then_ids_are_not_reused() -> None:
    tr = tracker(confirm_hits=2, max_coast=2)
    box = [0, 0, 10, 10]
    step(tr, 0.0, [box], E1)
    f = step(tr, 0.1, [], E1)
    assert f.track_ids.size == 0 and f.deleted == (1,)
    step(tr, 0.2, [box], E1)  # new object: id 2, never 1 again
    f = step(tr, 0.3, [box], E1)
    assert f.detection_track_ids.tolist() == [2]
    for t, misses in ((0.4, 1), (0.5, 2)):
        f = step(tr, t, [], E1)
        assert f.track_ids.tolist() == [2] and f.states.tolist() == [TrackState.COASTING], misses
    f = step(tr, 0.6, [], E1)  # third miss > max_coast 2
    assert f.track_ids.size == 0 and f.deleted == (2,)
    f = step(tr, 0.7, [box], E1)
    assert f.track_ids.tolist() == [3]


def test_assignment_is_optimal_not_greedy() -> None:
    # IoUs (hand): A=[0,10] vs d1=[2,12]: 8/12; A vs d2=[-6,4]: 4/16; B=[6,16] vs d1: 6/14;
    # B vs d2: 0. Greedy takes A-d1 and leaves B unmatched; the optimum is A-d2 + B-d1.
    tr = tracker(confirm_hits=1, iou_weight=1.0, min_iou=0.1, max_coast=3)
    step(tr, 0.0, [[0, 0, 10, 10], [6, 0, 16, 10]], np.vstack([E1, E1]))
    f = step(tr, 0.0, [[2, 0, 12, 10], [-6, 0, 4, 10]], np.vstack([E1, E1]))
    assert f.detection_track_ids.tolist() == [2, 1]


def test_appearance_vetoes_an_overlapping_box_of_another_object() -> None:
    tr = tracker(confirm_hits=1, min_cosine=0.3)
    step(tr, 0.0, [[0, 0, 10, 10]], E1)
    # detection 0 sits exactly on the track but looks different (cos 0): not matched;
    # detection 1 overlaps less (IoU 1/3) but looks the same: it continues track 1
    f = step(tr, 0.1, [[0, 0, 10, 10], [5, 0, 15, 10]], np.vstack([E2, E1]))
    assert f.detection_track_ids.tolist() == [2, 1]  # det 0 starts its own track
    assert f.detections[f.index_of(1)] == 1


def test_reidentification_only_for_coasting_tracks() -> None:
    tr = tracker(confirm_hits=1, reid_min_cosine=0.9, max_coast=5)
    step(tr, 0.0, [[0, 0, 10, 10]], E1)
    # visible track, far jump with the same look: not the same track (motion disagrees)
    f = step(tr, 0.1, [[200, 0, 210, 10]], E1)
    assert f.detection_track_ids.tolist() == [2]
    assert f.states[f.index_of(1)] == TrackState.COASTING
    tr2 = tracker(confirm_hits=1, reid_min_cosine=0.9, max_coast=5)
    step(tr2, 0.0, [[0, 0, 10, 10]], E1)
    step(tr2, 0.1, [], E1)  # occluded: coasting
    f = step(tr2, 0.2, [[200, 0, 210, 10], [300, 0, 310, 10]], np.vstack([E2, E1]))
    assert f.detection_track_ids.tolist() == [2, 1]  # re-identified by look, not by place


def test_duplicate_boxes_do_not_start_tracks() -> None:
    tr = tracker(confirm_hits=1, birth_max_iou=0.5)
    # det 1 overlaps det 0 by IoU 0.6 (a duplicate); det 2 by 1/3 (another object)
    boxes = [[0, 0, 10, 10], [0, 0, 10, 6], [5, 0, 15, 10]]
    f = step(tr, 0.0, boxes, np.vstack([E1, E1, E1]), scores=[0.9, 0.8, 0.7])
    assert f.detection_track_ids.tolist() == [1, -1, 2]
    # next frame: object 2 unseen (coasting at [5, 0, 15, 10]); a box on it with another
    # look (not matched: cos 0 < min_cosine) does not start a track either: IoU 0.6
    f = step(tr, 0.1, [[0, 0, 10, 10], [5, 0, 15, 6]], np.vstack([E1, E2]), scores=[0.9, 0.8])
    assert f.detection_track_ids.tolist() == [1, -1]
    assert f.states[f.index_of(2)] == TrackState.COASTING


def test_with_track_ids_and_tracking_hub() -> None:
    def result(query: str, boxes: list[list[float]], index: list[int]) -> GroundingResult:
        objects = [GroundedBox(box=tuple(b), score=0.9 - 0.1 * i, similarity=0.9, iou=1.0,
                               cosine=0.5, proposal_index=k)
                   for i, (b, k) in enumerate(zip(boxes, index, strict=True))]
        return GroundingResult(query, QUERY_TEXT, "cam", 0, (640, 480), 3, objects)

    emb = np.vstack([E1, E2, E3]) * 3.0  # not unit: the hub normalises
    hub = Tracking(TrackerParams(confirm_hits=1))
    a, b = [0, 0, 10, 10], [50, 0, 60, 10]
    out = hub.update("cam", 0, [result("cup", [a, b], [0, 1]), result("mug", [b], [1])], emb)
    assert [[o.track_id for o in r.objects] for r in out.results] == [[1, 2], [3]]
    assert out.tracks["cup"].detections.tolist() == [0, 1]
    # a supplied box (proposal_index -1) is not tracked and keeps -1
    out = hub.update("cam", S // 10, [result("cup", [b, a], [-1, 0])], emb)
    assert [o.track_id for o in out.results[0].objects] == [-1, 1]
    assert out.tracks["cup"].detections.tolist() == [1, -1]  # indices into result.objects
    # "mug" vanished from the standing queries: its tracker is dropped; re-adding it starts
    # new ids (4), never 3 again
    out = hub.update("cam", 2 * S // 10, [result("mug", [b], [1])], emb)
    assert out.results[0].objects[0].track_id == 4
    hub.reset(TrackerParams(confirm_hits=2))  # a parameter change: tracks dropped, ids go on
    out = hub.update("cam", 3 * S // 10, [result("mug", [b], [1])], emb)
    assert out.results[0].objects[0].track_id == -1 and hub.params.confirm_hits == 2
    out = hub.update("cam", 4 * S // 10, [result("mug", [b], [1])], emb)
    assert out.results[0].objects[0].track_id == 5
    unchanged = result("x", [a], [0])
    assert with_track_ids(unchanged, [-1]) is unchanged
    with pytest.raises(ValueError):
        with_track_ids(unchanged, [1, 2])
    # equal to what dataclasses.replace builds (with_track_ids copies instances its own way)
    position = Position3D(True, "ok", (1.0, 2.0, 3.0), (0.1, 0.2, 0.3), 12)
    src = result("y", [a, b], [0, 1])
    src = dataclasses.replace(src, meta={"header": 1}, image_score=0.25, objects=[
        dataclasses.replace(src.objects[0], position=position), src.objects[1]])
    got = with_track_ids(src, [7, -1])
    expected = dataclasses.replace(src, objects=[
        dataclasses.replace(src.objects[0], track_id=7), src.objects[1]])
    assert got == expected and type(got.objects[0]) is GroundedBox
    assert src.objects[0].track_id == -1  # the input is untouched


def _result(query: str, boxes: list[list[float]], index: list[int]) -> GroundingResult:
    objects = [GroundedBox(box=tuple(b), score=0.9, similarity=0.9, iou=1.0, cosine=0.5,
                           proposal_index=k) for b, k in zip(boxes, index, strict=True)]
    return GroundingResult(query, QUERY_TEXT, "cam", 0, (640, 480), 3, objects)


def test_a_query_without_objects_in_a_frame_coasts_its_tracks() -> None:
    # (this raised IndexError before: no detections to map the coasting track's -1 through)
    hub = Tracking(TrackerParams(confirm_hits=1))
    emb = np.vstack([E1, E2])
    hub.update("cam", 0, [_result("cup", [[0, 0, 10, 10]], [0])], emb)
    out = hub.update("cam", S // 10, [_result("cup", [], [])], emb)
    frame = out.tracks["cup"]
    assert frame.track_ids.tolist() == [1] and frame.states.tolist() == [TrackState.COASTING]
    assert frame.detections.tolist() == [-1] and frame.detection_track_ids.size == 0
    out = hub.update("cam", 2 * S // 10, [_result("cup", [[0, 0, 10, 10]], [0])], emb)
    assert out.results[0].objects[0].track_id == 1  # back on its track


def test_a_query_twice_in_one_frame_is_tracked_twice_in_order() -> None:
    # the second result meets the track the first one started (same stamp: no motion)
    hub = Tracking(TrackerParams(confirm_hits=1))
    emb = np.vstack([E1, E2])
    first, second = _result("cup", [[0, 0, 10, 10]], [0]), _result("cup", [[1, 0, 11, 10]], [0])
    out = hub.update("cam", 0, [first, second], emb)
    assert [r.objects[0].track_id for r in out.results] == [1, 1]
    assert out.tracks["cup"].track_ids.tolist() == [1]


def test_params_are_validated() -> None:
    for bad in ({"confirm_hits": 0}, {"max_coast": -1}, {"iou_weight": 1.5},
                {"embedding_momentum": 1.0}, {"velocity_smoothing": 0.0}):
        with pytest.raises(ValueError):
            TrackerParams(**bad)
    for bad in ({"min_score": -0.1}, {"lost_after_s": 0.0}, {"lost_after_s": float("nan")}):
        with pytest.raises(ValueError):
            LockParams(**bad)


# -- lock-on --------------------------------------------------------------------------


def two_objects(tr: QueryTracker, t: float, show_a: bool, score_a: float, score_b: float,
                x_a: float = 0.0) -> TrackFrame:
    boxes, embs, scores = [], [], []
    if show_a:
        boxes.append([x_a, 0, x_a + 10, 10])
        embs.append(E1[0])
        scores.append(score_a)
    boxes.append([100, 0, 110, 10])
    embs.append(E2[0])
    scores.append(score_b)
    return step(tr, t, boxes, np.array(embs), scores)


def test_lock_keeps_its_object_through_occlusion_and_higher_scores() -> None:
    tr = tracker(confirm_hits=2, max_coast=10)
    lock = Lock(LockParams(lost_after_s=0.25))
    states = []
    # frames 0.0, 0.1: A (score 0.9) is the best once confirmed at 0.1
    for t in (0.0, 0.1):
        states.append(lock.update(round(t * S), two_objects(tr, t, True, 0.9, 0.5)))
    assert [u.state for u in states] == [LockState.ACQUIRING, LockState.TRACKING]
    assert states[1].track_id == 1 and states[1].detection == 0
    # B now scores higher: the lock stays on A
    u = lock.update(round(0.2 * S), two_objects(tr, 0.2, True, 0.3, 0.95))
    assert (u.state, u.track_id, u.frames_tracked) == (LockState.TRACKING, 1, 2)
    # A occluded for two frames: coasting, B (visible all along) is never taken over
    for k, t in enumerate((0.3, 0.4), start=1):
        u = lock.update(round(t * S), two_objects(tr, t, False, 0.0, 0.95))
        assert (u.state, u.track_id, u.frames_since_seen, u.detection) == (
            LockState.COASTING, 1, k, -1)
        assert u.box == (0.0, 0.0, 10.0, 10.0)  # A did not move: velocity 0
    u = lock.update(round(0.5 * S), two_objects(tr, 0.5, True, 0.2, 0.95))
    assert (u.state, u.track_id, u.frames_tracked, u.frames_since_seen) == (
        LockState.REACQUIRED, 1, 3, 0)
    u = lock.update(round(0.6 * S), two_objects(tr, 0.6, True, 0.2, 0.95))
    assert u.state == LockState.TRACKING
    # unseen from 0.7: at 0.8 s unseen 0.2 s (coasting), at 0.9 s 0.3 s > 0.25: lost
    u = lock.update(round(0.8 * S), two_objects(tr, 0.8, False, 0.0, 0.95))
    assert u.state == LockState.COASTING
    u = lock.update(round(0.9 * S), two_objects(tr, 0.9, False, 0.0, 0.95))
    assert u.state == LockState.LOST and "unseen for 0.300 s" in u.message
    u = lock.update(round(1.0 * S), two_objects(tr, 1.0, True, 0.9, 0.95))
    assert u.state == LockState.LOST  # final


def test_lock_coasting_box_follows_the_motion_model() -> None:
    tr = tracker(confirm_hits=1, max_coast=10, velocity_smoothing=0.5)
    lock = Lock(LockParams(lost_after_s=5.0))
    lock.update(0, two_objects(tr, 0.0, True, 0.9, 0.1, x_a=0.0))
    lock.update(S, two_objects(tr, 1.0, True, 0.9, 0.1, x_a=5.0))  # 2.5 px/s (smoothed)
    u = lock.update(3 * S, two_objects(tr, 3.0, False, 0.0, 0.1))
    assert (u.state, u.track_id) == (LockState.COASTING, 1)
    assert u.box == (10.0, 0.0, 20.0, 10.0)  # x 5 + 2.5 px/s * 2 s


def test_lock_reacquires_by_embedding_after_its_track_is_gone() -> None:
    tr = tracker(confirm_hits=1, max_coast=0, reid_min_cosine=2.0)  # tracker re-id off
    lock = Lock(LockParams(lost_after_s=10.0, reacquire_min_cosine=0.9))
    u = lock.update(0, step(tr, 0.0, [[0, 0, 10, 10], [100, 0, 110, 10]],
                            np.vstack([E1, E2]), [0.9, 0.5]))
    assert u.track_id == 1
    u = lock.update(S, step(tr, 1.0, [[100, 0, 110, 10]], E2, [0.5]))  # track 1 deleted
    assert u.state == LockState.COASTING
    # a new object that looks different: not taken; one that looks like A: taken over
    u = lock.update(2 * S, step(tr, 2.0, [[100, 0, 110, 10], [300, 0, 310, 10]],
                                np.vstack([E2, E3]), [0.5, 0.99]))
    assert u.state == LockState.COASTING
    u = lock.update(3 * S, step(tr, 3.0, [[100, 0, 110, 10], [300, 0, 310, 10],
                                          [400, 0, 410, 10]], np.vstack([E2, E3, E1]),
                                [0.5, 0.99, 0.3]))
    assert (u.state, u.track_id, u.detection, u.frames_tracked) == (
        LockState.REACQUIRED, 4, 2, 2)


def test_lock_never_takes_an_object_seen_together_with_the_target() -> None:
    tr = tracker(confirm_hits=1, max_coast=0, reid_min_cosine=2.0)
    lock = Lock(LockParams(lost_after_s=10.0, reacquire_min_cosine=0.5))
    # B looks exactly like A (a twin) and is visible together with A
    lock.update(0, step(tr, 0.0, [[0, 0, 10, 10], [100, 0, 110, 10]], np.vstack([E1, E1]),
                        [0.9, 0.5]))
    u = lock.update(S, step(tr, 1.0, [[100, 0, 110, 10]], E1, [0.95]))
    assert (u.state, u.track_id) == (LockState.COASTING, 1)


def test_lock_to_a_given_track_and_min_score() -> None:
    tr = tracker(confirm_hits=1, max_coast=3)
    f = two_objects(tr, 0.0, True, 0.9, 0.5)
    u = Lock(LockParams(), track_id=2).update(0, f)  # B, although A scores higher
    assert (u.state, u.track_id, u.detection) == (LockState.TRACKING, 2, 1)
    u = Lock(LockParams(), track_id=7).update(0, f)
    assert u.state == LockState.LOST and "track 7" in u.message
    lock = Lock(LockParams(min_score=0.95))
    assert lock.update(0, f).state == LockState.ACQUIRING
    assert lock.update(S // 10, None).state == LockState.ACQUIRING  # no result this frame
    u = lock.update(S // 5, two_objects(tr, 0.2, True, 0.9, 0.97))
    assert (u.state, u.track_id) == (LockState.TRACKING, 2)


def test_lock_states_match_the_message_constants() -> None:
    from objembed_msgs.msg import LockStatus

    for state in LockState:
        assert getattr(LockStatus, state.name) == state.value

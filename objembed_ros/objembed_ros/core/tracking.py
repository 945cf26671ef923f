"""Tracks of grounded objects across frames, and lock-on to one of them (numpy + scipy only).

Why: every frame is ranked afresh, so the best box of "the red handle" can jump between two
similar handles and nothing says "this is the same object as before". Here each standing
query of each camera gets its own multi-object tracker; a lock follows one of its tracks.

Association (per frame, per (camera, query)): every live track predicts its box with a
constant-velocity model of its centre (pixels per second, from header stamps, so dropped
frames do not break it); pairs are scored by

    affinity = iou_weight * IoU(predicted box, detection) + (1 - iou_weight) * cosine

with cosine the cosine similarity of the track's appearance (an exponential moving average
of its unit ObjEmbed object embeddings) and the detection's object embedding. A pair is
allowed when cosine >= min_cosine and either IoU >= min_iou (motion agrees) or the track is
coasting and cosine >= reid_min_cosine (re-identification after an occlusion, where the
predicted box may be off). scipy's linear_sum_assignment maximises the total affinity of
allowed pairs, first for confirmed and coasting tracks, then for tentative tracks with the
detections left (so a new, unproven track never takes an established track's object).

Track states: TENTATIVE at birth -> CONFIRMED after confirm_hits matched frames (a
tentative track that misses one frame is deleted) -> COASTING while unmatched, deleted after
more than max_coast consecutive unmatched frames. Track ids come from one counter per
`Tracking` (per node run): unique across cameras and queries and never reused. Only
confirmed tracks give their id to the published objects (GroundedObject.track_id).

Lock-on (`Lock`): follows one track of one (camera, query) and reports LockState per frame;
see `Lock` for the rules. States and their values match objembed_msgs/LockStatus.msg.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np
from scipy.optimize import linear_sum_assignment

from objembed_ros.core.boxes import box_iou
from objembed_ros.core.results import GroundingResult

_INFEASIBLE = 1e6  # cost of a pair the gates forbid (finite: the solver needs a full matching)


class TrackState(IntEnum):
    TENTATIVE = 0  # born, fewer than confirm_hits matched frames
    CONFIRMED = 1  # matched in this frame (and proven)
    COASTING = 2  # confirmed, unmatched in this frame; box predicted by the motion model


class LockState(IntEnum):
    """Values equal the constants of objembed_msgs/LockStatus.msg."""

    ACQUIRING = 0
    TRACKING = 1
    COASTING = 2
    REACQUIRED = 3
    LOST = 4


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class TrackerParams:
    """Association and track-life parameters (the node's track_* parameters)."""

    # Matched frames before a track is confirmed and its id is published (1: at birth).
    confirm_hits: int = 3
    # Consecutive unmatched frames a confirmed track coasts before it is deleted.
    max_coast: int = 15
    # Motion gate: least IoU of the predicted box with a detection.
    min_iou: float = 0.3
    # Appearance veto: pairs with a lower embedding cosine never match.
    min_cosine: float = 0.3
    # A coasting track may match a detection it does not overlap when the cosine is at least
    # this (re-identification after occlusion). > 1 disables it.
    reid_min_cosine: float = 0.8
    # Weight of IoU against cosine in the affinity, in [0, 1].
    iou_weight: float = 0.5
    # Weight of the old appearance in the moving average of a track's embedding, in [0, 1).
    embedding_momentum: float = 0.9
    # Weight of the newest velocity measurement in the moving average, in (0, 1].
    velocity_smoothing: float = 0.3
    # Detections scoring below this do not start tracks (they may still continue one).
    birth_min_score: float = 0.0
    # A detection overlapping an already matched (or newly born) one by more than this IoU
    # does not start a track: it is a duplicate box of the same object.
    birth_max_iou: float = 0.5

    def __post_init__(self) -> None:
        _check(self.confirm_hits >= 1, f"confirm_hits must be >= 1, got {self.confirm_hits}")
        _check(self.max_coast >= 0, f"max_coast must be >= 0, got {self.max_coast}")
        _check(0.0 <= self.min_iou <= 1.0, f"min_iou must be in [0, 1], got {self.min_iou}")
        _check(-1.0 <= self.min_cosine <= 1.0,
               f"min_cosine must be in [-1, 1], got {self.min_cosine}")
        _check(math.isfinite(self.reid_min_cosine),
               f"reid_min_cosine must be finite, got {self.reid_min_cosine}")
        _check(0.0 <= self.iou_weight <= 1.0,
               f"iou_weight must be in [0, 1], got {self.iou_weight}")
        _check(0.0 <= self.embedding_momentum < 1.0,
               f"embedding_momentum must be in [0, 1), got {self.embedding_momentum}")
        _check(0.0 < self.velocity_smoothing <= 1.0,
               f"velocity_smoothing must be in (0, 1], got {self.velocity_smoothing}")
        _check(0.0 <= self.birth_min_score <= 1.0,
               f"birth_min_score must be in [0, 1], got {self.birth_min_score}")
        _check(0.0 <= self.birth_max_iou <= 1.0,
               f"birth_max_iou must be in [0, 1], got {self.birth_max_iou}")


def predict_boxes(boxes: np.ndarray, velocity: np.ndarray, dt_s: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy moved by (N, 2) centre velocity (px/s) for (N,) seconds (negative -> 0)."""
    shift = velocity * np.maximum(dt_s, 0.0)[:, None]
    return boxes + np.concatenate([shift, shift], axis=1)


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2.0


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norm, 1e-12)[:, None]


@dataclass(frozen=True)
class TrackFrame:
    """The live tracks of one (camera, query) after one frame (arrays, one row per track).

    boxes: the matched detection's box, or the predicted box when unmatched; detections:
    index of the matched detection in the input (the GroundingResult's objects), -1 when
    unmatched; scores: the matched detection's score (NaN when unmatched); embeddings: unit
    appearance (moving average); velocities: centre px/s. detection_track_ids: per input
    detection, the id of its track when that track is confirmed, else -1.
    """

    stamp_ns: int
    track_ids: np.ndarray  # (T,) int64
    states: np.ndarray  # (T,) TrackState values
    boxes: np.ndarray  # (T, 4) float64
    velocities: np.ndarray  # (T, 2) float64
    detections: np.ndarray  # (T,) int64
    scores: np.ndarray  # (T,) float64
    embeddings: np.ndarray  # (T, D) float32
    born_ns: np.ndarray  # (T,) int64
    last_seen_ns: np.ndarray  # (T,) int64
    detection_track_ids: np.ndarray  # (M,) int64
    deleted: tuple[int, ...] = ()  # ids deleted in this frame

    def index_of(self, track_id: int) -> int:
        """Row of the track, -1 when it is not live."""
        rows = np.flatnonzero(self.track_ids == track_id)
        return int(rows[0]) if rows.size else -1


class QueryTracker:
    """Tracks of one (camera, query); see the module docstring. Not thread-safe: one caller
    (the node's worker) updates it."""

    def __init__(self, params: TrackerParams, new_id: Callable[[], int]) -> None:
        self.params = params
        self._new_id = new_id
        self.ids = np.zeros(0, np.int64)
        self.states = np.zeros(0, np.int64)
        self.boxes = np.zeros((0, 4))  # last matched box
        self.velocities = np.zeros((0, 2))
        self.embeddings: np.ndarray | None = None  # (T, D) unit float32, D set by first frame
        self.hits = np.zeros(0, np.int64)
        self.misses = np.zeros(0, np.int64)
        self.born_ns = np.zeros(0, np.int64)
        self.last_seen_ns = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.ids.size)

    def update(self, stamp_ns: int, boxes: np.ndarray, embeddings: np.ndarray,
               scores: np.ndarray, index: np.ndarray | None = None) -> TrackFrame:
        """Associate one frame's detections ((M, 4) xyxy, (M, D) unit embeddings, (M,)
        scores), update, delete and start tracks. index: (M,) what TrackFrame.detections
        reports for each detection (default: its row)."""
        p = self.params
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        m = boxes.shape[0]
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != m:
            raise ValueError(f"embeddings must be ({m}, D), got {embeddings.shape}")
        if self.embeddings is None or (len(self) == 0 and m):
            self.embeddings = np.zeros((0, embeddings.shape[1]), np.float32)
        if m and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding size {embeddings.shape[1]} != the tracks' "
                             f"{self.embeddings.shape[1]}")
        t = len(self)
        dt = (stamp_ns - self.last_seen_ns) / 1e9
        predicted = predict_boxes(self.boxes, self.velocities, dt)
        matched_det = np.full(t, -1, np.int64)
        if t and m:
            iou = box_iou(predicted, boxes)
            cos = self.embeddings @ embeddings.T
            coasting = (self.states == TrackState.COASTING)[:, None]
            allowed = (cos >= p.min_cosine) & (
                (iou >= p.min_iou) | (coasting & (cos >= p.reid_min_cosine)))
            cost = np.where(allowed, 1.0 - (p.iou_weight * iou + (1 - p.iou_weight) * cos),
                            _INFEASIBLE)
            tentative = self.states == TrackState.TENTATIVE
            free = np.ones(m, bool)
            for rows in (np.flatnonzero(~tentative), np.flatnonzero(tentative)):
                cols = np.flatnonzero(free)
                if rows.size and cols.size and allowed[np.ix_(rows, cols)].any():
                    r, c = linear_sum_assignment(cost[np.ix_(rows, cols)])
                    ok = allowed[rows[r], cols[c]]
                    matched_det[rows[r[ok]]] = cols[c[ok]]
                    free[cols[c[ok]]] = False
        self._apply_matches(stamp_ns, matched_det, boxes, embeddings, dt)
        dead = self._drop_unmatched(matched_det)
        deleted = tuple(int(i) for i in self.ids[dead])
        if deleted:
            keep = ~dead
            self._keep(keep)
            matched_det = matched_det[keep]
            predicted = predicted[keep]
        live = np.where((matched_det >= 0)[:, None], self.boxes, predicted)
        born_det = self._births(stamp_ns, matched_det, boxes, embeddings, scores, live)
        detections = np.concatenate([matched_det, born_det])
        predicted = np.concatenate([predicted, boxes[born_det]])
        seen = detections >= 0
        out_boxes = np.where(seen[:, None], self.boxes, predicted)
        out_scores = np.full(len(self), np.nan)
        out_scores[seen] = scores[detections[seen]]
        det_ids = np.full(m, -1, np.int64)
        confirmed = seen & (self.states == TrackState.CONFIRMED)
        det_ids[detections[confirmed]] = self.ids[confirmed]
        if index is not None:
            detections = np.where(seen, np.asarray(index)[np.maximum(detections, 0)], -1)
        return TrackFrame(
            stamp_ns=int(stamp_ns), track_ids=self.ids.copy(), states=self.states.copy(),
            boxes=out_boxes, velocities=self.velocities.copy(), detections=detections,
            scores=out_scores, embeddings=self.embeddings.copy(), born_ns=self.born_ns.copy(),
            last_seen_ns=self.last_seen_ns.copy(), detection_track_ids=det_ids,
            deleted=deleted)

    def _apply_matches(self, stamp_ns: int, matched_det: np.ndarray, boxes: np.ndarray,
                       embeddings: np.ndarray, dt: np.ndarray) -> None:
        p = self.params
        rows = np.flatnonzero(matched_det >= 0)
        if not rows.size:
            return
        det = matched_det[rows]
        gap = dt[rows]
        moved = gap > 0
        measured = (_centres(boxes[det]) - _centres(self.boxes[rows])) / np.where(
            moved, gap, 1.0)[:, None]
        smoothed = ((1 - p.velocity_smoothing) * self.velocities[rows]
                    + p.velocity_smoothing * measured)  # from 0 at birth
        self.velocities[rows] = np.where(moved[:, None], smoothed, self.velocities[rows])
        self.boxes[rows] = boxes[det]
        self.embeddings[rows] = _unit_rows(p.embedding_momentum * self.embeddings[rows]
                                           + (1 - p.embedding_momentum) * embeddings[det])
        self.hits[rows] += 1
        self.misses[rows] = 0
        self.last_seen_ns[rows] = stamp_ns
        self.states[rows] = np.where(self.hits[rows] >= p.confirm_hits, TrackState.CONFIRMED,
                                     TrackState.TENTATIVE)

    def _drop_unmatched(self, matched_det: np.ndarray) -> np.ndarray:
        """Unmatched: tentative tracks die, confirmed ones coast until max_coast; returns
        the mask of tracks to delete."""
        unmatched = matched_det < 0
        tentative = unmatched & (self.states == TrackState.TENTATIVE)
        coasting = unmatched & ~tentative
        self.misses[coasting] += 1
        self.states[coasting] = TrackState.COASTING
        return tentative | (coasting & (self.misses > self.params.max_coast))

    def _keep(self, keep: np.ndarray) -> None:
        for name in ("ids", "states", "boxes", "velocities", "embeddings", "hits", "misses",
                     "born_ns", "last_seen_ns"):
            setattr(self, name, getattr(self, name)[keep])

    def _births(self, stamp_ns: int, matched_det: np.ndarray, boxes: np.ndarray,
                embeddings: np.ndarray, scores: np.ndarray,
                live_boxes: np.ndarray) -> np.ndarray:
        """Start tracks from unmatched detections, best score first, skipping duplicates:
        a detection overlapping a live track (its matched or predicted box) or a detection
        born before it by IoU > birth_max_iou is another box of an object already tracked."""
        p = self.params
        free = np.ones(boxes.shape[0], bool)
        free[matched_det[matched_det >= 0]] = False
        cand = np.flatnonzero(free & (scores >= p.birth_min_score))
        if not cand.size:
            return np.zeros(0, np.int64)
        cand = cand[np.argsort(-scores[cand], kind="stable")]
        k = cand.size
        overlap = box_iou(boxes[cand], np.concatenate([boxes[cand], live_boxes]))
        free_of_live = overlap[:, k:].max(axis=1, initial=0.0) <= p.birth_max_iou
        born: list[int] = []
        for j in np.flatnonzero(free_of_live):
            if not born or overlap[j, born].max() <= p.birth_max_iou:
                born.append(int(j))
        born = [int(cand[j]) for j in born]
        n = len(born)
        if not n:
            return np.zeros(0, np.int64)
        idx = np.asarray(born, np.int64)
        state = TrackState.CONFIRMED if p.confirm_hits <= 1 else TrackState.TENTATIVE
        self.ids = np.concatenate([self.ids, [self._new_id() for _ in range(n)]]).astype(np.int64)
        self.states = np.concatenate([self.states, np.full(n, state, np.int64)])
        self.boxes = np.concatenate([self.boxes, boxes[idx]])
        self.velocities = np.concatenate([self.velocities, np.zeros((n, 2))])
        self.embeddings = np.concatenate([self.embeddings, embeddings[idx]])
        self.hits = np.concatenate([self.hits, np.ones(n, np.int64)])
        self.misses = np.concatenate([self.misses, np.zeros(n, np.int64)])
        self.born_ns = np.concatenate([self.born_ns, np.full(n, stamp_ns, np.int64)])
        self.last_seen_ns = np.concatenate([self.last_seen_ns, np.full(n, stamp_ns, np.int64)])
        return idx


def with_track_ids(result: GroundingResult, track_ids: Sequence[int]) -> GroundingResult:
    """The result with GroundedBox.track_id set from `track_ids` (one per object, -1 = none).

    Objects without a track keep their instance, so an untracked frame costs nothing.
    """
    if len(track_ids) != len(result.objects):
        raise ValueError(f"{len(track_ids)} track ids for {len(result.objects)} objects")
    if not any(int(t) >= 0 for t in track_ids):
        return result
    objects = [replace(o, track_id=int(t)) if int(t) >= 0 else o
               for o, t in zip(result.objects, track_ids, strict=True)]
    return replace(result, objects=objects)


@dataclass(frozen=True)
class TrackedFrame:
    """Tracking output of one encoded frame: the results with track ids, and per query the
    live tracks (for locks)."""

    camera: str
    stamp_ns: int
    results: list[GroundingResult]
    tracks: dict[str, TrackFrame] = field(default_factory=dict)


class Tracking:
    """One QueryTracker per (camera, query) and the run's track-id counter.

    update() is called once per encoded frame with the standing queries' results. A tracker
    lives while its query is grounded on its camera's frames: a query missing from a frame's
    results drops its tracker (a later re-add starts fresh tracks with new ids).
    """

    def __init__(self, params: TrackerParams | None = None) -> None:
        self.params = params or TrackerParams()
        self._counter = itertools.count(1)
        self._trackers: dict[tuple[str, str], QueryTracker] = {}

    def _new_id(self) -> int:
        return next(self._counter)

    def update(self, camera: str, stamp_ns: int, results: Sequence[GroundingResult],
               object_embeddings: np.ndarray) -> TrackedFrame:
        """Track every result's objects. object_embeddings: the frame's (K, D) embeddings,
        indexed by GroundedBox.proposal_index (objects with index -1 are not tracked)."""
        out: list[GroundingResult] = []
        tracks: dict[str, TrackFrame] = {}
        queries = set()
        emb_all = np.asarray(object_embeddings)
        for result in results:
            key = (camera, result.query)
            queries.add(result.query)
            tracker = self._trackers.get(key)
            if tracker is None:
                tracker = self._trackers[key] = QueryTracker(self.params, self._new_id)
            objs = result.objects
            index = np.fromiter((o.proposal_index for o in objs), np.int64, len(objs))
            usable = np.flatnonzero(index >= 0)
            sel = [objs[i] for i in usable]
            boxes = np.array([o.box for o in sel], np.float64).reshape(-1, 4)
            scores = np.fromiter((o.score for o in sel), np.float64, len(sel))
            emb = _unit_rows(emb_all[index[usable]]) if sel else np.zeros(
                (0, emb_all.shape[-1] if emb_all.ndim == 2 else 0), np.float32)
            # the lock wants indices into result.objects, not into the usable subset
            frame = tracker.update(stamp_ns, boxes, emb, scores, index=usable)
            ids = np.full(len(objs), -1, np.int64)
            ids[usable] = frame.detection_track_ids
            tracks[result.query] = frame
            out.append(with_track_ids(result, ids.tolist()))
        for key in [k for k in self._trackers if k[0] == camera and k[1] not in queries]:
            del self._trackers[key]
        return TrackedFrame(camera, int(stamp_ns), out, tracks)

    def reset(self, params: TrackerParams | None = None) -> None:
        """Drop every track, optionally switching parameters (a parameter change); ids keep
        counting, never reused within the run."""
        if params is not None:
            self.params = params
        self._trackers.clear()


@dataclass(frozen=True)
class LockParams:
    """Lock-on rules (the LockOn goal's min_score / lost_after, the node's defaults)."""

    # Objects scoring below this are not (re)acquired, in [0, 1].
    min_score: float = 0.0
    # Seconds (header stamps) the target may stay unseen before the lock is LOST, > 0.
    lost_after_s: float = 2.0
    # Least cosine of a new track's appearance with the target's to take it over after the
    # target's own track was lost from view (re-acquisition by embedding).
    reacquire_min_cosine: float = 0.8

    def __post_init__(self) -> None:
        _check(0.0 <= self.min_score <= 1.0, f"min_score must be in [0, 1], got {self.min_score}")
        _check(math.isfinite(self.lost_after_s) and self.lost_after_s > 0,
               f"lost_after must be a positive number of seconds, got {self.lost_after_s}")
        _check(math.isfinite(self.reacquire_min_cosine),
               f"reacquire_min_cosine must be finite, got {self.reacquire_min_cosine}")


@dataclass(frozen=True)
class LockUpdate:
    """What a lock reports for one frame (LockStatus without the message plumbing)."""

    state: LockState
    track_id: int  # -1 while ACQUIRING
    frames_tracked: int
    frames_since_seen: int
    box: tuple[float, float, float, float] | None  # None while ACQUIRING
    detection: int  # index in the query's result objects when matched, else -1
    message: str = ""


class Lock:
    """Follow one track of one (camera, query).

    - ACQUIRING: with track_id -1, waits for the best-scoring CONFIRMED track matched in a
      frame with score >= min_score (ties: lowest id); with a given id, binds to that track
      as soon as it is live (min_score does not apply to an explicit choice); an id that is
      not a live track of the query ends the lock as LOST with a message.
    - TRACKING: the bound track was matched in this frame. The lock follows the track, not
      the top score: a candidate that briefly scores higher does not take over.
    - COASTING: unmatched; the box is the last one moved by the motion model.
    - REACQUIRED: matched again after COASTING: either the bound track itself (the tracker
      associated it by motion or by embedding), or, when it is not matched, a CONFIRMED
      track born after the target was last seen, matched now, with score >= min_score and
      appearance cosine >= reacquire_min_cosine with the target (best cosine wins; the
      lock then follows that track id). A track born while the target was still visible
      is another object and never taken over.
    - LOST: unseen for more than lost_after_s (stamp time); final.
    """

    def __init__(self, params: LockParams, track_id: int = -1) -> None:
        self.params = params
        self.requested_id = int(track_id)
        self.track_id = -1
        self.state = LockState.ACQUIRING
        self.frames_tracked = 0
        self.frames_since_seen = 0
        self._embedding: np.ndarray | None = None
        # motion: box(t) = anchor box + velocity * (t - anchor time)
        self._anchor = np.zeros(4)
        self._anchor_ns = 0
        self._velocity = np.zeros(2)
        self._box = np.zeros(4)
        self._last_seen_ns = 0
        self._last = LockUpdate(LockState.ACQUIRING, -1, 0, 0, None, -1)

    def update(self, stamp_ns: int, tracks: TrackFrame | None) -> LockUpdate:
        """Advance by one frame of the lock's camera; tracks None = the query had no result."""
        if self.state == LockState.LOST:
            return self._last
        if self.state == LockState.ACQUIRING:
            self._last = self._acquire(tracks)
        else:
            self._last = self._follow(int(stamp_ns), tracks)
        return self._last

    def _bind(self, tracks: TrackFrame, row: int) -> None:
        self.track_id = int(tracks.track_ids[row])
        self._embedding = tracks.embeddings[row]
        self._box = self._anchor = tracks.boxes[row]
        self._anchor_ns = tracks.stamp_ns
        self._velocity = tracks.velocities[row]
        self._last_seen_ns = int(tracks.last_seen_ns[row])

    def _report(self, detection: int, message: str = "") -> LockUpdate:
        box = None if self.track_id < 0 else tuple(float(v) for v in self._box)
        return LockUpdate(self.state, self.track_id, self.frames_tracked,
                          self.frames_since_seen, box, detection, message)  # type: ignore[arg-type]

    def _acquire(self, tracks: TrackFrame | None) -> LockUpdate:
        if self.requested_id >= 0:
            row = tracks.index_of(self.requested_id) if tracks is not None else -1
            if row < 0:
                return self._lose(f"track {self.requested_id} is not a live track of this "
                                  "query on this camera")
        else:
            if tracks is None:
                return self._last
            ok = ((tracks.detections >= 0) & (tracks.states == TrackState.CONFIRMED)
                  & (tracks.scores >= self.params.min_score))
            if not ok.any():
                return self._last
            rows = np.flatnonzero(ok)
            row = int(rows[np.lexsort((tracks.track_ids[rows], -tracks.scores[rows]))[0]])
        self._bind(tracks, row)
        det = int(tracks.detections[row])
        if det >= 0:
            self.state = LockState.TRACKING
            self.frames_tracked = 1
        else:  # an explicitly chosen track that is coasting right now
            self.state = LockState.COASTING
            self.frames_since_seen = 1
        return self._report(det)

    def _follow(self, stamp_ns: int, tracks: TrackFrame | None) -> LockUpdate:
        if tracks is not None:
            row = tracks.index_of(self.track_id)
            if row >= 0 and tracks.detections[row] >= 0:
                return self._seen(tracks, row)
            row = self._reacquire(tracks)
            if row >= 0:
                return self._seen(tracks, row)
        self.frames_since_seen += 1
        unseen_s = (stamp_ns - self._last_seen_ns) / 1e9
        if unseen_s > self.params.lost_after_s:
            return self._lose(f"target unseen for {unseen_s:.3f} s > lost_after "
                              f"{self.params.lost_after_s:g} s")
        self.state = LockState.COASTING
        self._box = predict_boxes(self._anchor[None], self._velocity[None],
                                  np.array([(stamp_ns - self._anchor_ns) / 1e9]))[0]
        return self._report(-1)

    def _reacquire(self, tracks: TrackFrame) -> int:
        """Row of the track that takes over the target by appearance, -1 when none."""
        ok = ((tracks.detections >= 0) & (tracks.states == TrackState.CONFIRMED)
              & (tracks.born_ns > self._last_seen_ns) & (tracks.scores >= self.params.min_score))
        if self._embedding is None or not ok.any():
            return -1
        cos = tracks.embeddings @ self._embedding
        ok &= cos >= self.params.reacquire_min_cosine
        if not ok.any():
            return -1
        rows = np.flatnonzero(ok)
        return int(rows[np.argmax(cos[rows])])

    def _seen(self, tracks: TrackFrame, row: int) -> LockUpdate:
        switched = int(tracks.track_ids[row]) != self.track_id
        self.state = (LockState.REACQUIRED if self.state == LockState.COASTING or switched
                      else LockState.TRACKING)
        self._bind(tracks, row)
        self.frames_tracked += 1
        self.frames_since_seen = 0
        return self._report(int(tracks.detections[row]))

    def _lose(self, message: str) -> LockUpdate:
        self.state = LockState.LOST
        return self._report(-1, message)

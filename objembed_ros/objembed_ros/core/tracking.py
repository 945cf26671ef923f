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

Cost: Tracking.update updates the queries of a frame together. The frame's embeddings are
made unit once; the small array steps of all its queries (IoU, gates, costs, the TrackFrame
arrays) are one numpy call each; per-track bookkeeping is plain Python numbers. Each query
keeps its own cosine product and moving average, so the floats, and with them every id,
state and association, are those of updating the queries one by one
(test/test_core_tracking_equivalence.py checks against the record of the earlier tracker).

Lock-on (`Lock`): follows one track of one (camera, query) and reports LockState per frame;
see `Lock` for the rules. States and their values match objembed_msgs/LockStatus.msg.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

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


def moved_box(box: Sequence[float], velocity: Sequence[float], dt_s: float) -> list[float]:
    """xyxy moved by its centre velocity (px/s) for dt_s seconds (negative -> 0): where a
    track or a lock expects its object after dt_s unseen."""
    dt = max(dt_s, 0.0)
    sx, sy = velocity[0] * dt, velocity[1] * dt
    x1, y1, x2, y2 = box
    return [x1 + sx, y1 + sy, x2 + sx, y2 + sy]


def _normalise_rows(x: np.ndarray) -> None:
    """Divide each row of float32 x by its norm, in place (the same floats as x / norm)."""
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.maximum(norm, 1e-12)[:, None]


@dataclass(frozen=True)
class TrackFrame:
    """The live tracks of one (camera, query) after one frame (arrays, one row per track).

    boxes: the matched detection's box, or the predicted box when unmatched; detections:
    index of the matched detection in the input (the GroundingResult's objects), -1 when
    unmatched; scores: the matched detection's score (NaN when unmatched); embeddings: unit
    appearance (moving average); velocities: centre px/s. detection_track_ids: per input
    detection, the id of its track when that track is confirmed, else -1. The arrays are
    snapshots: the tracker never writes into them after the frame.
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
        ids = self.track_ids.tolist()
        return ids.index(track_id) if track_id in ids else -1


_TENTATIVE, _CONFIRMED, _COASTING = (int(s) for s in TrackState)


@dataclass(slots=True)
class _Track:
    """One live track's scalars (its appearance is a row of QueryTracker.embeddings).

    Python numbers, not numpy rows: a query has a handful of tracks, and numpy's per-call
    overhead on such tiny arrays was most of the tracker's cost. The arithmetic is the same
    IEEE double arithmetic numpy does elementwise, operation for operation.
    """

    id: int
    state: int  # TrackState value
    box: list[float]  # last matched box, xyxy
    velocity: tuple[float, float]  # centre px/s
    hits: int
    misses: int
    born_ns: int
    last_seen_ns: int


@dataclass(frozen=True)
class _Detections:
    """One query's detections in a frame: boxes and scores as Python numbers, embeddings
    as rows of the unit (K, D) array the frame's queries share."""

    boxes: list[list[float]]  # (M) xyxy
    scores: list[float]
    rows: list[int]  # each detection's row in the shared embeddings
    index: list[int] | None  # what TrackFrame.detections reports per detection; None: j


class QueryTracker:
    """Tracks of one (camera, query); see the module docstring. Not thread-safe: one caller
    (the node's worker) updates it."""

    def __init__(self, params: TrackerParams, new_id: Callable[[], int]) -> None:
        self.params = params
        self._new_id = new_id
        self._tracks: list[_Track] = []  # birth order
        # (T, D) unit float32, a row per track, D set by the first frame; replaced, never
        # written into, so a TrackFrame holds it without a copy
        self.embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._tracks)

    def update(self, stamp_ns: int, boxes: np.ndarray, embeddings: np.ndarray,
               scores: np.ndarray, index: np.ndarray | None = None) -> TrackFrame:
        """Associate one frame's detections ((M, 4) xyxy, (M, D) unit embeddings, (M,)
        scores), update, delete and start tracks. index: (M,) what TrackFrame.detections
        reports for each detection (default: its row)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        m = boxes.shape[0]
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != m:
            raise ValueError(f"embeddings must be ({m}, D), got {embeddings.shape}")
        detections = _Detections(boxes.tolist(), scores.tolist(), list(range(m)),
                                 None if index is None else np.asarray(index).tolist())
        frames, _ = _update_trackers(stamp_ns, [self], [detections], embeddings,
                                     embeddings.shape[1])
        return frames[0]


def _update_trackers(stamp_ns: int, trackers: Sequence[QueryTracker],
                     detections: Sequence[_Detections], embeddings: np.ndarray,
                     width: int) -> tuple[list[TrackFrame], list[list[int]]]:
    """One frame for several trackers (the queries of one camera frame, sharing parameters
    and the frame's (K, D) unit embeddings; width D): QueryTracker.update for each, in
    order, with the small array work of all of them done in one numpy call per step.
    Returns the TrackFrames and, per tracker, TrackFrame.detection_track_ids as a list."""
    p = trackers[0].params
    if any(tr.params is not p and tr.params != p for tr in trackers):
        raise ValueError("trackers updated together must share their TrackerParams")
    n = len(trackers)
    ts = [len(tr._tracks) for tr in trackers]
    ms = [len(d.boxes) for d in detections]
    for tr, m in zip(trackers, ms, strict=True):
        if tr.embeddings is None or (not tr._tracks and m):
            tr.embeddings = np.zeros((0, width), np.float32)
        if m and width != tr.embeddings.shape[1]:
            raise ValueError(f"embedding size {width} != the tracks' {tr.embeddings.shape[1]}")
    predicted = [[_predicted(t, stamp_ns) for t in tr._tracks] for tr in trackers]
    r_max = max(t + m for t, m in zip(ts, ms, strict=True))
    m_max = max(ms)
    iou = fits = None
    if m_max:
        # per tracker: IoU of [predicted boxes; detections] with the detections, zero-padded
        pad = [0.0] * 4
        iou = box_iou(
            np.array([pr + d.boxes + [pad] * (r_max - len(pr) - len(d.boxes))
                      for pr, d in zip(predicted, detections, strict=True)], np.float64),
            np.array([d.boxes + [pad] * (m_max - len(d.boxes)) for d in detections],
                     np.float64))
        fits = iou <= p.birth_max_iou
    allowed, cost = _association_scores(p, trackers, detections, embeddings, iou, ts, ms)
    stamp = int(stamp_ns)
    matches = [_assign(tr._tracks, allowed[q, :ts[q], :ms[q]], cost[q, :ts[q], :ms[q]])
               if ts[q] and ms[q] else [-1] * ts[q] for q, tr in enumerate(trackers)]
    dead = [_update_tracks(p, tr._tracks, matched, d.boxes, stamp_ns)
            for tr, matched, d in zip(trackers, matches, detections, strict=True)]
    kept = [[i for i, t in enumerate(tr._tracks) if t.id not in gone] if gone
            else list(range(len(tr._tracks))) for tr, gone in zip(trackers, dead, strict=True)]
    free_of_live: list[list[bool]] = [[] for _ in trackers]
    if m_max:  # a detection overlapping a live track's (matched or predicted) box: no birth
        live = np.zeros((n, r_max), bool)
        for q, (rows, matched) in enumerate(zip(kept, matches, strict=True)):
            for i in rows:
                live[q, ts[q] + matched[i] if matched[i] >= 0 else i] = True
        free_of_live = (fits | ~live[:, :, None]).all(axis=1).tolist()
    for tr, rows, gone in zip(trackers, kept, dead, strict=True):
        if gone:
            tr._tracks = [tr._tracks[i] for i in rows]
    born = [_births(p, tr, matched, d, fits[q, ts[q]:] if m_max else None, free_of_live[q],
                    stamp) for q, (tr, matched, d)
            in enumerate(zip(trackers, matches, detections, strict=True))]
    _move_embeddings(p, trackers, matches, kept, born, detections, embeddings)
    return _track_frames(stamp, trackers, matches, kept, born, dead, predicted, detections)


def _predicted(track: _Track, stamp_ns: int) -> list[float]:
    """The track's last box moved by its velocity from its last match to stamp_ns."""
    return moved_box(track.box, track.velocity, (stamp_ns - track.last_seen_ns) / 1e9)


def _association_scores(p: TrackerParams, trackers: Sequence[QueryTracker],
                        detections: Sequence[_Detections], embeddings: np.ndarray,
                        iou: np.ndarray | None, ts: list[int],
                        ms: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, M) zero-padded: which track-detection pairs the gates allow, and their cost
    1 - affinity (_INFEASIBLE where not allowed)."""
    n = len(trackers)
    t_max = max(ts)
    if iou is None or not t_max:
        return np.zeros((n, 0, 0), bool), np.zeros((n, 0, 0))
    cos = np.zeros((n, t_max, iou.shape[2]), np.float32)
    for q, (tr, d) in enumerate(zip(trackers, detections, strict=True)):
        if ts[q] and ms[q]:  # each query's own product: the same floats as one by one
            cos[q, :ts[q], :ms[q]] = tr.embeddings @ embeddings[d.rows].T
    iou = iou[:, :t_max]
    motion = iou >= p.min_iou
    coasting = [[t.state == _COASTING for t in tr._tracks] for tr in trackers]
    if any(any(c) for c in coasting):  # re-identification by look after an occlusion
        coasting = np.array([c + [False] * (t_max - len(c)) for c in coasting])
        motion |= coasting[:, :, None] & (cos >= p.reid_min_cosine)
    allowed = (cos >= p.min_cosine) & motion
    cost = np.where(allowed, 1.0 - (p.iou_weight * iou + (1 - p.iou_weight) * cos),
                    _INFEASIBLE)
    return allowed, cost


def _assign(tracks: list[_Track], allowed: np.ndarray, cost: np.ndarray) -> list[int]:
    """Matched detection per track (-1 none): confirmed and coasting tracks first, then
    tentative ones with the detections left, each an optimal assignment of allowed pairs."""
    t, m = allowed.shape
    matched = [-1] * t
    tentative = [i for i, tr in enumerate(tracks) if tr.state == _TENTATIVE]
    proven = [i for i, tr in enumerate(tracks) if tr.state != _TENTATIVE]
    free = list(range(m))
    for rows in (proven, tentative):
        if not rows or not free:
            continue
        if len(free) == m:
            ok, sub = (allowed, cost) if len(rows) == t else (allowed[rows], cost[rows])
        else:
            ok, sub = allowed[rows][:, free], cost[rows][:, free]
        if not ok.any():
            continue
        cols = free
        r, c = linear_sum_assignment(sub)
        for k, kc, good in zip(r.tolist(), c.tolist(), ok[r, c].tolist(), strict=True):
            if good:
                matched[rows[k]] = cols[kc]
        taken = set(matched)
        free = [j for j in cols if j not in taken]
    return matched


def _update_tracks(p: TrackerParams, tracks: list[_Track], matched: list[int],
                   boxes: list[list[float]], stamp_ns: int) -> tuple[int, ...]:
    """Matched tracks take their detection's box and move their velocity towards the one
    measured from the last matched box over the gap (from 0 at birth); unmatched ones:
    tentative tracks die, confirmed ones coast until max_coast. Returns the ids to delete."""
    s = p.velocity_smoothing
    dead = []
    for t, d in zip(tracks, matched, strict=True):
        if d >= 0:
            new = boxes[d]
            gap = (stamp_ns - t.last_seen_ns) / 1e9
            if gap > 0:
                old = t.box
                mx = ((new[0] + new[2]) / 2.0 - (old[0] + old[2]) / 2.0) / gap
                my = ((new[1] + new[3]) / 2.0 - (old[1] + old[3]) / 2.0) / gap
                vx, vy = t.velocity
                t.velocity = ((1 - s) * vx + s * mx, (1 - s) * vy + s * my)
            t.box = new
            t.hits += 1
            t.misses = 0
            t.last_seen_ns = int(stamp_ns)
            t.state = _CONFIRMED if t.hits >= p.confirm_hits else _TENTATIVE
        elif t.state == _TENTATIVE:
            dead.append(t.id)
        else:
            t.misses += 1
            t.state = _COASTING
            if t.misses > p.max_coast:
                dead.append(t.id)
    return tuple(dead)


def _births(p: TrackerParams, tracker: QueryTracker, matched: list[int], d: _Detections,
            fits: np.ndarray | None, free_of_live: list[bool], stamp_ns: int) -> list[int]:
    """Start tracks from unmatched detections, best score first, skipping duplicates: a
    detection overlapping a live track (free_of_live) or a detection born before it by
    IoU > birth_max_iou (fits: (M, M) IoU <= birth_max_iou) is another box of an object
    already tracked. Returns the detections that started tracks."""
    taken = set(matched)
    scores = d.scores
    cand = [j for j, s in enumerate(scores)
            if s >= p.birth_min_score and j not in taken and free_of_live[j]]
    if not cand:
        return cand
    cand.sort(key=lambda j: -scores[j])  # stable: ties keep detection order
    born: list[int] = []
    for j in cand:
        if not born or fits[j, born].all():
            born.append(j)
    state = _CONFIRMED if p.confirm_hits <= 1 else _TENTATIVE
    tracker._tracks += [_Track(tracker._new_id(), state, d.boxes[j], (0.0, 0.0), 1, 0,
                               stamp_ns, stamp_ns) for j in born]
    return born


def _move_embeddings(p: TrackerParams, trackers: Sequence[QueryTracker],
                     matches: list[list[int]], kept: list[list[int]], born: list[list[int]],
                     detections: Sequence[_Detections], embeddings: np.ndarray) -> None:
    """Each tracker's next (T, D) appearance: its kept rows, the matched ones moved towards
    their detection's embedding, then its born rows. Per tracker (a few rows that stay in
    cache), in place on the new array: the moving average runs over every kept row and the
    unmatched ones (usually none or one) are put back, rather than gathered and scattered."""
    mom = p.embedding_momentum
    for tr, matched, keep, new, d in zip(trackers, matches, kept, born, detections,
                                         strict=True):
        dets = [matched[i] for i in keep]
        changed = any(j >= 0 for j in dets)
        if not (changed or new or len(keep) < len(matched)):
            continue  # all coasting: the same rows (never written into, so shared)
        emb = tr.embeddings[keep] if len(keep) < len(matched) else tr.embeddings.copy()
        if changed:
            emb *= mom  # in place: the same floats as mom * emb
            seen = embeddings[[d.rows[j] if j >= 0 else 0 for j in dets]]
            seen *= 1 - mom
            emb += seen
            _normalise_rows(emb)
            unmatched = [k for k, j in enumerate(dets) if j < 0]
            if unmatched:
                emb[unmatched] = tr.embeddings[[keep[k] for k in unmatched]]
        if new:
            emb = np.concatenate([emb, embeddings[[d.rows[j] for j in new]]])
        tr.embeddings = emb


def _track_frames(stamp_ns: int, trackers: Sequence[QueryTracker], matches: list[list[int]],
                  kept: list[list[int]], born: list[list[int]], dead: list[tuple[int, ...]],
                  predicted: list[list[list[float]]], detections: Sequence[_Detections],
                  ) -> tuple[list[TrackFrame], list[list[int]]]:
    """The trackers' TrackFrames (slices of one array per field) and each one's
    detection_track_ids as a list."""
    ints: list[tuple[int, int, int, int, int]] = []  # id, state, born, last seen, detection
    boxes: list[list[float]] = []
    velocities: list[tuple[float, float]] = []
    scores: list[float] = []
    det_ids: list[list[int]] = []
    nan = math.nan
    for tr, matched, keep, new, pred, d in zip(trackers, matches, kept, born, predicted,
                                               detections, strict=True):
        rows = [matched[i] for i in keep] + new  # each track's detection, -1 unmatched
        boxes += [d.boxes[matched[i]] if matched[i] >= 0 else pred[i] for i in keep]
        boxes += [d.boxes[j] for j in new]
        scores += [d.scores[j] if j >= 0 else nan for j in rows]
        ids = [-1] * len(d.boxes)
        for t, j in zip(tr._tracks, rows, strict=True):
            if j >= 0 and t.state == _CONFIRMED:
                ids[j] = t.id
        det_ids.append(ids)
        index = d.index if d.index is not None and d.boxes else None  # none: all -1
        ints += [(t.id, t.state, t.born_ns, t.last_seen_ns,
                  j if index is None or j < 0 else index[j])
                 for t, j in zip(tr._tracks, rows, strict=True)]
        velocities += [t.velocity for t in tr._tracks]
    int_cols = np.array(ints, np.int64).reshape(-1, 5).T.copy()  # a contiguous row per field
    box_arr = np.array(boxes, np.float64).reshape(-1, 4)
    velocity_arr = np.array(velocities, np.float64).reshape(-1, 2)
    score_arr = np.array(scores, np.float64)
    det_id_arr = np.array([i for ids in det_ids for i in ids], np.int64)
    frames = []
    a = c = 0
    for tr, ids, gone in zip(trackers, det_ids, dead, strict=True):
        b, e = a + len(tr._tracks), c + len(ids)
        frames.append(TrackFrame(
            stamp_ns=stamp_ns, track_ids=int_cols[0, a:b], states=int_cols[1, a:b],
            boxes=box_arr[a:b], velocities=velocity_arr[a:b], detections=int_cols[4, a:b],
            scores=score_arr[a:b], embeddings=tr.embeddings, born_ns=int_cols[2, a:b],
            last_seen_ns=int_cols[3, a:b], detection_track_ids=det_id_arr[c:e],
            deleted=gone))
        a, c = b, e
    return frames, det_ids


def with_track_ids(result: GroundingResult, track_ids: Sequence[int]) -> GroundingResult:
    """The result with GroundedBox.track_id set from `track_ids` (one per object, -1 = none).

    Objects without a track keep their instance, so an untracked frame costs nothing.
    """
    if len(track_ids) != len(result.objects):
        raise ValueError(f"{len(track_ids)} track ids for {len(result.objects)} objects")
    ids = [int(t) for t in track_ids]
    if max(ids, default=-1) < 0:
        return result
    objects = [_replaced(o, track_id=t) if t >= 0 else o
               for o, t in zip(result.objects, ids, strict=True)]
    return _replaced(result, objects=objects)


def _replaced(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace for GroundedBox and GroundingResult at a tenth of its cost (dozens
    a frame): frozen dataclasses without __post_init__ or slots, so a copy of the instance
    dict with the changes is what replace builds."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


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
        emb_all = np.asarray(object_embeddings)
        usable = [[i for i, o in enumerate(r.objects) if o.proposal_index >= 0]
                  for r in results]
        # the queries share the frame: each embedding row is made unit once, the boxes and
        # scores of all queries become Python numbers in one conversion
        rows: dict[int, int] = {}  # proposal index -> row of `unit`
        picked = [result.objects[i] for result, keep in zip(results, usable, strict=True)
                  for i in keep]
        for o in picked:
            rows.setdefault(int(o.proposal_index), len(rows))
        if rows:
            unit = np.asarray(emb_all[list(rows)], np.float32)  # a copy: normalised in place
            _normalise_rows(unit)
        else:
            unit = np.zeros((0, emb_all.shape[-1] if emb_all.ndim == 2 else 0), np.float32)
        boxes = np.array([o.box for o in picked], np.float64).reshape(-1, 4).tolist()
        scores = np.array([o.score for o in picked], np.float64).tolist()
        trackers: list[QueryTracker] = []
        detections: list[_Detections] = []
        start = 0
        for result, keep in zip(results, usable, strict=True):
            key = (camera, result.query)
            tracker = self._trackers.get(key)
            if tracker is None:
                tracker = self._trackers[key] = QueryTracker(self.params, self._new_id)
            end = start + len(keep)
            # the lock wants indices into result.objects, not into the usable subset
            detections.append(_Detections(
                boxes[start:end], scores[start:end],
                [rows[int(o.proposal_index)] for o in picked[start:end]], keep))
            trackers.append(tracker)
            start = end
        frames: list[TrackFrame] = []
        det_ids: list[list[int]] = []
        for batch in _distinct_runs(trackers):  # a query twice in a frame: one after the other
            f, i = _update_trackers(stamp_ns, trackers[batch], detections[batch], unit,
                                    unit.shape[1])
            frames += f
            det_ids += i
        out: list[GroundingResult] = []
        tracks: dict[str, TrackFrame] = {}
        for result, keep, frame, ids in zip(results, usable, frames, det_ids, strict=True):
            track_ids = [-1] * len(result.objects)
            for i, track_id in zip(keep, ids, strict=True):
                track_ids[i] = track_id
            tracks[result.query] = frame
            out.append(with_track_ids(result, track_ids))
        for key in [k for k in self._trackers if k[0] == camera and k[1] not in tracks]:
            del self._trackers[key]
        return TrackedFrame(camera, int(stamp_ns), out, tracks)

    def reset(self, params: TrackerParams | None = None) -> None:
        """Drop every track, optionally switching parameters (a parameter change); ids keep
        counting, never reused within the run."""
        if params is not None:
            self.params = params
        self._trackers.clear()


def _distinct_runs(items: Sequence[object]) -> list[slice]:
    """Consecutive runs of `items` in which no item repeats (usually one run of all)."""
    runs, start, seen = [], 0, set()
    for k, item in enumerate(items):
        if id(item) in seen:
            runs.append(slice(start, k))
            start, seen = k, set()
        seen.add(id(item))
    return [*runs, slice(start, len(items))] if items else []


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
        box = None if self.track_id < 0 else tuple(self._box.tolist())
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
        self._box = np.array(moved_box(self._anchor.tolist(), self._velocity.tolist(),
                                       (stamp_ns - self._anchor_ns) / 1e9))
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

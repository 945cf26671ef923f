"""core.tracking against a frozen record of the tracker before its speed-up (same ids, states,
associations, published track ids and lock reports, frame by frame).

The fixture test/data/tracking-equivalence.json was generated ONCE from the implementation at
commit ac9dbd6 (objembed_ros/core/tracking.py before the per-frame precomputation), with

    git show ac9dbd6:objembed_ros/objembed_ros/core/tracking.py > <the tree's tracking.py>
    .venv/bin/python test/test_core_tracking_equivalence.py --write

and must never be regenerated from the code it checks. The scenes are synthetic and
deterministic: objects moving at constant velocity with jittered boxes, missed detections,
duplicate boxes of one object, look-alike twins, occlusions after which an object reappears
displaced (re-identification by embedding), supplied boxes (proposal_index -1), dropped and
repeated stamps, two cameras, a query that leaves and rejoins, top_k 0 and > 0; locks that
acquire by score, on a chosen id, on an id that does not exist, get lost and re-acquire.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.core.tracking import Lock, LockParams, TrackerParams, Tracking

FIXTURE = Path(__file__).resolve().parent / "data" / "tracking-equivalence.json"

# name -> (scene seed, frames, embedding width, tracker parameters, lock parameters)
SCENES: dict[str, tuple[int, int, int, TrackerParams, LockParams]] = {
    "defaults": (0, 48, 256, TrackerParams(), LockParams()),
    "eager": (1, 48, 64,
              TrackerParams(confirm_hits=1, max_coast=4, min_iou=0.2, reid_min_cosine=0.7,
                            iou_weight=0.3, embedding_momentum=0.6, velocity_smoothing=0.8,
                            birth_min_score=0.15, birth_max_iou=0.3),
              LockParams(min_score=0.2, lost_after_s=0.4, reacquire_min_cosine=0.7)),
}
N_QUERIES = 5
CAMERAS = ("a", "b")


def _frames(seed: int, n_frames: int, dim: int) -> list[tuple[str, int, list[GroundingResult],
                                                              np.ndarray]]:
    """(camera, stamp_ns, results, (K, D) float32 embeddings) per frame."""
    rng = np.random.default_rng(seed)
    n_obj = 16
    centre = rng.uniform(80, 600, (n_obj, 2))
    size = rng.uniform(30, 120, (n_obj, 2))
    vel = rng.uniform(-60, 60, (n_obj, 2))
    look = rng.standard_normal((n_obj, dim)).astype(np.float32)
    look[1] = look[0] + 0.2 * rng.standard_normal(dim).astype(np.float32)  # look-alike twins
    centre[1] = centre[0] + [size[0, 0] * 0.6, 0.0]  # ... side by side
    vel[1] = vel[0]
    hidden = {3: (10, 16), 5: (20, 23), 7: (30, 34), 0: (36, 39)}  # object: frames unseen
    jump = {3: (25.0, -10.0), 5: (-40.0, 5.0), 7: (0.0, 30.0), 0: (8.0, 8.0)}
    affinity = rng.uniform(0.05, 1.0, (N_QUERIES, n_obj))
    top_k = [10, 0, 6, 4, 0]
    t_ns = 0
    frames = []
    for f in range(n_frames):
        t_ns += 66_666_667 * (3 if f in (12, 27) else 1)  # two dropped frames
        if f == 40:
            t_ns -= 66_666_667  # a repeated stamp (dt = 0)
        camera = "b" if f % 5 == 4 else "a"
        t = t_ns / 1e9
        visible = [k for k in range(n_obj)
                   if not (hidden.get(k, (0, 0))[0] <= f < hidden.get(k, (0, 0))[1])
                   and rng.random() > 0.15]
        obj = np.array(visible + list(rng.choice(visible, 6)), np.int64)  # + duplicates
        c = centre[obj] + vel[obj] * t + rng.normal(0, 1.5, (obj.size, 2))
        c += np.array([jump[k] if k in jump and f >= hidden[k][1] else (0.0, 0.0)
                       for k in obj])
        half = size[obj] / 2 * rng.uniform(0.85, 1.15, (obj.size, 1))
        boxes = np.concatenate([c - half, c + half], axis=1)
        emb = (look[obj] + 0.35 * rng.standard_normal((obj.size, dim))).astype(np.float32)
        supplied = rng.random(obj.size) < 0.08  # supplied boxes: not tracked
        results = []
        for q in range(N_QUERIES):
            if q == 4 and 18 <= f < 22:
                continue  # the query leaves (its tracker is dropped) and comes back
            score = affinity[q, obj] * rng.uniform(0.8, 1.0, obj.size)
            order = np.argsort(-score, kind="stable")
            if top_k[q]:
                order = order[:top_k[q]]
            objects = [GroundedBox(box=tuple(float(v) for v in boxes[i]),
                                   score=float(score[i]), similarity=float(score[i]),
                                   iou=1.0, cosine=0.0,
                                   proposal_index=-1 if supplied[i] else int(i))
                       for i in order]
            results.append(GroundingResult(f"q{q}", QUERY_TEXT, camera, t_ns, (800, 800),
                                           obj.size, objects))
        frames.append((camera, t_ns, results, emb))
    return frames


def _record(name: str) -> list[dict[str, Any]]:
    """What the tracker and the locks report per frame of one scene (JSON-ready)."""
    seed, n_frames, dim, tracker_params, lock_params = SCENES[name]
    tracking = Tracking(tracker_params)
    locks: dict[str, tuple[str, Lock]] = {  # name -> (query, lock), camera "a" only
        f"auto{q}": (f"q{q}", Lock(lock_params)) for q in range(N_QUERIES)}
    locks["missing_id"] = ("q0", Lock(lock_params, track_id=10_000))
    out = []
    for f, (camera, stamp_ns, results, emb) in enumerate(_frames(seed, n_frames, dim)):
        tracked = tracking.update(camera, stamp_ns, results, emb)
        frame: dict[str, Any] = {"camera": camera, "queries": {}, "locks": {}}
        for result in tracked.results:
            tf = tracked.tracks[result.query]
            frame["queries"][result.query] = [
                tf.track_ids.tolist(), tf.states.tolist(), tf.detections.tolist(),
                [o.track_id for o in result.objects], list(tf.deleted)]
        if f == 13:  # chosen ids: a confirmed and the newest track
            for q in ("q1", "q2"):
                tf = tracked.tracks[q]
                ids = tf.track_ids[tf.states == 1]
                if ids.size:
                    locks[f"chosen_{q}"] = (q, Lock(lock_params, track_id=int(ids[0])))
                locks[f"newest_{q}"] = (q, Lock(lock_params, track_id=int(tf.track_ids.max())))
        if camera == "a":
            for lock_name, (query, lock) in locks.items():
                u = lock.update(stamp_ns, tracked.tracks.get(query))
                box = None if u.box is None else [round(v, 3) for v in u.box]
                frame["locks"][lock_name] = [int(u.state), u.track_id, u.frames_tracked,
                                             u.frames_since_seen, u.detection, box, u.message]
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(SCENES))
def test_same_tracks_and_locks_as_the_frozen_record(name: str, frozen: dict[str, Any]) -> None:
    expected = frozen[name]
    got = _record(name)
    assert len(got) == len(expected)
    for f, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g["camera"] == e["camera"], f
        assert g["queries"] == e["queries"], f"{name} frame {f}: tracks differ"
        assert g["locks"].keys() == e["locks"].keys(), f
        for lock_name, want in e["locks"].items():
            have = g["locks"][lock_name]
            assert have[:5] == want[:5] and have[6] == want[6], (name, f, lock_name)
            if want[5] is None:
                assert have[5] is None, (name, f, lock_name)
            else:
                np.testing.assert_allclose(have[5], want[5], atol=2e-3)


def test_the_frozen_record_exercises_every_path(frozen: dict[str, Any]) -> None:
    """The scenes reach births, confirmation, coasting, deletion, a dropped tracker, every
    lock state and a lock taking over another track by appearance (else no teeth)."""
    states, lock_states, deleted, dropped_query, switches = set(), set(), 0, False, 0
    for name in SCENES:
        previous: dict[str, list[Any]] = {}
        for frame in frozen[name]:
            dropped_query |= frame["camera"] == "a" and "q4" not in frame["queries"]
            for _ids, st, _det, _pub, dead in frame["queries"].values():
                states.update(st)
                deleted += len(dead)
            for lock_name, report in frame["locks"].items():
                lock_states.add(report[0])
                before = previous.get(lock_name)
                switches += report[0] == 3 and before is not None and before[1] != report[1]
                previous[lock_name] = report
    assert states == {0, 1, 2}  # TENTATIVE, CONFIRMED, COASTING
    assert lock_states == {0, 1, 2, 3, 4}  # ACQUIRING .. LOST
    assert deleted > 0 and dropped_query and switches > 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: test_core_tracking_equivalence.py --write  (see the docstring)")
    scenes = {name: [json.dumps(frame, separators=(",", ":")) for frame in _record(name)]
              for name in SCENES}  # one frame a line
    FIXTURE.write_text("{\n" + ",\n".join(f'"{name}": [\n' + ",\n".join(lines) + "\n]"
                                         for name, lines in scenes.items()) + "\n}\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")

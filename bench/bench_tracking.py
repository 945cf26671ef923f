"""Tracking cost per frame: core.tracking.Tracking.update for 10 standing queries over a frame
of 100 proposals (target: <= 1 ms per frame on the dev machine), plus one Lock per query.

    python bench/bench_tracking.py                     # top_k 10 (the node's default), D 2048
    python bench/bench_tracking.py --top-k 0 --json tracking.json   # every proposal per query

The scene: 100 proposals on 40 objects moving at constant velocity with jittered boxes and
20% missed detections per frame, embeddings = a per-object random direction plus noise
(D = 2048, ObjEmbed-2B's width). Each query's result holds the top_k proposals by a fixed
per-query score, as the node's ground() returns them. The timed part is what the node adds
per frame: Tracking.update (association, track updates, births, track ids into the results)
and Lock.update for one lock per query. Warm frames only (the first 20 are discarded).
Reports wall time and the thread's CPU time (the cost itself, less sensitive to other load
on a shared machine) with the load average at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.core.results import QUERY_TEXT, GroundedBox, GroundingResult
from objembed_ros.core.tracking import Lock, LockParams, Tracking


def make_frames(n_frames: int, n_props: int, n_queries: int, top_k: int, dim: int,
                seed: int = 0) -> list[tuple[int, list[GroundingResult], np.ndarray]]:
    rng = np.random.default_rng(seed)
    n_obj = 40
    centre = rng.uniform(100, 1100, (n_obj, 2))
    size = rng.uniform(30, 150, (n_obj, 2))
    vel = rng.uniform(-40, 40, (n_obj, 2))  # px/s
    look = rng.standard_normal((n_obj, dim)).astype(np.float32)
    affinity = rng.uniform(0, 1, (n_queries, n_obj))  # how well each object fits each query
    frames = []
    for f in range(n_frames):
        t = f / 15.0  # 15 fps stamps
        obj = rng.integers(0, n_obj, n_props)
        obj[:n_obj] = np.arange(n_obj)  # every object proposed (before misses)
        c = centre[obj] + vel[obj] * t + rng.normal(0, 2, (n_props, 2))
        half = size[obj] / 2 * rng.uniform(0.9, 1.1, (n_props, 1))
        boxes = np.concatenate([c - half, c + half], axis=1)
        emb = look[obj] + 0.3 * rng.standard_normal((n_props, dim)).astype(np.float32)
        keep = rng.random(n_props) > 0.2  # missed detections
        results = []
        for q in range(n_queries):
            score = affinity[q, obj] * keep
            order = np.argsort(-score, kind="stable")
            order = order[score[order] > 0]
            if top_k > 0:
                order = order[:top_k]
            objects = [GroundedBox(box=tuple(float(v) for v in boxes[i]), score=float(score[i]),
                                   similarity=float(score[i]), iou=1.0, cosine=0.0,
                                   proposal_index=int(i)) for i in order]
            results.append(GroundingResult(f"query {q}", QUERY_TEXT, "cam", int(t * 1e9),
                                           (1280, 1280), n_props, objects))
        frames.append((int(t * 1e9), results, emb))
    return frames


def run(frames: list, n_queries: int, warm: int = 20) -> tuple[list[float], list[float], int]:
    """(wall seconds, this thread's CPU seconds) per warm frame, live tracks at the end."""
    tracking = Tracking()
    locks = [Lock(LockParams()) for _ in range(n_queries)]
    wall, cpu = [], []
    tracks = 0
    for k, (stamp, results, emb) in enumerate(frames):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = tracking.update("cam", stamp, results, emb)
        for q, lock in enumerate(locks):
            lock.update(stamp, out.tracks[f"query {q}"])
        t1, c1 = time.perf_counter(), time.thread_time()
        if k >= warm:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
        tracks = sum(len(tf.track_ids) for tf in out.tracks.values())
    return wall, cpu, tracks


def small_op_us(n: int = 100_000) -> float:
    """Thread CPU microseconds of one tiny numpy op (a + 1.0 on 10 floats): a yardstick of
    how fast this machine runs numpy's per-call overhead right now, which dominates here."""
    a = np.zeros(10)
    c0 = time.thread_time()
    for _ in range(n):
        a + 1.0
    return 1e6 * (time.thread_time() - c0) / n


def _summary(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return 1000 * statistics.median(ordered), 1000 * p90


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=220)
    ap.add_argument("--proposals", type=int, default=100)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=10, help="objects per query (0 = all)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    frames = make_frames(args.frames, args.proposals, args.queries, args.top_k, args.dim)
    wall, cpu, tracks = run(frames, args.queries)
    (wall_med, wall_p90), (cpu_med, cpu_p90) = _summary(wall), _summary(cpu)
    report = {"proposals": args.proposals, "queries": args.queries, "top_k": args.top_k,
              "dim": args.dim, "warm_frames": len(wall), "live_tracks_last_frame": tracks,
              "wall_median_ms": wall_med, "wall_p90_ms": wall_p90,
              "cpu_median_ms": cpu_med, "cpu_p90_ms": cpu_p90,
              "load_average_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
              "small_numpy_op_cpu_us": small_op_us(),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "python": platform.python_version(), "numpy": np.__version__}
    print(f"tracking + locks per frame: {args.proposals} proposals, {args.queries} queries, "
          f"top_k {args.top_k}, D {args.dim}, {tracks} live tracks at the end, "
          f"{len(wall)} warm frames")
    print(f"  wall median {wall_med:.3f} ms, p90 {wall_p90:.3f} ms; thread CPU median "
          f"{cpu_med:.3f} ms, p90 {cpu_p90:.3f} ms (load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; one tiny numpy op costs "
          f"{report['small_numpy_op_cpu_us']:.2f} us of CPU here)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

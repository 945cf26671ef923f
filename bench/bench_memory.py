"""Object memory at scale: recall latency, footprint and the frame-path cost of an update.

    .venv/bin/python bench/bench_memory.py                  # 1e3, 1e4, 1e5 entries, 2048-d
    .venv/bin/python bench/bench_memory.py --sizes 1000 --json mem.json
    .venv/bin/python bench/bench_memory.py --index exact     # skip the HNSW rows (slow builds)

Per memory size N (random unit 2048-d entries, the 2B embedding width, spread over 4 cameras,
a 50 x 50 x 2 m map and an hour of stamps):
- recall: a query with cosine 0.5 to one random entry against all N entries (top_k 10),
  and with a camera filter and a time window; median / p90 over warm runs. "exact": the
  float32 scan; "hnsw": candidates from memory/ann.py (usearch, f16), scored exactly.
  "target found": how often that entry is in the top 10.
- footprint: the embedding matrix and row arrays (ObjectMemory.nbytes) plus the HNSW index,
  the process RSS growth while loading, and the load time (index build included).
- frame path: MemoryService.on_frame for one frame of 100 proposals (640 x 480, aligned depth,
  a map <- camera transform), max_per_frame 10, on the node's worker thread (pick, copy,
  queue); memory thread: MemoryService.ingest of that frame (3D, /tf, crops, merging,
  evictions). "known" re-sees 10 remembered objects (merges), "new" brings 10 unseen ones
  (new entries with crops, evictions at a full memory).
- store: SQLite load_all of N entries and one writer batch of 10 entries.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "objembed_ros"))
sys.path.insert(0, str(BENCH))

from std_msgs.msg import Header  # noqa: E402
from timing import summarize  # noqa: E402

from objembed_ros.core.depth import Intrinsics  # noqa: E402
from objembed_ros.core.memory import MemoryConfig, ObjectEntry, ObjectMemory  # noqa: E402
from objembed_ros.core.transforms import RigidTransform  # noqa: E402
from objembed_ros.grounder import CachedFrame  # noqa: E402
from objembed_ros.memory import SqliteStore  # noqa: E402
from objembed_ros.memory.ann import UsearchIndex  # noqa: E402
from objembed_ros.ros.recall import MemoryService, pending_frame  # noqa: E402

DIM = 2048
S = 1_000_000_000
CAMERAS = ("/front/image", "/left/image", "/right/image", "/arm/image")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_entries(n: int, rng: np.random.Generator, start_id: int = 1) -> list[ObjectEntry]:
    out = []
    for k in range(n):
        emb = rng.standard_normal(DIM).astype(np.float32)
        emb /= np.linalg.norm(emb)
        pos = (float(rng.uniform(0, 50)), float(rng.uniform(0, 50)), float(rng.uniform(0, 2)))
        out.append(ObjectEntry(
            id=start_id + k, embedding=emb, camera=CAMERAS[k % 4], frame_id="cam_optical",
            label="", first_seen_ns=S, last_seen_ns=S + int(rng.uniform(0, 3600)) * S,
            hits=int(rng.integers(1, 20)), box=(10.0, 10.0, 100.0, 100.0),
            image_size=(640, 480), best_iou=0.8, crop=b"\xff" * 3000, position_frame="map",
            position_fixed=True, position_count=1, position_mean=pos))
    return out


class FixedTf:
    """A map <- camera transform that never changes (what TfLookup.lookup returns)."""

    backend = "bench"

    def __init__(self) -> None:
        self.t = RigidTransform.make((10.0, 10.0, 1.0), (0.0, 0.0, 0.0, 1.0))

    def lookup(self, target, source, stamp_ns):
        return self.t, ""

    def close(self):
        pass


def timed(fn, runs: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)  # type: ignore[return-value]


def query_near(entry: ObjectEntry, rng: np.random.Generator, cosine: float = 0.5) -> np.ndarray:
    """A query with the given cosine to one entry (a text that matches one object)."""
    noise = rng.standard_normal(DIM).astype(np.float32)
    noise -= (noise @ entry.embedding) * entry.embedding
    noise /= np.linalg.norm(noise)
    return cosine * entry.embedding + math.sqrt(1 - cosine**2) * noise


def bench_size(n: int, runs: int, rng: np.random.Generator, ann: bool) -> dict:
    entries = random_entries(n, rng)
    rss0 = rss_bytes()
    cfg = MemoryConfig(max_entries=n, max_per_frame=10, ann_min_entries=0 if ann else 1 << 40)
    memory = ObjectMemory(cfg, dim=DIM, ann_factory=UsearchIndex if ann else None)
    t0 = time.perf_counter()
    memory.load(entries)
    row = {"entries": n, "index": "hnsw" if ann else "exact",
           "load_s": time.perf_counter() - t0,
           "matrix_mb": memory.nbytes() / 2**20,
           "ann_mb": memory.ann.nbytes / 2**20 if memory.ann is not None else 0.0,
           "rss_growth_mb": (rss_bytes() - rss0) / 2**20}
    targets = [entries[int(i)] for i in rng.integers(0, n, runs + 2)]
    queries = [query_near(e, rng) for e in targets]
    found = []
    it = iter(range(len(queries)))

    def recall_one(**kw):
        i = next(it)
        hits = memory.recall(queries[i], 2.3, -5.0, top_k=10, **kw)
        found.append(any(h.entry.id == targets[i].id for h in hits))

    row["recall_all"] = timed(recall_one, runs)
    row["found"] = sum(found) / len(found)
    q = queries[0]
    row["recall_camera"] = timed(lambda: memory.recall(q, 2.3, -5.0, top_k=10,
                                                       camera=CAMERAS[1]), runs)
    row["recall_window"] = timed(lambda: memory.recall(
        q, 2.3, -5.0, top_k=10, since_ns=1000 * S, until_ns=1600 * S), runs)

    # the frame path: 100 proposals, the 10 best enter
    svc = MemoryService(memory, tf=FixedTf(), fixed_frame="map", embed_text=lambda t: q,
                        logit_params=lambda: (2.3, -5.0))
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    depth = rng.uniform(1.0, 3.0, (480, 640)).astype(np.float32)
    k = Intrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5)
    x = rng.uniform(0, 540, 100)
    y = rng.uniform(0, 380, 100)
    boxes = np.stack([x, y, x + 100, y + 100], 1).astype(np.float32)
    logits = np.linspace(3.0, -3.0, 100).astype(np.float32)
    header = Header(frame_id="cam_optical")
    stamp = [3700 * S]

    def frame(embeddings: np.ndarray) -> CachedFrame:
        stamp[0] += S // 10
        return CachedFrame(camera=CAMERAS[0], stamp_ns=stamp[0], rgb=rgb, image_size=(640, 480),
                           boxes=boxes, proposal_scores=np.full(100, np.nan, np.float32),
                           object_embeddings=embeddings, iou_logits=logits,
                           global_embeddings=np.zeros((2, DIM), np.float32),
                           proposal_source="bench")

    def new_embeddings() -> np.ndarray:
        e = rng.standard_normal((100, DIM)).astype(np.float32)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    known = new_embeddings()
    svc.on_frame(frame(known), [], header, depth, k)  # remember them once
    svc.drain()

    def enqueue(embeddings: np.ndarray) -> dict[str, float]:
        """The worker thread's cost: on_frame (pick, copy, queue); the memory thread's work
        is waited for outside the timed part."""
        times = []
        for _ in range(runs):
            f = frame(embeddings if embeddings is not None else new_embeddings())
            t0 = time.perf_counter()
            svc.on_frame(f, [], header, depth, k)
            times.append(time.perf_counter() - t0)
            svc.drain()
        return summarize(times)  # type: ignore[return-value]

    def ingest(embeddings: np.ndarray | None) -> dict[str, float]:
        """The memory thread's work per frame (3D, /tf, crops, merge, evictions)."""
        times = []
        for _ in range(runs):
            f = frame(embeddings if embeddings is not None else new_embeddings())
            item = pending_frame(f, [], header, depth, k, memory.config)
            t0 = time.perf_counter()
            svc.ingest(item)
            times.append(time.perf_counter() - t0)
        return summarize(times)  # type: ignore[return-value]

    row["enqueue_known"] = enqueue(known)
    row["enqueue_new"] = enqueue(None)
    row["ingest_known"] = ingest(known)
    row["ingest_new"] = ingest(None)
    svc.close()
    assert len(memory) == n  # evictions kept the bound

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mem.sqlite"
        store = SqliteStore(path)
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            store.upsert(entries[i:i + 1000])
        row["store_write_all_s"] = time.perf_counter() - t0
        batch = entries[:10]
        row["store_batch10"] = timed(lambda: store.upsert(batch), runs)
        store.close()
        row["file_mb"] = path.stat().st_size / 2**20
        store = SqliteStore(path)
        t0 = time.perf_counter()
        loaded = store.load_all()
        row["store_load_all_s"] = time.perf_counter() - t0
        assert len(loaded) == n
        store.close()
    return row


def fmt(stat: dict[str, float]) -> str:
    return f"{stat['median_ms']:.2f} / {stat['p90_ms']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--index", choices=("both", "exact", "hnsw"), default="both")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    load_start = os.getloadavg()[0]
    for n in args.sizes:
        for ann in {"both": (False, True), "exact": (False,), "hnsw": (True,)}[args.index]:
            rows.append(bench_size(n, args.runs, rng, ann))
            print(f"done {n} {'hnsw' if ann else 'exact'}", file=sys.stderr)
    print(f"# bench/bench_memory.py, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, numpy {np.__version__}, D={DIM}, ms median / p90; "
          f"load average at the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f}")
    print("| entries | index | recall top-10 | target found | recall 1 camera | recall time "
          "window | frame path known | frame path new | memory thread known | memory thread "
          "new | matrix + index MB | RSS growth MB | load s | file MB | file load s |")
    print("|" + "---|" * 15)
    for r in rows:
        print(f"| {r['entries']:,} | {r['index']} | {fmt(r['recall_all'])} | "
              f"{100 * r['found']:.0f}% | {fmt(r['recall_camera'])} | "
              f"{fmt(r['recall_window'])} | {fmt(r['enqueue_known'])} | "
              f"{fmt(r['enqueue_new'])} | {fmt(r['ingest_known'])} | {fmt(r['ingest_new'])} | "
              f"{r['matrix_mb'] + r['ann_mb']:.0f} | {r['rss_growth_mb']:.0f} | "
              f"{r['load_s']:.1f} | {r['file_mb']:.0f} | {r['store_load_all_s']:.2f} |")
    print(f"store: one batch of 10 entries {fmt(rows[-1]['store_batch10'])} ms "
          f"(writer thread, off the frame path)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

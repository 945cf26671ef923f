"""How long a NEW query waits for the model while a worker encodes frames back to back.

    python bench/bench_fairness.py [--queries 10] [--plain-lock]

Tiny random ObjEmbed checkpoint on CPU, one 256x192 photo, 4 supplied boxes: a worker thread
calls Grounder.encode_frame in a loop (as the node's worker does under a fast camera) while
the main thread asks `ground` for a never-seen query every so often. Reported per query:
frame passes that STARTED while it waited (the convoy; 0 means it went right after the pass
in progress), and its latency, median / max in ms. `--plain-lock` swaps the model lock for
a threading.Lock-like one without request priority (the behaviour before grounder/lock.py).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.grounder import Grounder, GrounderConfig
from objembed_ros.grounder.lock import ModelLock


class PlainLock(ModelLock):
    """No request priority: whoever wins the race after a release (the old behaviour)."""

    def acquire(self, request: bool, deadline: float | None = None) -> bool:
        return super().acquire(True, deadline)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--plain-lock", action="store_true")
    args = ap.parse_args()
    from skimage import data

    from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_objembed_checkpoint(Path(tmp) / "tiny")
        grounder = Grounder.load(GrounderConfig(checkpoint=str(ckpt), proposer="external"))
    if args.plain_lock:
        grounder.model_lock = PlainLock()
    rgb = np.ascontiguousarray(data.astronaut()[:192, 100:356])
    boxes = np.array([[0, 0, 256, 192], [20, 10, 120, 150], [100, 40, 250, 180],
                      [60, 60, 90, 100]], np.float32)
    frame = grounder.encode_frame(rgb, 0, "cam", boxes=boxes)
    started = [0]
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            started[0] += 1
            grounder.encode_frame(rgb, started[0], "cam", boxes=boxes, cache=False)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    overtaken, waits = [], []
    for i in range(args.queries):
        time.sleep(0.05)
        before = started[0]
        t0 = time.perf_counter()
        grounder.ground([f"the red cup number {i}"], frame)
        waits.append(1000 * (time.perf_counter() - t0))
        overtaken.append(max(started[0] - before - 1, 0))  # the pass in progress is allowed
    stop.set()
    thread.join()
    lock = "plain lock" if args.plain_lock else "ModelLock (requests first)"
    print(f"{lock}: {args.queries} new queries during back-to-back frames; frame passes "
          f"started while a query waited (beyond the one in progress): "
          f"median {statistics.median(overtaken)}, max {max(overtaken)}; latency median "
          f"{statistics.median(waits):.0f} ms, max {max(waits):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

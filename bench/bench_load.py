"""Service latency under load: a 30 Hz camera stream (with external proposals) and 4 clients
calling ~/ground at once, by kind of call:

- cached: a query text seen before (text embedding cached): a matrix product on the cached frame
- new: a query text never seen (one text pass, behind the model lock the worker also takes)
- boxes: three supplied boxes (one image pass on the cached frame)

    python bench/bench_load.py [--checkpoint DIR] [--seconds 20] [--size 320x240]
                               [--boxes 20] [--out bench_load.json]

Runs the real node in its own process (the launcher, Fast DDS SHM profile). A tiny random
checkpoint is built when none is given. Each client is its own process-local ROS context and
calls back to back, cycling cached, new, boxes. Prints p50/p99/max per kind and every failure
message with its count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.ros.launcher import default_params_file, ros_environment, start_node

KINDS = ("cached", "new", "boxes")
CLIENTS = 4
RATE_HZ = 30.0


def run(checkpoint: str, seconds: float, size: tuple[int, int], n_boxes: int) -> dict:
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.update({k: v for k, v in ros_environment().items()
                       if k.startswith(("FASTDDS_", "RMW_"))})
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from skimage import data
    from skimage.transform import resize
    from std_msgs.msg import Header

    from objembed_msgs.msg import GroundedObject, GroundedObjectArray
    from objembed_msgs.srv import Ground
    from objembed_ros.ros.convert import rgb_to_image
    from objembed_ros.testing.ros_harness import RosClient

    w, h = size
    log = Path(tempfile.mkdtemp()) / "node.log"
    proc = start_node(params_file=default_params_file(), namespace="load", log_path=log,
                      parameters={"checkpoint": checkpoint, "proposer": "external"})
    rgb = (resize(data.astronaut(), (h, w), preserve_range=True, anti_aliasing=False)
           .astype(np.uint8))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (n_boxes, 2)) * [w * 0.7, h * 0.7]
    wh = rng.uniform(0.1, 0.3, (n_boxes, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + wh], axis=1)
    streamer = RosClient("load_camera")
    pub_img = streamer.node.create_publisher(Image, "/load/image", qos_profile_sensor_data)
    pub_box = streamer.node.create_publisher(GroundedObjectArray, "/load/external_proposals",
                                             qos_profile_sensor_data)
    clients = [RosClient(f"load_client_{i}") for i in range(CLIENTS)]
    grounds = [c.node.create_client(Ground, "/load/grounding_node/ground") for c in clients]
    stop = threading.Event()
    sent = [0]

    def stream() -> None:
        stamp = 1_000_000_000
        next_t = time.monotonic()
        while not stop.is_set():
            hdr = Header(frame_id="cam")
            hdr.stamp.sec, hdr.stamp.nanosec = divmod(stamp, 1_000_000_000)
            props = GroundedObjectArray(header=hdr, objects=[
                GroundedObject(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3]),
                               score=0.5) for b in boxes])
            pub_box.publish(props)
            pub_img.publish(rgb_to_image(rgb, hdr))
            sent[0] += 1
            stamp += int(1e9 / RATE_HZ)
            next_t += 1 / RATE_HZ
            time.sleep(max(next_t - time.monotonic(), 0.0))

    try:
        stream_thread = threading.Thread(target=stream, daemon=True)
        stream_thread.start()
        deadline = time.monotonic() + 180
        while not clients[0].call(grounds[0], Ground.Request(queries=["a person"]), 60).success:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node never answered; log:\n{proc.log()[-3000:]}")
            time.sleep(0.2)
        for c, g in zip(clients, grounds, strict=True):  # discovery + the cached text
            c.call(g, Ground.Request(queries=["a person"]), 60)
        results: dict[str, list[float]] = {k: [] for k in KINDS}
        failures: Counter[str] = Counter()
        lock = threading.Lock()
        flat = [float(v) for v in boxes[:3].reshape(-1)]

        def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                kind = KINDS[(n + i) % len(KINDS)]
                if kind == "cached":
                    req = Ground.Request(queries=["a person"], top_k=5)
                elif kind == "new":
                    req = Ground.Request(queries=[f"object {i}-{n} seen at {time.time()}"],
                                         top_k=5)
                else:
                    req = Ground.Request(queries=["a person"], boxes=flat)
                t0 = time.perf_counter()
                resp = clients[i].call(grounds[i], req, 60)
                dt = time.perf_counter() - t0
                with lock:
                    if resp.success:
                        results[kind].append(dt)
                    else:
                        failures[f"{kind}: {resp.message[:80]}"] += 1
                n += 1

        stop_clients = time.monotonic() + seconds
        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(CLIENTS)]
        sent0 = sent[0]
        for t in threads:
            t.start()
        while time.monotonic() < stop_clients:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(70)
        frames_sent = sent[0] - sent0
    finally:
        stop.set()
        for c in [streamer, *clients]:
            c.close()
        proc.stop()
    report: dict = {"seconds": seconds, "size": f"{w}x{h}", "boxes_per_frame": n_boxes,
                    "stream_hz": RATE_HZ, "frames_sent": frames_sent, "clients": CLIENTS,
                    "checkpoint": checkpoint, "kinds": {}, "failures": dict(failures)}
    for kind, lat in results.items():
        arr = np.asarray(lat) * 1e3
        report["kinds"][kind] = ({"n": len(lat), "p50_ms": float(np.percentile(arr, 50)),
                                  "p99_ms": float(np.percentile(arr, 99)),
                                  "max_ms": float(arr.max())} if len(lat) else {"n": 0})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    checkpoint = args.checkpoint
    if not checkpoint:
        from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

        checkpoint = str(make_tiny_objembed_checkpoint(Path(tempfile.mkdtemp())))
    w, h = (int(v) for v in args.size.split("x"))
    report = run(checkpoint, args.seconds, (w, h), args.boxes)
    print(f"{report['frames_sent']} frames sent at {RATE_HZ:g} Hz ({report['size']}, "
          f"{report['boxes_per_frame']} boxes), {CLIENTS} clients, {args.seconds:g} s")
    print("| call | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for kind, r in report["kinds"].items():
        if r["n"]:
            print(f"| {kind} | {r['n']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['max_ms']:.1f} |")
        else:
            print(f"| {kind} | 0 | - | - | - |")
    for message, n in sorted(report["failures"].items()):
        print(f"failed x{n}: {message}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

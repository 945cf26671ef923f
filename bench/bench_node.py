"""Node overhead: image published -> groundings received, minus the model time the node
reports for that frame (proposals + ObjEmbed image pass, from ~/timings).

What remains is the node's own cost: DDS transport both ways, Image -> numpy, queueing,
the standing query's scoring (text served from the cache) and message building.

    python bench/bench_node.py [--checkpoint DIR] [--frames 40] [--out bench_node.json]

Runs the real node in its own process (the launcher, Fast DDS SHM profile), proposer
'external' with 100 boxes, one standing query, top_k 10. A tiny random checkpoint is built
when none is given. Frames are sent one at a time (each after the previous result), so no
frame is dropped and every latency is one frame's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.ros.launcher import default_params_file, ros_environment, start_node


def run(checkpoint: str, sizes: list[tuple[int, int]], frames: int) -> dict:
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.update({k: v for k, v in ros_environment().items()
                       if k.startswith(("FASTDDS_", "RMW_"))})
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile
    from skimage import data
    from skimage.transform import resize
    from std_msgs.msg import Header

    from objembed_msgs.msg import GroundedObject, GroundedObjectArray
    from objembed_ros.ros.convert import rgb_to_image
    from objembed_ros.testing.ros_harness import RosClient

    log = Path(tempfile.mkdtemp()) / "node.log"
    proc = start_node(params_file=default_params_file(), namespace="bench", log_path=log,
                      parameters={"checkpoint": checkpoint, "proposer": "external",
                                  "standing_queries": ["a person"], "top_k": 10,
                                  "qos_overrides./bench/image.subscription.reliability":
                                      "reliable"})
    client = RosClient("bench_client")
    got: dict[int, float] = {}
    timings: dict[int, dict[str, float]] = {}

    def stamp_of(h: Header) -> int:
        return h.stamp.sec * 1_000_000_000 + h.stamp.nanosec

    def on_groundings(msg: GroundedObjectArray) -> None:
        got.setdefault(stamp_of(msg.header), time.perf_counter())

    def on_timings(msg: DiagnosticArray) -> None:
        timings[stamp_of(msg.header)] = {kv.key: float(kv.value) for kv in msg.status[0].values}

    n = client.node
    n.create_subscription(GroundedObjectArray, "/bench/grounding_node/groundings",
                          on_groundings, 100)
    n.create_subscription(DiagnosticArray, "/bench/grounding_node/timings", on_timings, 100)
    pub_img = n.create_publisher(type(rgb_to_image(np.zeros((1, 1, 3), np.uint8))),
                                 "/bench/image", QoSProfile(depth=1))
    pub_box = n.create_publisher(GroundedObjectArray, "/bench/external_proposals", 10)
    client.wait_for(lambda: pub_img.get_subscription_count() > 0
                    and pub_box.get_subscription_count() > 0, 60, "the node's subscriptions")
    photo = data.astronaut()
    rng = np.random.default_rng(0)
    report: dict = {"frames_per_size": frames, "proposer": "external", "boxes": 100,
                    "checkpoint": checkpoint, "sizes": {}}
    stamp = 1_000_000_000
    try:
        for w, h in sizes:
            rgb = (resize(photo, (h, w), preserve_range=True, anti_aliasing=False)
                   .astype(np.uint8))
            xy = rng.uniform(0, [w, h], (100, 2))
            wh = rng.uniform(10, [w / 2, h / 2], (100, 2))
            boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
            rows = []
            for i in range(frames + 3):  # 3 warm-up frames
                stamp += 1_000_000
                hdr = Header(frame_id="cam")
                hdr.stamp.sec, hdr.stamp.nanosec = divmod(stamp, 1_000_000_000)
                props = GroundedObjectArray(header=hdr, objects=[
                    GroundedObject(x1=b[0], y1=b[1], x2=b[2], y2=b[3], score=0.5) for b in boxes])
                img = rgb_to_image(rgb, hdr)
                pub_box.publish(props)
                time.sleep(0.005)  # the boxes are there first, as from a real detector
                t_pub = time.perf_counter()
                pub_img.publish(img)
                deadline = time.monotonic() + (300 if i == 0 else 60)
                while (stamp not in got or stamp not in timings) and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if stamp not in got or stamp not in timings:
                    raise RuntimeError(f"frame {stamp} not answered; node log:\n{proc.log()}")
                if i < 3:
                    continue
                t = timings[stamp]
                e2e = got[stamp] - t_pub
                rows.append({"e2e_ms": e2e * 1e3, "model_ms": t["model"] * 1e3,
                             "overhead_ms": (e2e - t["model"]) * 1e3,
                             "in_node_overhead_ms": (t["node_total"] - t["model"]) * 1e3,
                             # transport in and out + executor dispatch of the image callback
                             "outside_node_ms": (e2e - t["node_total"]) * 1e3,
                             "queue_ms": t["queue"] * 1e3,
                             "convert_ms": t["convert"] * 1e3,
                             "ground_publish_ms": t["ground_publish"] * 1e3})
            summary = {}
            for key in rows[0]:
                vals = np.array([r[key] for r in rows])
                summary[key] = {"median": float(np.median(vals)),
                                "p90": float(np.percentile(vals, 90)),
                                "p99": float(np.percentile(vals, 99))}
            report["sizes"][f"{w}x{h}"] = summary
    finally:
        client.close()
        proc.stop()
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="ObjEmbed dir (default: a tiny one)")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--out", "--json", dest="out", default=None,
                    help="write the JSON here too")
    args = ap.parse_args()
    checkpoint = args.checkpoint
    if checkpoint is None:
        from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

        checkpoint = str(make_tiny_objembed_checkpoint(Path(tempfile.mkdtemp())))
    report = run(checkpoint, [(640, 480), (1280, 720)], args.frames)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

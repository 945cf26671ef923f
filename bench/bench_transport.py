"""Image transport between two processes: frames lost and latency, with and without the profile.

A publisher process sends `--frames` rgb8 images at `--rate` Hz; this process subscribes and
records how many arrived and how long each took (publish stamp -> receive). Run as:

    .venv/bin/python bench/bench_transport.py --width 1280 --height 720 [--no-profile] [--reliable]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "objembed_ros"))

from objembed_ros.ros.launcher import ros_environment  # noqa: E402

PUBLISHER = r"""
import sys, time
import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import Image
w, h, n = (int(a) for a in sys.argv[1:4])
rate, reliable = float(sys.argv[4]), sys.argv[5] == "1"
rclpy.init()
node = rclpy.create_node("bench_transport_pub")
rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=rel)
pub = node.create_publisher(Image, "bench_image", qos)
deadline = time.time() + 20
while pub.get_subscription_count() == 0 and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
data = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8).tobytes()
for i in range(n):
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data)
    msg.header.frame_id = str(i)
    t = time.time()
    msg.header.stamp.sec = int(t)
    msg.header.stamp.nanosec = int((t - int(t)) * 1e9)
    pub.publish(msg)
    time.sleep(1.0 / rate)
time.sleep(0.5)
rclpy.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--reliable", action="store_true")
    ap.add_argument("--no-profile", action="store_true", help="Fast DDS defaults")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()

    env = ros_environment(use_shm_profile=not args.no_profile)
    if os.environ.get("_OBJEMBED_BENCH_CHILD") != "1":
        # Re-exec so this process runs under the same environment as the publisher.
        env["_OBJEMBED_BENCH_CHILD"] = "1"
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_sub")
    got: dict[int, float] = {}

    def on_image(msg: Image) -> None:
        sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        got[int(msg.header.frame_id)] = time.time() - sent

    rel = ReliabilityPolicy.RELIABLE if args.reliable else ReliabilityPolicy.BEST_EFFORT
    qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=rel)
    node.create_subscription(Image, "bench_image", on_image, qos)
    pub = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(args.width), str(args.height), str(args.frames),
         str(args.rate), "1" if args.reliable else "0"],
        env=env,
    )
    deadline = time.time() + args.frames / args.rate + 30
    while pub.poll() is None and time.time() < deadline:
        rclpy.spin_once(node, timeout_sec=0.01)
    for _ in range(50):
        rclpy.spin_once(node, timeout_sec=0.01)
    pub.kill()
    lat = np.array(sorted(got.values())) * 1e3
    result = {
        "size": f"{args.width}x{args.height}",
        "qos": "reliable" if args.reliable else "best_effort",
        "profile": "default" if args.no_profile else "objembed_shm",
        "sent": args.frames, "received": len(got),
        "dropped_pct": round(100.0 * (1 - len(got) / args.frames), 1),
        "latency_ms_median": round(float(np.median(lat)), 2) if len(lat) else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    rclpy.shutdown()


if __name__ == "__main__":
    main()

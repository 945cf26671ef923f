"""The main job on its built-in default: the grounding node, end to end, on a bundled photo.

`make demo` runs this. With no real weights on the machine it builds tiny, randomly
initialised checkpoints in the official formats (ObjEmbed directory, original WeDetect-Uni
.pth): the scores are meaningless, every step is the real one. It

1. grounds queries offline with `objembed-ground` (WeDetect proposals + one ObjEmbed pass)
   and writes results JSON + an overlay PNG;
2. starts the GroundingNode through the launcher (as `objembed-launch` does), streams the
   photo on its image topic, and asks `~/ground` for the same queries, printing the answer.

Demo code, not production: it builds its tiny checkpoints with objembed_ros.testing (the
test-support package, which the node and the CLI never import).

Give real weights to see real groundings:
    python -m objembed_ros.demo --checkpoint /models/ObjEmbed-2B \\
        --wedetect /models/wedetect_base.pth
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from objembed_ros.cli import UNTRAINED_BANNER as UNTRAINED

QUERIES = ("a person in a white space suit", "the american flag", "a helmet")


def _demo_models(folder: Path) -> tuple[Path, Path]:
    """Tiny official-format checkpoints, built once and reused."""
    from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint
    from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint

    objembed = folder / "objembed_tiny"
    if not (objembed / "config.json").exists():
        make_tiny_objembed_checkpoint(objembed)
    wedetect = folder / "wedetect_tiny.pth"
    if not wedetect.exists():
        make_wedetect_checkpoint(wedetect, stage_depths=(1, 1, 1, 1))
    return objembed, wedetect


def run_offline(checkpoint: Path, wedetect: Path, photo: Path, out_dir: Path,
                untrained: bool = False) -> int:
    from objembed_ros.cli import main as cli_main

    args = ["--checkpoint", str(checkpoint), "--wedetect-checkpoint", str(wedetect),
            "--proposer", "wedetect", "--image", str(photo), "--top-k", "3",
            "--out", str(out_dir / "demo_results.json"),
            "--overlay", str(out_dir / "demo_overlay.png")] + (["--untrained"] * untrained)
    for q in QUERIES:
        args += ["--query", q]
    return cli_main(args)


def run_node(checkpoint: Path, wedetect: Path, rgb: np.ndarray, out_dir: Path,
             timeout: float) -> int:
    """Start the node, stream the photo, call ~/ground; 0 when the node answered."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from objembed_msgs.srv import Ground
    from objembed_ros.ros.convert import rgb_to_image
    from objembed_ros.ros.launcher import default_params_file, start_node
    from objembed_ros.testing.ros_harness import RosClient

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    node = start_node(params_file=default_params_file(), namespace="demo",
                      log_path=out_dir / "demo_node.log",
                      parameters={"checkpoint": str(checkpoint), "proposer": "wedetect",
                                  "wedetect_checkpoint": str(wedetect)})
    client = RosClient("objembed_demo")
    try:
        pub = client.node.create_publisher(Image, "/demo/image", qos_profile_sensor_data)
        ground = client.node.create_client(Ground, "/demo/grounding_node/ground")
        header = Header(frame_id="demo_camera_optical_frame")
        deadline = time.monotonic() + timeout
        request = Ground.Request(queries=list(QUERIES), top_k=3, timeout=2.0)
        while True:  # stream the photo until the node has a frame and answers
            header.stamp = client.node.get_clock().now().to_msg()
            pub.publish(rgb_to_image(rgb, header))
            if not node.alive():
                print(f"grounding node exited; log: {out_dir / 'demo_node.log'}")
                return 1
            try:
                resp = client.call(ground, request, timeout=5.0)
            except TimeoutError:
                resp = None
            if resp is not None and resp.success:
                break
            if time.monotonic() > deadline:
                why = resp.message if resp is not None else "no answer"
                print(f"no grounding from the node in {timeout:.0f} s: {why}")
                return 1
            time.sleep(0.5)
        print(f"\n~/ground answered: {resp.message}")
        for result in resp.results:
            print(f"  {result.query!r}  (frame {result.header.frame_id} "
                  f"{result.image_width}x{result.image_height}, "
                  f"{result.num_candidates} proposals)")
            for rank, obj in enumerate(result.objects, 1):
                print(f"    {rank}. score {obj.score:.4f} = sim {obj.similarity:.4f} x iou "
                      f"{obj.iou:.4f}  box [{obj.x1:.0f}, {obj.y1:.0f}, {obj.x2:.0f}, "
                      f"{obj.y2:.0f}]  proposal #{obj.proposal_index}")
        return 0
    finally:
        client.close()
        node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path("out"))
    ap.add_argument("--checkpoint", type=Path, help="ObjEmbed checkpoint directory")
    ap.add_argument("--wedetect", type=Path, help="original WeDetect-Uni .pth file")
    ap.add_argument("--image", type=Path, help="photo (default: scikit-image's astronaut)")
    ap.add_argument("--timeout", type=float, default=240.0, help="node answer timeout, s")
    ap.add_argument("--offline-only", action="store_true", help="skip the ROS node part")
    args = ap.parse_args(argv)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    untrained = args.checkpoint is None or args.wedetect is None
    checkpoint, wedetect = args.checkpoint, args.wedetect
    if untrained:
        print(f"{'!' * 60}\n!! {UNTRAINED}\n!! (no --checkpoint/--wedetect given: tiny "
              f"random checkpoints in the official formats)\n{'!' * 60}")
        tiny_ckpt, tiny_det = _demo_models(out_dir / "demo_models")
        checkpoint, wedetect = checkpoint or tiny_ckpt, wedetect or tiny_det

    from PIL import Image as PILImage

    if args.image is None:
        from skimage import data

        args.image = out_dir / "astronaut.png"
        PILImage.fromarray(data.astronaut()).save(args.image)
    rgb = np.asarray(PILImage.open(args.image).convert("RGB"))

    print(f"\n== 1/2 offline: objembed-ground on {args.image}")
    rc = run_offline(checkpoint, wedetect, args.image, out_dir, untrained)
    if rc != 0 or args.offline_only:
        return rc
    print("\n== 2/2 the ROS 2 grounding node (started through objembed-launch's launcher)")
    rc = run_node(checkpoint, wedetect, rgb, out_dir, args.timeout)
    print(f"\noutputs in {out_dir}/: demo_results.json, demo_overlay.png, demo_node.log")
    if untrained:
        print(f"({UNTRAINED})")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""objembed-replay: a rosbag2 recording in; a recording with groundings, a latency report and
(with ground truth) accuracy out. No ROS install needed.

Examples::

    objembed-replay run.mcap --checkpoint model/ObjEmbed-2B \\
        --wedetect-checkpoint model/wedetect_base_uni.pth \\
        --image-topic /camera/color/image_raw --depth-topic /camera/aligned_depth/image_raw \\
        --camera-info-topic /camera/color/camera_info --query "the red cup" -o out_bag
    objembed-replay bag_dir --checkpoint DIR --queries-file queries.yaml --rate 1 -o out
    objembed-replay bag_dir --checkpoint DIR --ground-truth gt.json --report eval.json

Box proposals as in objembed-ground: ``--proposer wedetect`` (implied by
``--wedetect-checkpoint``), ``whole-image``, or the ``grid`` fallback. Exit status: 0 done,
1 stopped early (report written for what was processed), 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.replay.bag import STORAGES

PROPOSERS = ("wedetect", "whole-image", "grid")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="objembed-replay", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 directory, .mcap or .db3 file")
    p.add_argument("--checkpoint", type=Path, required=True, help="ObjEmbed checkpoint dir")
    p.add_argument("--proposer", choices=PROPOSERS, default=None,
                   help="default: wedetect with --wedetect-checkpoint, else grid")
    p.add_argument("--wedetect-checkpoint", type=Path)
    p.add_argument("--num-proposals", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--max-boxes", type=int, default=300)
    p.add_argument("--image-topic", action="append", default=[],
                   help="colour topic (sensor_msgs/Image or CompressedImage; repeatable); "
                        "default: the recording's only image topic whose name has no 'depth'")
    p.add_argument("--depth-topic", action="append", default=[],
                   help="aligned depth (16UC1 mm / 32FC1 m), parallel to --image-topic")
    p.add_argument("--camera-info-topic", action="append", default=[],
                   help="CameraInfo, parallel to --image-topic")
    p.add_argument("--query", action="append", default=[], help="standing query (repeatable)")
    p.add_argument("--queries-file", type=Path,
                   help="YAML: a list of queries, {queries: [...]}, or a node params file "
                        "(standing_queries)")
    p.add_argument("-o", "--output", type=Path, help="output recording (must not exist)")
    p.add_argument("--output-storage", choices=STORAGES, default="mcap")
    p.add_argument("--report", type=Path,
                   help="report JSON (CSVs next to it); default <output>_report.json")
    p.add_argument("--namespace", default="/objembed",
                   help="output topics: <ns>/groundings, <ns>/markers, <ns>/debug_image")
    p.add_argument("--rate", type=float, default=0.0,
                   help="0: every frame, as fast as possible; R: R x recorded timing, frames "
                        "arriving while the model is busy are dropped (as in the node)")
    p.add_argument("--sync-slop", type=float, default=0.02,
                   help="seconds: depth pairs with a frame within this")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--debug-max-objects", type=int, default=5)
    p.add_argument("--marker-lifetime", type=float, default=0.5)
    p.add_argument("--no-overlay", action="store_true", help="do not write <ns>/debug_image")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--ground-truth", type=Path, help="COCO-style JSON (see replay.metrics)")
    p.add_argument("--eval-top-k", type=int, default=100)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    return p


def load_queries(path: Path) -> list[str]:
    """Queries from YAML: a list, {queries: [...]}, or a node params file's standing_queries
    (under <node>/ros__parameters)."""
    import yaml

    def find(node: Any) -> list[str] | None:
        if not isinstance(node, dict):
            return None
        for key in ("queries", "standing_queries"):
            if isinstance(node.get(key), list):
                return [str(q) for q in node[key]]
        for value in node.values():
            found = find(value)
            if found is not None:
                return found
        return None

    try:
        data = yaml.safe_load(path.read_text())
        found = [str(q) for q in data] if isinstance(data, list) else find(data)
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: cannot read --queries-file {path}: {exc}") from exc
    if found is None:
        raise SystemExit(f"error: {path} has no list of queries (a list, 'queries:' or "
                         "'standing_queries:')")
    return found


def build_grounder(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The Grounder (Grounder.load, as the node builds it), a boxes-per-frame function and
    the proposer's label."""
    from objembed_ros.core.boxes import grid_boxes
    from objembed_ros.grounder import Grounder, GrounderConfig

    kind = args.proposer or ("wedetect" if args.wedetect_checkpoint else "grid")
    if kind == "wedetect" and args.wedetect_checkpoint is None:
        raise SystemExit("error: --proposer wedetect needs --wedetect-checkpoint")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    grounder = Grounder.load(GrounderConfig(
        checkpoint=str(args.checkpoint),
        proposer={"wedetect": "wedetect", "whole-image": "whole_image"}.get(kind, "external"),
        wedetect_checkpoint=str(args.wedetect_checkpoint or ""),
        num_proposals=args.num_proposals, device=args.device, dtype=dtype,
        max_boxes=args.max_boxes))
    if args.device.startswith("cuda"):
        grounder.encoder.sync_timings = True  # per-stage times are only right when synced

    def boxes_for(rgb: np.ndarray) -> np.ndarray | None:
        return grid_boxes(rgb.shape[1], rgb.shape[0]) if kind == "grid" else None

    label = "grid (multi-scale sliding windows; fallback, no proposer)" if kind == "grid" \
        else kind
    return grounder, boxes_for, label


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from objembed_ros.core.errors import InputError
    from objembed_ros.encoder.checkpoint import CheckpointError
    from objembed_ros.replay.bag import ReplayError
    from objembed_ros.replay.report import summary_text
    from objembed_ros.replay.session import Replay, ReplayOptions, check_recording

    queries = list(args.query) + (load_queries(args.queries_file) if args.queries_file else [])
    if args.output is None and args.report is None:
        _parser().error("give -o/--output (a recording) and/or --report (JSON)")
    report = args.report or args.output.with_name(f"{args.output.name}_report.json")
    opts = ReplayOptions(
        bag=args.bag, output=args.output, output_storage=args.output_storage,
        report=report, image_topics=args.image_topic, depth_topics=args.depth_topic,
        camera_info_topics=args.camera_info_topic, queries=queries,
        namespace=args.namespace, rate=args.rate, sync_slop=args.sync_slop,
        top_k=args.top_k, min_score=args.min_score,
        debug_max_objects=args.debug_max_objects, marker_lifetime=args.marker_lifetime,
        overlay=not args.no_overlay, max_frames=args.max_frames,
        ground_truth=args.ground_truth, eval_top_k=args.eval_top_k,
        progress=args.progress)
    try:
        check_recording(opts)  # a bad recording or topic fails before a model is loaded
        grounder, boxes_for, label = build_grounder(args)
        opts.config = {"checkpoint": str(args.checkpoint), "proposer": label,
                       "device": args.device, "dtype": grounder.config.dtype,
                       "projector": grounder.backend}
        if queries:
            grounder.check_queries(queries)
        result = Replay(grounder, opts, boxes_for).run()
    except (ReplayError, CheckpointError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(result))
    print(f"report: {report}" + (f"; recording: {args.output}" if args.output else ""))
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Export the ObjEmbed projector + IoU head to ONNX and build TensorRT engines for this GPU.

One projector engine per camera resolution (merged grid H' x W'), one IoU-head engine per
checkpoint, each keyed (EngineKey) by model, ONNX hash, precision, box profile (up to
--max-boxes), GPU and TensorRT version, so a stale engine is rebuilt, never used. Each
precision builds from an ONNX graph exported in that precision (strongly typed networks,
TensorRT 10.x and 11.x). See model/ENGINES.md.

    python model/build_engines.py --checkpoint model/ObjEmbed-2B --resolution 1280x720 \
        --precision fp16 --max-boxes 300 --cache-dir model
    python model/build_engines.py --checkpoint DIR --resolution 640x480 --dry-run   # no GPU

Imports without tensorrt (lazy); ``--dry-run`` exports the ONNX graphs, computes the keys
and prints what it would build.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.accel import trt
from objembed_ros.accel.engine_cache import lookup_engine, model_name
from objembed_ros.accel.onnx_export import (
    PRECISIONS,
    export_iou_head,
    export_projector,
    weights_sha256,
)
from objembed_ros.core.resize import ImageProcessorConfig, merged_grid_for
from objembed_ros.core.resize import parse_size as parse_size_text
from objembed_ros.encoder.projector import ObjectProjector

log = logging.getLogger("build_engines")


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) for argparse."""
    try:
        return parse_size_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def grid_for_resolution(width: int, height: int, cfg: ImageProcessorConfig | None = None
                        ) -> tuple[int, int]:
    """The merged grid (H', W') the encoder uses for a camera resolution (official resize)."""
    return merged_grid_for(width, height, cfg or ImageProcessorConfig())


def load_projector(checkpoint: Path) -> ObjectProjector:
    """Only the ObjEmbed projector weights, float32 on CPU (no 4-9 GB backbone needed)."""
    from safetensors import safe_open

    from objembed_ros.encoder.checkpoint import load_config, weight_files

    config, _ = load_config(checkpoint)
    proj = ObjectProjector(config.text_config.hidden_size)
    wanted = proj.state_dict()
    files = weight_files(checkpoint)
    missing = sorted(k for k in wanted if k not in files)
    if missing:
        raise SystemExit(f"{checkpoint} lacks projector keys: {missing[:8]}")
    with torch.no_grad():
        for key, target in wanted.items():
            with safe_open(str(files[key]), framework="pt") as f:
                target.copy_(f.get_tensor(key).float())
    return proj.eval()


def random_projector(shapes: str) -> ObjectProjector:
    """Random weights in the real 2B/4B shapes (bench/testing engines only)."""
    hidden = {"2b": 2048, "4b": 2560}[shapes]
    torch.manual_seed(0)
    proj = ObjectProjector(hidden)
    with torch.no_grad():
        for p in proj.parameters():
            p.normal_(0.0, 0.02)
    return proj.eval()


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="ObjEmbed checkpoint directory")
    src.add_argument("--random-shapes", choices=("2b", "4b"),
                     help="random weights in the real shapes (benchmarks only)")
    p.add_argument("--resolution", type=parse_size, action="append", default=[],
                   help="camera resolution WxH (repeatable); mapped to the merged grid")
    p.add_argument("--grid", type=parse_size, action="append", default=[],
                   help="merged grid HxW directly (repeatable), e.g. 33x33")
    p.add_argument("--precision", choices=PRECISIONS, action="append", default=[],
                   help="engine precision (repeatable; default fp16)")
    p.add_argument("--max-boxes", type=int, default=300,
                   help="largest box count per frame the engines accept (the node's max_boxes)")
    p.add_argument("--cache-dir", type=Path, default=Path("model"),
                   help="ONNX go to CACHE/onnx, engines to CACHE/engines")
    p.add_argument("--model", help="name in file names/keys (default: checkpoint dir name, "
                   "as the node names it: objembed_ros.accel.engine_cache.model_name)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="export + keys only, build nothing")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    precisions = args.precision or ["fp16"]
    if args.checkpoint is not None:
        model = args.model or model_name(args.checkpoint)
        proj, checkpoint = load_projector(args.checkpoint), str(args.checkpoint)
    else:
        model = args.model or f"random-{args.random_shapes}"
        proj, checkpoint = random_projector(args.random_shapes), f"random-{args.random_shapes}"
    # --grid HxW: parse_size returns (first, second) = (H', W') here
    grids = [(g[0], g[1]) for g in args.grid]
    grids += [g for g in (grid_for_resolution(w, h) for w, h in args.resolution)
              if g not in grids]
    if not grids:
        p.error("give at least one --resolution or --grid")

    try:
        gpu, cc = trt.gpu_identity(args.device)
        version = trt.tensorrt_api().trt.__version__
    except trt.EngineError as exc:
        if not args.dry_run:
            print(f"cannot build: {exc}", file=sys.stderr)
            return 2
        gpu, cc, version = "<this GPU>", "?", "<installed TensorRT>"
        print(f"(dry run without a usable GPU/TensorRT: {exc})")

    wsha = weights_sha256(proj)
    onnx_dir, engine_dir = args.cache_dir / "onnx", args.cache_dir / "engines"
    for precision in precisions:
        graphs = [("iou_head", None, export_iou_head(proj, onnx_dir, model, checkpoint, wsha,
                                                     precision=precision))]
        graphs += [("projector", grid, export_projector(proj, grid, onnx_dir, model, checkpoint,
                                                        wsha, precision=precision))
                   for grid in grids]
        for graph, grid, exp in graphs:
            what = f"{graph} {'' if grid is None else f'{grid[0]}x{grid[1]} '}{precision}"
            print(f"onnx  {what}: {exp.path}")
            profile = trt.Profile.for_graph(graph, proj.hidden_size, args.max_boxes)
            key = trt.make_engine_key(graph, model, exp.path, precision, gpu, cc, version,
                                      profile)
            found = lookup_engine(engine_dir, key)
            if found.status == "ok" and not args.force:
                print(f"ok    {what}: {found.path}")
            elif args.dry_run:
                print(f"would build {what} ({found.status}, boxes {profile.describe()}): "
                      f"{found.path}  key {key.digest()}")
            else:
                trt.build_engine(exp.path, found.path, key, profile)
                print(f"built {what}: {found.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

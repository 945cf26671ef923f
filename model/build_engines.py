#!/usr/bin/env python3
"""Export the ObjEmbed projector + IoU head to ONNX and build TensorRT engines for this GPU.

One projector engine per camera resolution (merged grid H' x W'), one IoU-head engine per
checkpoint, each keyed (EngineKey) by model, ONNX hash, precision, GPU and TensorRT version,
so a stale engine is rebuilt, never used. See model/ENGINES.md.

    python model/build_engines.py --checkpoint model/ObjEmbed-2B --resolution 1280x720 \
        --precision fp16 --cache-dir model
    python model/build_engines.py --checkpoint model/ObjEmbed-2B --resolution 1280x720 \
        --precision int8 --calibration calibration/images.txt --cache-dir model
    python model/build_engines.py --checkpoint DIR --resolution 640x480 --dry-run   # no GPU

Imports without tensorrt (lazy); ``--dry-run`` exports the ONNX graphs, computes the keys
and prints what it would build.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.accel import trt
from objembed_ros.accel.engine_cache import lookup_engine
from objembed_ros.accel.onnx_export import (
    export_iou_head,
    export_projector,
    weights_sha256,
)
from objembed_ros.core.resize import ImageProcessorConfig, smart_resize
from objembed_ros.encoder.projector import ObjectProjector

log = logging.getLogger("build_engines")
CALIB_BOXES = trt.BOX_PROFILE[1]  # calibration runs at the profile's opt shape (100 boxes)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from exc
    return w, h


def grid_for_resolution(width: int, height: int, cfg: ImageProcessorConfig | None = None
                        ) -> tuple[int, int]:
    """The merged grid (H', W') the encoder uses for a camera resolution (official resize)."""
    cfg = cfg or ImageProcessorConfig()
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return h // cfg.factor, w // cfg.factor


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


# ---------------------------------------------------------------------- calibration data
def read_image_list(list_file: Path) -> list[tuple[Path, Path | None]]:
    """calibration/images.txt: one image per line, paths relative to the file; an optional
    second column is a boxes JSON ([[x1,y1,x2,y2], ...] in that image's pixels); '#'
    starts a comment."""
    entries = []
    for raw in list_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        image = (list_file.parent / parts[0]).resolve()
        boxes = (list_file.parent / parts[1]).resolve() if len(parts) > 1 else None
        for p in (image, boxes):
            if p is not None and not p.is_file():
                raise SystemExit(f"{list_file}: {p} does not exist")
        entries.append((image, boxes))
    if not entries:
        raise SystemExit(f"{list_file} lists no images")
    return entries


def fallback_boxes(width: int, height: int, n: int = CALIB_BOXES) -> np.ndarray:
    """A deterministic multi-scale box set covering the image (when no boxes/proposer)."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.05, 0.9, size=(n, 2)) * [width, height]
    xy = rng.uniform(0, 1, size=(n, 2)) * ([width, height] - scale)
    return np.concatenate([xy, xy + scale], axis=1)


def calibration_batches(checkpoint: Path, entries: list[tuple[Path, Path | None]],
                        resolution: tuple[int, int], device: str,
                        wedetect: Path | None) -> Iterator[dict[str, np.ndarray]]:
    """Run the real encoder up to the projector inputs for each image (resized to the camera
    resolution so the grid matches the engine): E, deepstack[-2], deepstack[-1], and
    exactly CALIB_BOXES resized-pixel boxes (proposals, listed boxes or a fixed set)."""
    from PIL import Image

    from objembed_ros.core.boxes import validate_boxes
    from objembed_ros.encoder.model import ObjEmbedEncoder

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    enc = ObjEmbedEncoder.from_pretrained(checkpoint, device=device, dtype=dtype)
    proposer = None
    if wedetect is not None:
        from objembed_ros.proposals.wedetect import WeDetectProposer

        proposer = WeDetectProposer.from_checkpoint(wedetect, device=device,
                                                    num_proposals=CALIB_BOXES)
    width, height = resolution
    for image_path, boxes_path in entries:
        rgb = np.asarray(Image.open(image_path).convert("RGB").resize((width, height),
                                                                       Image.BICUBIC))
        if boxes_path is not None:
            scale = np.array(Image.open(image_path).size * 2, dtype=np.float64)
            boxes = np.asarray(json.loads(boxes_path.read_text()), dtype=np.float64)
            boxes = boxes.reshape(-1, 4) / scale * [width, height, width, height]
        elif proposer is not None:
            boxes = np.asarray(proposer.propose(rgb).boxes, dtype=np.float64)
        else:
            boxes = fallback_boxes(width, height)
        if len(boxes) == 0:
            boxes = fallback_boxes(width, height)
        boxes = np.resize(boxes, (CALIB_BOXES, 4))  # the profile's opt shape
        with torch.inference_mode():
            pre = enc.preprocess(rgb)
            clean = validate_boxes(boxes, width, height, CALIB_BOXES)
            pix = enc.preprocessor.pixels_on(pre.pixel_values, enc.device)
            grid = torch.tensor([pre.grid_thw], device=enc.device)
            embeds, deepstack = enc.qwen.get_image_features(pix, grid)
            rboxes = enc._rescale_boxes(clean, pre)
        yield {"image_embeds": embeds[0].float().cpu().numpy(),
               "deepstack_second_last": deepstack[-2].float().cpu().numpy(),
               "deepstack_last": deepstack[-1].float().cpu().numpy(),
               "boxes": rboxes.float().cpu().numpy()}


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
    p.add_argument("--precision", choices=trt.PRECISIONS, action="append", default=[])
    p.add_argument("--calibration", type=Path, default=Path("calibration/images.txt"))
    p.add_argument("--wedetect", type=Path, help="WeDetect-Uni .pth for calibration boxes")
    p.add_argument("--cache-dir", type=Path, default=Path("model"),
                   help="ONNX go to CACHE/onnx, engines to CACHE/engines")
    p.add_argument("--model", help="name in file names/keys (default: checkpoint dir name)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry-run", action="store_true", help="export + keys only, build nothing")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    precisions = args.precision or ["fp16"]
    if args.checkpoint is not None:
        model = args.model or args.checkpoint.resolve().name.lower()
        proj, checkpoint = load_projector(args.checkpoint), str(args.checkpoint)
    else:
        model = args.model or f"random-{args.random_shapes}"
        proj, checkpoint = random_projector(args.random_shapes), f"random-{args.random_shapes}"
    # --grid HxW: parse_size returns (first, second) = (H', W') here
    grids: dict[tuple[int, int], tuple[int, int] | None] = {(g[0], g[1]): None
                                                           for g in args.grid}
    for w, h in args.resolution:
        grids.setdefault(grid_for_resolution(w, h), (w, h))
    if not grids:
        p.error("give at least one --resolution or --grid")

    wsha = weights_sha256(proj)
    onnx_dir, engine_dir = args.cache_dir / "onnx", args.cache_dir / "engines"
    graphs = [("iou_head", None, export_iou_head(proj, onnx_dir, model, checkpoint, wsha))]
    for grid in grids:
        graphs.append(("projector", grid,
                       export_projector(proj, grid, onnx_dir, model, checkpoint, wsha)))
    for graph, grid, exp in graphs:
        print(f"onnx  {graph:9s} {'' if grid is None else f'{grid[0]}x{grid[1]} '}{exp.path}")

    try:
        gpu, cc = trt.gpu_identity(args.device)
        version = trt.tensorrt_version()
    except trt.EngineError as exc:
        if not args.dry_run:
            print(f"cannot build: {exc}", file=sys.stderr)
            return 2
        gpu, cc, version = "<this GPU>", "?", "<installed TensorRT>"
        print(f"(dry run without a usable GPU/TensorRT: {exc})")

    d = proj.hidden_size
    for precision in precisions:
        for graph, grid, exp in graphs:
            calib_cache = None
            if precision == "int8":
                tag = "iou" if grid is None else f"{grid[0]}x{grid[1]}"
                calib_cache = args.calibration.parent / f"{model}-{graph}-{tag}.cache"
            try:
                key = trt.make_engine_key(graph, model, exp.path, precision, gpu, cc, version,
                                          calib_cache if calib_cache is None
                                          or calib_cache.exists() else None)
            except trt.EngineError:
                key = None  # int8 without a cache yet: built during calibration
            found = lookup_engine(engine_dir, key) if key is not None else None
            status = found.status if found is not None else "needs calibration"
            target = found.path if found is not None else engine_dir / f"{graph}-{model}-int8-*"
            what = f"{graph} {'' if grid is None else f'{grid[0]}x{grid[1]} '}{precision}"
            if found is not None and found.status == "ok" and not args.force:
                print(f"ok    {what}: {target}")
                continue
            if args.dry_run:
                print(f"would build {what} ({status}): {target}"
                      + ("" if key is None else f"  key {key.digest()}"))
                continue
            profile = trt.Profile({"hidden": (d,)} if grid is None else {"boxes": (4,)})
            calibrator = None
            if precision == "int8":
                if grid is None:
                    print(f"skip  {what}: the IoU head is tiny; use its fp16 engine")
                    continue
                res = grids[grid] or (grid[1] * 32, grid[0] * 32)
                batches = calibration_batches(
                    Path(checkpoint), read_image_list(args.calibration), res,
                    args.device, args.wedetect) if not calib_cache.exists() else iter(())
                calibrator = trt.make_calibrator(batches, calib_cache, args.device)
            out = found.path if found is not None else None
            if out is None:  # int8: key known only once the cache exists -> build, then key
                tmp = engine_dir / f"{graph}-{model}-int8-building.engine"
                provisional = dataclasses.replace(trt.make_engine_key(
                    graph, model, exp.path, "fp16", gpu, cc, version), precision="int8")
                trt.build_engine(exp.path, tmp, provisional, profile, calibrator)
                key = trt.make_engine_key(graph, model, exp.path, precision, gpu, cc, version,
                                          calib_cache)
                final = engine_dir / key.filename()
                tmp.replace(final)
                tmp.with_suffix(".json").unlink(missing_ok=True)
                from objembed_ros.accel.engine_cache import record_engine

                record_engine(final, key)
                out = final
            else:
                trt.build_engine(exp.path, out, key, profile, calibrator)
            print(f"built {what}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

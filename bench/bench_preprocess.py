"""Host budget of the frame preprocessing: ms of host CPU per frame, exact vs device mode.

    python bench/bench_preprocess.py                                     # CPU (this machine)
    python bench/bench_preprocess.py --device cuda --dtype bfloat16 --json pre_gpu.json

For 640x480, 1280x720 and 1920x1080 camera frames (a real photo resized to each) it times
everything a frame costs before the models run, for both models, as the grounder does it:

* exact:  ObjEmbed ``core.resize.preprocess_image`` (PIL bicubic, the official pixels) +
          upload of the float32 pixels; WeDetect PIL letterbox + canvas upload + /255;
* device: one uint8 upload of the frame (shared) + ObjEmbed resize/normalise/patchify and
          the WeDetect letterbox on the device (``encoder.preprocess``,
          ``proposals.letterbox_device``);
* official (reference, ObjEmbed only, host only): PIL resize + transformers'
          ``Qwen2VLImageProcessor`` (float64 rescale, the frame repeated for the temporal
          patch), i.e. what the official code spends on the host.

Columns: host CPU = ``time.process_time`` of the process over the calls (all threads; on
CUDA without waiting for the GPU: the work the host itself does); wall = until the results
exist (device synchronised). Median over ``--runs`` (>= 15) warm frames. Targets (issue 13):
exact mode <= 10 ms host CPU at 1280x720 on the 2-core dev machine; on a GPU, device mode
<= 2 ms host time per frame at 1920x1080.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "objembed_ros"))
sys.path.insert(0, str(BENCH))

from timing import cuda_sync  # noqa: E402

from objembed_ros.core.letterbox import letterbox  # noqa: E402
from objembed_ros.core.resize import (  # noqa: E402
    ImageProcessorConfig,
    preprocess_image,
    resize_rgb,
    smart_resize,
)
from objembed_ros.device_frames import StagingUploader  # noqa: E402
from objembed_ros.encoder.preprocess import preprocess_on_device  # noqa: E402
from objembed_ros.proposals.letterbox_device import letterbox_on_device  # noqa: E402

RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080))
LETTERBOX = 640  # WeDetect's input size


def camera_frame(width: int, height: int) -> np.ndarray:
    """A real photo (skimage astronaut) resized to a camera resolution, HxWx3 uint8."""
    from skimage import data

    photo = Image.fromarray(np.ascontiguousarray(data.astronaut()))
    return np.ascontiguousarray(np.asarray(photo.resize((width, height), Image.BILINEAR)))


def _exact(rgb: np.ndarray, cfg: ImageProcessorConfig, up: StagingUploader,
           dev: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    def objembed() -> Any:
        return up.upload(preprocess_image(rgb, cfg).pixel_values, dev)

    def wedetect() -> Any:
        canvas, _ = letterbox(rgb, LETTERBOX)
        return up.upload(canvas, dev).permute(2, 0, 1)[None].to(dtype) / 255.0

    return {"objembed": objembed, "wedetect": wedetect}


def _device(rgb: np.ndarray, cfg: ImageProcessorConfig, up: StagingUploader,
            dev: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    shared: dict[str, torch.Tensor] = {}

    def upload() -> Any:
        shared["frame"] = up.upload(rgb, dev)
        return shared["frame"]

    def objembed() -> Any:
        return preprocess_on_device(shared["frame"], cfg, dtype).pixel_values

    def wedetect() -> Any:
        return letterbox_on_device(shared["frame"], LETTERBOX, dtype)[0]

    return {"upload": upload, "objembed": objembed, "wedetect": wedetect}


def _official(rgb: np.ndarray, cfg: ImageProcessorConfig, up: StagingUploader,
              dev: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], Any]]:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(patch_size=cfg.patch_size, merge_size=cfg.merge_size,
                                 temporal_patch_size=cfg.temporal_patch_size,
                                 image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))

    def objembed() -> Any:
        h, w = smart_resize(*rgb.shape[:2], cfg.factor, cfg.min_pixels, cfg.max_pixels)
        return proc.preprocess(images=resize_rgb(rgb, h, w), do_resize=False,
                               return_tensors="np")["pixel_values"]

    return {"objembed": objembed}


MODES = {"exact": _exact, "device": _device, "official": _official}


def time_mode(steps: dict[str, Callable[[], Any]], dev: torch.device, warmup: int,
              runs: int) -> dict[str, dict[str, float]]:
    """Median host CPU ms per step and for the frame, and the frame's synchronised wall ms."""
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    frame_cpu: list[float] = []
    wall: list[float] = []
    for i in range(warmup + runs):
        cuda_sync(dev)
        w0, c_start = time.perf_counter(), time.process_time()
        per = {}
        for name, step in steps.items():
            c0 = time.process_time()
            step()
            per[name] = time.process_time() - c0
        c_end = time.process_time()
        cuda_sync(dev)
        w1 = time.perf_counter()
        if i >= warmup:
            for name, value in per.items():
                cpu[name].append(value)
            frame_cpu.append(c_end - c_start)
            wall.append(w1 - w0)
    ms = {name: 1000 * statistics.median(v) for name, v in cpu.items()}
    return {"host_cpu_ms": {**ms, "frame": 1000 * statistics.median(frame_cpu)},
            "wall_ms": {"frame": 1000 * statistics.median(wall)}}


def run(device: str = "cpu", dtype: str = "float32", runs: int = 15, warmup: int = 3,
        modes: tuple[str, ...] = ("exact", "device", "official")) -> dict[str, Any]:
    """The whole table as a dict (what the GPU check calls)."""
    dev = torch.device(device)
    torch_dtype = getattr(torch, dtype)
    cfg = ImageProcessorConfig()
    up = StagingUploader()
    rows = []
    for width, height in RESOLUTIONS:
        rgb = camera_frame(width, height)
        rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        for mode in modes:
            timed = time_mode(MODES[mode](rgb, cfg, up, dev, torch_dtype), dev, warmup, runs)
            rows.append({"camera": f"{width}x{height}", "resized": f"{rw}x{rh}", "mode": mode,
                         **timed})
    return {"device": str(dev), "dtype": dtype, "runs": runs, "torch_threads":
            torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"device {result['device']} ({result['dtype']}), median of {result['runs']} "
             f"frames, torch threads {result['torch_threads']}",
             "| camera | ObjEmbed input | mode | host CPU ms / frame | ObjEmbed | WeDetect "
             "| upload | wall ms / frame |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        c = r["host_cpu_ms"]

        def cell(key: str, c: dict[str, float] = c) -> str:
            return f"{c[key]:.1f}" if key in c else "-"

        lines.append(f"| {r['camera']} | {r['resized']} | {r['mode']} | {c['frame']:.1f} | "
                     f"{cell('objembed')} | {cell('wedetect')} | {cell('upload')} | "
                     f"{r['wall_ms']['frame']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="exact,device,official")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.runs < 15:
        p.error("--runs must be >= 15 (the table reports medians of at least 15 frames)")
    result = run(args.device, args.dtype, args.runs, args.warmup,
                 tuple(args.modes.split(",")))
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

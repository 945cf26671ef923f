"""Latency of WeDetect proposals per stage, and our NMS against the official-style loop.

    python bench/bench_proposals.py                      # CPU, base widths/depths, 640
    python bench/bench_proposals.py --size tiny --repeats 5
    python bench/bench_proposals.py --device cuda --fp16 --channels-last --json out.json
    python bench/bench_proposals.py --checkpoint /path/wedetect_base.pth

Without ``--checkpoint`` the weights are random with the real shapes, built in memory (no
430 MB file). Stages: ``letterbox`` (checks + PIL letterbox + tensor), ``model`` (backbone
+ neck + head), ``decode`` (DFL, priors, sigmoid), ``topk`` (top-30000), ``nms`` (ours,
stopping at ``num_proposals``), ``nms_all`` (ours, resolving all 30000 like the official),
``nms_loop`` (a straightforward port of the official per-label greedy loop in torch, the
~0.8 s per image the issue quotes), ``total`` (``propose()`` end to end) and, with ``--onnx``,
``onnxruntime_dense`` (the exported model + decode on onnxruntime's CPU provider).
Median and p90 in ms.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "objembed_ros"))

from timing import cuda_sync, summarize

from objembed_ros.proposals.select import (
    per_label_nms,
    topk_candidates,
)
from objembed_ros.proposals.wedetect import WeDetectProposer
from objembed_ros.proposals.wedetect_model import WeDetectConfig, WeDetectModel


def official_style_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       thr: float = 0.7) -> torch.Tensor:
    """torchvision's ``_batched_nms_vanilla`` + greedy ``nms``, written plainly in torch:
    one Python iteration per kept box."""
    keep_all = []
    for lab in torch.unique(labels):
        idx = torch.nonzero(labels == lab).squeeze(1)
        order = idx[torch.argsort(scores[idx], descending=True)]
        while order.numel():
            i = order[0]
            keep_all.append(i)
            rest = order[1:]
            b, r = boxes[i], boxes[rest]
            w = (torch.minimum(b[2], r[:, 2]) - torch.maximum(b[0], r[:, 0])).clamp(min=0)
            h = (torch.minimum(b[3], r[:, 3]) - torch.maximum(b[1], r[:, 1])).clamp(min=0)
            inter = w * h
            area_b = (b[2] - b[0]) * (b[3] - b[1])
            area_r = (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])
            order = rest[inter / (area_b + area_r - inter) <= thr]
    keep = torch.stack(keep_all)
    return keep[torch.argsort(scores[keep], descending=True)]


def build_proposer(args: argparse.Namespace) -> WeDetectProposer:
    dtype = torch.float16 if args.fp16 else torch.float32
    kwargs = dict(device=args.device, dtype=dtype, input_size=args.input_size,
                  channels_last=args.channels_last)
    if args.checkpoint:
        return WeDetectProposer.from_checkpoint(args.checkpoint, **kwargs)
    from objembed_ros.testing.tiny_wedetect import make_wedetect_state_dict

    depths = (1, 1, 1, 1) if args.size == "tiny" else None
    size = "base" if args.size == "tiny" else args.size
    state = make_wedetect_state_dict(size, depths, seed=0)
    with torch.device("meta"):
        model = WeDetectModel(WeDetectConfig.for_size(size, depths))
    model.load_state_dict(state, strict=True, assign=True)
    return WeDetectProposer(model, **kwargs)



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["base", "large", "tiny"], default="base")
    ap.add_argument("--checkpoint", help="an original WeDetect-Uni .pth instead of random")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the 3 photos")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-loop", action="store_true", help="skip the slow official-style NMS")
    ap.add_argument("--onnx", action="store_true",
                    help="also time the exported dense graph on onnxruntime (CPU)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    t0 = time.perf_counter()
    prop = build_proposer(args)
    build_s = time.perf_counter() - t0
    cuda = prop.device.type == "cuda"

    def sync() -> None:
        cuda_sync(prop.device)

    times: dict[str, list[float]] = {}
    same_as_loop = True

    def timed(name: str, fn, *a):
        sync()
        t = time.perf_counter()
        out = fn(*a)
        sync()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    with torch.inference_mode():
        prop.propose(photos[0])  # warm-up (allocations, oneDNN / cuDNN choices)
        for rep in range(args.repeats):
            for img in photos:
                x, _ = timed("letterbox", prop.preprocess, img)
                logits, regs = timed("model", prop.model.forward_levels, x)
                boxes, scores = timed("decode", prop.model.decode, logits, regs)
                cs, anchors, labels = timed("topk", topk_candidates, scores[0])
                cb = boxes[0][anchors]
                ours = timed("nms", per_label_nms, cb, cs, labels, 0.7, prop.num_proposals)
                full = timed("nms_all", per_label_nms, cb, cs, labels, 0.7, None)
                if not args.no_loop and rep == 0:
                    ref = timed("nms_loop", official_style_nms, cb, cs, labels)
                    same_as_loop &= bool(torch.equal(torch.sort(ref).values,
                                                     torch.sort(full).values))
                    same_as_loop &= bool(torch.equal(ref[:len(ours)], ours))
                timed("total", prop.propose, img)
    if args.onnx:
        import tempfile

        from objembed_ros.accel.wedetect_onnx import OnnxWeDetectDense, export_wedetect_onnx

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            path = export_wedetect_onnx(prop, Path(tmp) / "wedetect.onnx")
            times["onnx_export"] = [time.perf_counter() - t]
            runner = OnnxWeDetectDense(path)
            xs = [prop.preprocess(img)[0] for img in photos]
            runner(xs[0])  # warm-up
            for _ in range(args.repeats):
                for x in xs:
                    timed("onnxruntime_dense", runner, x)
    result = {
        "device": str(prop.device),
        "device_name": (torch.cuda.get_device_name(prop.device) if cuda
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "size": args.size, "checkpoint": bool(args.checkpoint),
        "depths": list(prop.config.depths), "input_size": prop.input_size,
        "dtype": str(prop.dtype), "channels_last": prop.channels_last,
        "build_s": round(build_s, 2), "torch": torch.__version__,
        "nms_equal_to_loop": same_as_loop if not args.no_loop else None,
        "stages": {k: summarize(v) for k, v in times.items()},
    }
    width = max(len(k) for k in times)
    print(f"WeDetect-{args.size} {prop.input_size}px on {result['device_name']} "
          f"({result['threads']} threads, {result['dtype']}"
          f"{', channels_last' if prop.channels_last else ''})")
    for k, v in result["stages"].items():
        print(f"  {k:<{width}}  median {v['median_ms']:9.2f} ms   p90 {v['p90_ms']:9.2f} ms"
              f"   (n={v['runs']})")
    if not args.no_loop:
        print(f"  ours == official-style loop: {same_as_loop}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if same_as_loop else 1


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())

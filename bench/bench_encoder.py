"""Encoder latency: one image pass (100 proposals, ~1089 visual tokens) and text passes.

Random weights, real shapes. ``--shapes tiny`` builds the tiny official-format checkpoint
and loads it through the normal loader (runs on CPU in well under a minute);
``--shapes 2b|4b`` builds Qwen3-VL-2B/4B-shaped modules on the meta device and
materialises random weights directly on the target device (no checkpoint needed).

    python bench/bench_encoder.py                                   # CPU, tiny
    python bench/bench_encoder.py --shapes 2b --device cuda --dtype bfloat16 --json out.json

Reports median and p90 over warm runs for: frame (encode_image, all stages), text (one
uncached query) and text batch (8 uncached queries), plus per-stage medians of the frame.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from timing import cuda_sync, summarize

from objembed_ros.encoder.checkpoint import (
    LoadedCheckpoint,
    ObjEmbedAttrs,
    load_config,
    load_tokenizer,
    resolve_attn,
)
from objembed_ros.encoder.model import ObjEmbedEncoder
from objembed_ros.encoder.projector import ObjectProjector
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

SHAPES = {
    "2b": dict(text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8),
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           deepstack_visual_indexes=[5, 11, 17])),
    "4b": dict(text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8),
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           deepstack_visual_indexes=[5, 11, 17])),
}



def build_real_shapes(tiny_dir: Path, shapes: str, device: torch.device, dtype: torch.dtype,
                      attn: str) -> ObjEmbedEncoder:
    """Qwen3-VL-2B/4B shapes, random weights created on the device (tokenizer: tiny)."""
    from transformers import Qwen3VLModel
    from transformers.modeling_utils import no_init_weights

    config, _ = load_config(tiny_dir)
    tokenizer, ids = load_tokenizer(tiny_dir)
    spec = SHAPES[shapes]
    for k, v in spec["text"].items():
        setattr(config.text_config, k, v)
    config.text_config.head_dim = 128
    config.text_config.vocab_size = 151936
    config.text_config.rope_scaling = {"rope_type": "default", "mrope_section": [24, 20, 20],
                                       "mrope_interleaved": True}
    for k, v in spec["vision"].items():
        setattr(config.vision_config, k, v)
    config.vision_config.out_hidden_size = config.text_config.hidden_size
    config.vision_config.num_position_embeddings = 2304
    impl = resolve_attn(attn, torch.device(device), dtype)
    for cfg in (config, config.text_config, config.vision_config):
        cfg.dtype = dtype
    with torch.device(device), no_init_weights():
        qwen = Qwen3VLModel._from_config(config, dtype=dtype, attn_implementation=impl)
        projector = ObjectProjector(config.text_config.hidden_size).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for module in (qwen, projector):
            for name, p in module.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=gen)
    from objembed_ros.core.resize import ImageProcessorConfig

    loaded = LoadedCheckpoint(path=tiny_dir, config=config, qwen=qwen.eval(),
                              projector=projector.eval(), tokenizer=tokenizer, token_ids=ids,
                              image_config=ImageProcessorConfig(),
                              attrs=ObjEmbedAttrs(None, True, 2, False),
                              attn_implementation=impl)
    return ObjEmbedEncoder(loaded, text_cache_size=0)



def run(args: argparse.Namespace) -> dict:
    from PIL import Image
    from skimage import data

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tmp = tempfile.TemporaryDirectory(prefix="bench_objembed_")
    tiny = make_tiny_objembed_checkpoint(Path(tmp.name) / "tiny")
    t0 = time.perf_counter()
    if args.shapes == "tiny":
        enc = ObjEmbedEncoder.from_pretrained(tiny, device=device, dtype=dtype, attn=args.attn,
                                              text_cache_size=0)
    else:
        enc = build_real_shapes(tiny, args.shapes, device, dtype, args.attn)
    build_s = time.perf_counter() - t0
    enc.sync_timings = True
    side = args.image_side
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((side, side)))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, side * 0.8, size=(args.boxes, 2))
    wh = rng.uniform(16, side * 0.5, size=(args.boxes, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, side)], axis=1)
    queries = [f"the object number {i} on the left" for i in range(8)]

    frame_t: list[float] = []
    stages: dict[str, list[float]] = {}
    frame = None
    for i in range(args.warmup + args.runs):
        cuda_sync(device)
        t = time.perf_counter()
        frame = enc.encode_image(rgb, boxes)
        cuda_sync(device)
        if i >= args.warmup:
            frame_t.append(time.perf_counter() - t)
            for k, v in frame.timings.items():
                stages.setdefault(k, []).append(v)
    text_t, batch_t = [], []
    for i in range(args.warmup + args.runs):
        cuda_sync(device)
        t = time.perf_counter()
        enc.encode_text(queries[i % 8] + f" {i}")
        cuda_sync(device)
        t1 = time.perf_counter()
        enc.encode_text([q + f" {i}" for q in queries])
        cuda_sync(device)
        if i >= args.warmup:
            text_t.append(t1 - t)
            batch_t.append(time.perf_counter() - t1)
    assert frame is not None
    mh, mw = frame.resized_size[1] // 32, frame.resized_size[0] // 32
    result = {
        "shapes": args.shapes, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "attn": enc.ckpt.attn_implementation, "boxes": args.boxes,
        "image": f"{side}x{side} -> {frame.resized_size[0]}x{frame.resized_size[1]}",
        "visual_tokens": mh * mw, "build_s": round(build_s, 2),
        "frame": summarize(frame_t), "text_1": summarize(text_t), "text_8": summarize(batch_t),
        "frame_stages_median_ms": {k: 1000 * statistics.median(v) for k, v in stages.items()},
        "torch": torch.__version__, "host": platform.node(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "peak_gpu_mem_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None),
    }
    tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", choices=("tiny", "2b", "4b"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    p.add_argument("--attn", default="auto", choices=("auto", "sdpa", "eager",
                                                      "flash_attention_2"))
    p.add_argument("--boxes", type=int, default=100)
    p.add_argument("--image-side", type=int, default=1056, help="1056 -> 33x33 = 1089 tokens")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    with torch.inference_mode():
        result = run(args)
    f, t1, t8 = result["frame"], result["text_1"], result["text_8"]
    print(f"{result['shapes']} on {result['gpu'] or result['device']} {result['dtype']} "
          f"attn={result['attn']}: {result['visual_tokens']} visual tokens, "
          f"{result['boxes']} boxes")
    print(f"  frame   median {f['median_ms']:9.1f} ms   p90 {f['p90_ms']:9.1f} ms")
    print(f"  text x1 median {t1['median_ms']:9.1f} ms   p90 {t1['p90_ms']:9.1f} ms")
    print(f"  text x8 median {t8['median_ms']:9.1f} ms   p90 {t8['p90_ms']:9.1f} ms")
    print("  stages: " + ", ".join(f"{k} {v:.1f} ms"
                                   for k, v in result["frame_stages_median_ms"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

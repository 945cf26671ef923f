"""What the device preprocessing changes in the model's outputs, versus exact mode.

    python bench/compare_preprocess_modes.py [--boxes 60] [--json out.json]

Real photos (scikit-image), the tiny random official-format checkpoint (float32, CPU), the
same random boxes in both modes: per photo, the max |difference| of the object embeddings,
IoU logits and global embeddings, the max |difference| of the grounding scores over all
queries x boxes, and top-1 agreement (same best box per query). Also the ObjEmbed input
pixels themselves (levels that differ after the resize) and the WeDetect letterbox canvas
(tiny random WeDetect, 100 proposals: how many exact-mode proposals have a device-mode
proposal at IoU >= 0.9). A random model is not the trained one:
these numbers show how far the inputs move and how much a model of this architecture
amplifies that; the trained 2B should be checked the same way where the weights exist.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from objembed_ros.encoder.model import ObjEmbedEncoder
from objembed_ros.proposals.wedetect import WeDetectProposer
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint
from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "coins", "camera")
QUERIES = ("a person", "the red cup", "a cat", "the rocket on the launch pad", "a coin",
           "the man with the camera", "a white mug", "the helmet", "a flag", "the sky",
           "the left eye", "a cup of coffee", "a saucer", "a spoon", "stars", "a galaxy",
           "cells", "a grey background", "the tripod", "grass", "the biggest object",
           "something small in the corner", "a face", "text on a sign", "a building",
           "a shadow", "the brightest region", "an animal", "a tool", "a round object",
           "the top left corner", "the bottom right", "a window", "a tree", "clouds",
           "a bright light", "a striped pattern", "a hand", "fur", "a table")


def random_boxes(rng: np.random.Generator, width: int, height: int, n: int) -> np.ndarray:
    x = np.sort(rng.uniform(0, width, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1] + 4, y[:, 1] + 4], axis=1)


def best_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each box of ``a``, its highest IoU with any box of ``b`` (xyxy)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return (inter / np.maximum(union, 1e-9)).max(1)


def _encode(enc: ObjEmbedEncoder, mode: str, rgb: np.ndarray, boxes: np.ndarray) -> Any:
    enc.preprocessor.mode = mode
    return enc.encode_image(rgb, boxes), enc.preprocess(rgb)


def compare(num_boxes: int, seed: int) -> dict[str, Any]:
    from skimage import data

    tmp = tempfile.TemporaryDirectory(prefix="objembed_cmp_")
    enc = ObjEmbedEncoder.from_pretrained(make_tiny_objembed_checkpoint(Path(tmp.name) / "t"),
                                          attn="sdpa")
    det = WeDetectProposer.from_checkpoint(
        make_wedetect_checkpoint(Path(tmp.name) / "w.pth", stage_depths=(1, 1, 1, 1)),
        num_proposals=100)
    text = enc.encode_text(list(QUERIES))
    rng = np.random.default_rng(seed)
    rows = []
    for name in PHOTOS:
        rgb = np.ascontiguousarray(getattr(data, name)())
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        height, width = rgb.shape[:2]
        boxes = random_boxes(rng, width, height, num_boxes)
        exact, pre_exact = _encode(enc, "exact", rgb, boxes)
        device, pre_device = _encode(enc, "device", rgb, boxes)
        s_exact = enc.score_objects(text, exact).numpy()
        s_device = enc.score_objects(text, device).numpy()
        pixel_diff = np.abs(pre_device.pixel_values.numpy() - pre_exact.pixel_values)
        det.preprocess_mode = "exact"
        p_exact = det.propose(rgb).boxes
        det.preprocess_mode = "device"
        p_device = det.propose(rgb).boxes
        matched = best_iou(p_exact, p_device)
        rows.append({
            "photo": name, "size": f"{width}x{height}",
            "pixels_differing": float((pixel_diff > 0).mean()),
            "pixel_max_levels": float(pixel_diff.max() * 255 / 2),  # (x/255-0.5)/0.5
            "object_embedding_max": float((exact.object_embeddings
                                           - device.object_embeddings).abs().max()),
            "object_embedding_scale": float(exact.object_embeddings.abs().max()),
            "iou_logit_max": float((exact.iou_logits - device.iou_logits).abs().max()),
            "global_embedding_max": float((exact.global_embeddings
                                           - device.global_embeddings).abs().max()),
            "score_max": float(np.abs(s_exact - s_device).max()),
            "score_range": float(s_exact.max() - s_exact.min()),
            "top1_agree": int((s_exact.argmax(1) == s_device.argmax(1)).sum()),
            "queries": len(QUERIES), "boxes": num_boxes,
            "wedetect_matched_iou09": float((matched >= 0.9).mean()),
            "wedetect_mean_best_iou": float(matched.mean()),
        })
    tmp.cleanup()
    return {"rows": rows, "seed": seed}


def table(result: dict[str, Any]) -> str:
    lines = ["| photo | size | pixels differing (max levels) | max dEmb (emb scale) | "
             "max dIoU logit | max dGlobal | max dScore (score range) | top-1 agree | "
             "WeDetect proposals kept (IoU >= 0.9) / mean best IoU |",
             "|---|---|---|---|---:|---:|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['photo']} | {r['size']} | {r['pixels_differing']:.2%} "
            f"({r['pixel_max_levels']:.0f}) | {r['object_embedding_max']:.2e} "
            f"({r['object_embedding_scale']:.1f}) | {r['iou_logit_max']:.2e} | "
            f"{r['global_embedding_max']:.2e} | {r['score_max']:.2e} ({r['score_range']:.3f})"
            f" | {r['top1_agree']}/{r['queries']} | {r['wedetect_matched_iou09']:.0%} / "
            f"{r['wedetect_mean_best_iou']:.3f} |")
    rows = result["rows"]
    agree = sum(r["top1_agree"] for r in rows)
    total = sum(r["queries"] for r in rows)
    lines.append(f"\noverall: top-1 agreement {agree}/{total} ({agree / total:.1%}) over "
                 f"{len(rows)} photos x {rows[0]['queries']} queries x {rows[0]['boxes']} "
                 f"boxes; max dScore {max(r['score_max'] for r in rows):.2e}; max dEmb "
                 f"{max(r['object_embedding_max'] for r in rows):.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boxes", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    result = compare(args.boxes, args.seed)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

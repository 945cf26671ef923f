"""Test oracle for encoder.roi_align: a literal, loop-based transcription of torchvision's
CPU RoIAlign kernel (``aligned=False``), written from its algorithm so that tests need no
torchvision. Slow; for tests only (the production code never imports objembed_ros.testing).
"""
from __future__ import annotations

import math

import torch


def roi_align_reference(features: torch.Tensor, boxes: torch.Tensor, output_size: int = 7,
                        spatial_scale: float = 1.0, sampling_ratio: int = -1) -> torch.Tensor:
    """Literal, loop-based transcription of torchvision's CPU kernel (slow; for tests)."""
    c, height, width = features.shape[-3:]
    feats = features.reshape(c, height, width)
    out = torch.zeros((boxes.shape[0], c, output_size, output_size), dtype=features.dtype)

    def bilinear(y: float, x: float) -> torch.Tensor:
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return torch.zeros(c, dtype=features.dtype)
        y = max(y, 0.0)
        x = max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1.0 - ly, 1.0 - lx
        return (hy * hx * feats[:, y_low, x_low] + hy * lx * feats[:, y_low, x_high]
                + ly * hx * feats[:, y_high, x_low] + ly * lx * feats[:, y_high, x_high])

    for k, box in enumerate(boxes.tolist()):
        sx, sy = box[0] * spatial_scale, box[1] * spatial_scale
        ex, ey = box[2] * spatial_scale, box[3] * spatial_scale
        rw, rh = max(ex - sx, 1.0), max(ey - sy, 1.0)
        bh, bw = rh / output_size, rw / output_size
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / output_size)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / output_size)
        count = max(gh * gw, 1)
        for ph in range(output_size):
            for pw in range(output_size):
                acc = torch.zeros(c, dtype=features.dtype)
                for iy in range(gh):
                    y = sy + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = sx + pw * bw + (ix + 0.5) * bw / gw
                        acc = acc + bilinear(y, x)
                out[k, :, ph, pw] = acc / count
    return out

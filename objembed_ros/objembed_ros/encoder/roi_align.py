"""Pure-torch RoIAlign with torchvision's semantics (``aligned=False``, adaptive sampling).

Why not torchvision: it is not a dependency of this package (and must not be installed
beside our pinned torch); the ONNX export of the object projector also needs plain ops.

Semantics (torchvision ``roi_align`` forward, float math):

* ``roi_start = x1 * scale`` (no half-pixel offset), ``roi_w = max(x2*scale - x1*scale, 1)``;
* ``bin = roi / out``; samples per bin ``g = ceil(roi / out)`` along each axis
  (``sampling_ratio=-1``), or ``sampling_ratio`` when positive;
* sample ``y = start + p*bin_h + (iy + .5) * bin_h / g_h`` (same operation order);
* a sample with ``y < -1 or y > H or x < -1 or x > W`` counts as zero; otherwise
  ``y <= 0 -> 0``, and ``y_low >= H-1 -> y_low = y_high = H-1, y = H-1``; bilinear weights;
* the bin value is the sum over its ``g_h * g_w`` samples divided by ``max(g_h*g_w, 1)``.

How: bilinear weights and the validity test factor into a y part and an x part, so the
average over a bin's sample grid equals ``A_y @ F @ A_x^T`` where ``A_y`` (out x H) sums
each sample row's two bilinear row weights. We build ``A_y``/``A_x`` for every box at once
(samples beyond a box's own ``g`` are masked), then two batched matmuls. No Python loop
over boxes, no data-dependent control flow when ``max_samples`` is given, the same numbers
as the literal algorithm up to float summation order.
"""
from __future__ import annotations

import math

import torch


def _axis_weights(start: torch.Tensor, size: torch.Tensor, grid: torch.Tensor, length: int,
                  out_size: int, max_samples: int) -> torch.Tensor:
    """(K, out_size, length) summed bilinear weights along one axis for every box.

    start/size/grid: (K,) float RoI start, RoI extent (already max(.,1)) and samples per bin.
    """
    dtype, device = start.dtype, start.device
    bin_size = size / out_size  # (K,)
    p = torch.arange(out_size, device=device, dtype=dtype)  # (P,)
    i = torch.arange(max_samples, device=device, dtype=dtype)  # (G,)
    # y = start + p*bin + (i + .5) * bin / grid, evaluated in torchvision's order
    base = start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
    y = base + (i[None, None, :] + 0.5) * bin_size[:, None, None] / grid[:, None, None]
    used = (i[None, None, :] < grid[:, None, None])
    valid = used & (y >= -1.0) & (y <= float(length))
    y = torch.where(y <= 0, torch.zeros_like(y), y)
    y_low = torch.floor(y)
    top = y_low >= length - 1
    y_low = torch.where(top, torch.full_like(y_low, length - 1), y_low)
    y_high = torch.where(top, y_low, y_low + 1)
    y = torch.where(top, y_low, y)
    ly = y - y_low
    hy = 1.0 - ly
    zero = torch.zeros_like(y)
    hy = torch.where(valid, hy, zero)
    ly = torch.where(valid, ly, zero)
    cells = torch.arange(length, device=device, dtype=dtype)  # (L,)
    w = (hy[..., None] * (y_low[..., None] == cells).to(dtype)
         + ly[..., None] * (y_high[..., None] == cells).to(dtype))  # (K, P, G, L)
    return w.sum(dim=2)


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int = 7,
              spatial_scale: float = 1.0, sampling_ratio: int = -1,
              max_samples: tuple[int, int] | None = None) -> torch.Tensor:
    """RoIAlign of K boxes on one feature map (torchvision semantics, ``aligned=False``).

    features: (C, H, W) or (1, C, H, W) float tensor. boxes: (K, 4) xyxy in the input-image
    coordinates that ``spatial_scale`` maps onto the map. Returns (K, C, out, out) in the
    features' dtype (compute in that dtype; callers pass float32 as the official code does).

    max_samples: static upper bounds (g_h, g_w) on samples per bin. Leave None in eager
    code (computed from the boxes, one host sync); pass a bound for export or
    sync-free GPU code. A bound below a box's true ``g`` would change results, so
    :func:`sample_bound` derives a safe one from the map size for boxes inside the image.
    """
    if features.dim() == 4:
        if features.shape[0] != 1:
            raise ValueError("roi_align takes one feature map (batch 1)")
        features = features[0]
    _, height, width = features.shape
    boxes = boxes.to(features.dtype)
    x1 = boxes[:, 0] * spatial_scale
    y1 = boxes[:, 1] * spatial_scale
    x2 = boxes[:, 2] * spatial_scale
    y2 = boxes[:, 3] * spatial_scale
    roi_w = torch.clamp(x2 - x1, min=1.0)
    roi_h = torch.clamp(y2 - y1, min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, float(sampling_ratio))
        grid_w = torch.full_like(roi_w, float(sampling_ratio))
        max_samples = (sampling_ratio, sampling_ratio)
    else:
        grid_h = torch.ceil(roi_h / output_size)
        grid_w = torch.ceil(roi_w / output_size)
        if max_samples is None:
            if boxes.shape[0] == 0:
                max_samples = (1, 1)
            else:
                max_samples = (max(int(grid_h.max().item()), 1), max(int(grid_w.max().item()), 1))
    a_y = _axis_weights(y1, roi_h, grid_h, height, output_size, max_samples[0])  # (K, P, H)
    a_x = _axis_weights(x1, roi_w, grid_w, width, output_size, max_samples[1])  # (K, P, W)
    count = torch.clamp(grid_h * grid_w, min=1.0)
    # (K, P, H) x (C, H, W) -> (K, C, P, W), then x (K, P, W)^T -> (K, C, P, P)
    rows = torch.einsum("kph,chw->kcpw", a_y, features)
    out = torch.einsum("kcpw,kqw->kcpq", rows, a_x)
    return out / count[:, None, None, None]


def sample_bound(feature_size: int, output_size: int = 7) -> int:
    """A safe static samples-per-bin bound for boxes inside the map (plus slack).

    For boxes within the image, roi <= feature_size, so ceil(roi/out) <= ceil(size/out);
    one extra sample absorbs float rounding of boxes that sit on the image border.
    """
    return math.ceil(feature_size / output_size) + 1

"""Box validation and conversions for caller-supplied xyxy boxes (numpy only).

Policy (documented in the encoder): boxes are (N, 4) float ``x1, y1, x2, y2`` in the
image's own pixels. A row with NaN/inf raises :class:`InputError` naming the row; inverted
corners are repaired by sorting each pair; boxes are clipped to ``[0, W] x [0, H]``;
zero-width or zero-height boxes are allowed (RoIAlign treats them as 1 feature pixel,
as the official model does); more than ``max_boxes`` rows raise InputError.
"""
from __future__ import annotations

import numpy as np

from objembed_ros.core.errors import InputError


def as_boxes(boxes: object) -> np.ndarray:
    """Coerce to an (N, 4) float64 array (None or empty -> (0, 4)); bad shape -> InputError."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    if hasattr(boxes, "detach"):  # a torch tensor, without importing torch here
        boxes = boxes.detach().cpu().numpy()  # type: ignore[attr-defined]
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"boxes must be numeric (N, 4) xyxy: {exc}") from exc
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"boxes must have shape (N, 4) xyxy, got {arr.shape}")
    return arr


def validate_boxes(boxes: object, width: int, height: int,
                   max_boxes: int | None = None) -> np.ndarray:
    """Checked, repaired and clipped (N, 4) float64 xyxy boxes (see the module policy)."""
    arr = as_boxes(boxes)
    if max_boxes is not None and arr.shape[0] > max_boxes:
        raise InputError(f"{arr.shape[0]} boxes given, at most {max_boxes} allowed (max_boxes)")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(str(int(r)) for r in rows[:10]) + (" ..." if rows.size > 10 else "")
        raise InputError(f"boxes contain NaN or inf in row(s) {shown}: {arr[rows[0]].tolist()}")
    out = np.empty_like(arr)
    out[:, 0] = np.minimum(arr[:, 0], arr[:, 2])
    out[:, 2] = np.maximum(arr[:, 0], arr[:, 2])
    out[:, 1] = np.minimum(arr[:, 1], arr[:, 3])
    out[:, 3] = np.maximum(arr[:, 1], arr[:, 3])
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, float(width))
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, float(height))
    return out


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) centre x, centre y, width, height."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) intersection over union (0 where the union is empty).

    Stacked sets too: (S, N, 4) x (S, M, 4) -> (S, N, M), so many small sets (the tracker's
    queries of one frame) cost one call; each entry is computed exactly as alone.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim < 3 and b.ndim < 3:
        a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    a, b = a[..., :, None, :], b[..., None, :, :]
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
             + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def grid_boxes(width: int, height: int, scales: tuple[int, ...] = (1, 2, 3, 4),
               overlap: float = 0.5) -> np.ndarray:
    """Multi-scale sliding-window boxes covering the image (a proposer-free fallback).

    Scale s tiles the image with windows of size (W/s, H/s) at stride (1-overlap) of the
    window; scale 1 is the whole image. Used by the CLI when no proposer is available.
    """
    out: list[list[float]] = []
    for s in scales:
        bw, bh = width / s, height / s
        step_x, step_y = max(bw * (1 - overlap), 1.0), max(bh * (1 - overlap), 1.0)
        ys = np.arange(0.0, height - bh + 1e-6, step_y)
        xs = np.arange(0.0, width - bw + 1e-6, step_x)
        for y in ys:
            for x in xs:
                out.append([x, y, x + bw, y + bh])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


# Per-box outcomes of repair_boxes (Ground.Response.box_status).
BOX_OK = "ok"
BOX_CLIPPED = "clipped"
BOX_REORDERED = "reordered"
BOX_REFUSED = "refused"


def repair_boxes(boxes: object, width: int, height: int) -> tuple[np.ndarray, np.ndarray,
                                                                  list[str]]:
    """Caller-supplied xyxy boxes made usable, with what was done to each, in request order.

    Returns (kept (M, 4) float64, kept_index (M,) int64 = each kept box's row in `boxes`,
    status per input row). Status is "ok", "clipped", "reordered", "reordered,clipped" or
    "refused: <why>". Refused (and not scored): a non-finite coordinate, a box wholly outside
    the ``[0, W] x [0, H]`` image, a box of zero width or height after clipping. A box that
    only touches the border (e.g. x2 == 0) is outside: it covers no pixel.
    """
    arr = as_boxes(boxes)
    status: list[str] = []
    kept: list[np.ndarray] = []
    index: list[int] = []
    for i, row in enumerate(arr):
        if not np.isfinite(row).all():
            status.append(f"{BOX_REFUSED}: not finite")
            continue
        x1, x2 = sorted((row[0], row[2]))
        y1, y2 = sorted((row[1], row[3]))
        reordered = x1 != row[0] or y1 != row[1]
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            status.append(f"{BOX_REFUSED}: wholly outside the {width}x{height} image")
            continue
        fixed = np.array([max(x1, 0.0), max(y1, 0.0), min(x2, float(width)),
                          min(y2, float(height))])
        clipped = bool((fixed != (x1, y1, x2, y2)).any())
        if fixed[2] <= fixed[0] or fixed[3] <= fixed[1]:
            status.append(f"{BOX_REFUSED}: zero area"
                          + (" after clipping" if clipped else ""))
            continue
        repairs = [name for name, done in ((BOX_REORDERED, reordered), (BOX_CLIPPED, clipped))
                   if done]
        status.append(",".join(repairs) or BOX_OK)
        kept.append(fixed)
        index.append(i)
    kept_arr = np.asarray(kept, dtype=np.float64).reshape(-1, 4)
    return kept_arr, np.asarray(index, dtype=np.int64), status

"""Depth -> 3D for grounded boxes (numpy only).

Conventions (the same as GroundedObject.msg):
- Boxes are xyxy in the SOURCE colour image's continuous pixel coordinates: pixel k covers
  [k, k+1), so the whole W x H image is (0, 0, W, H).
- Intrinsics follow sensor_msgs/CameraInfo (OpenCV): integer (u, v) is a pixel CENTRE, so a
  continuous coordinate x maps to u = x - 0.5 before back-projection.
- The depth image is aligned (registered) to the colour camera; it may have another
  resolution, in which case boxes are scaled to it. Camera intrinsics are given for their own
  (width, height) and are scaled to the colour image when that differs.
- Output is metres in the camera's optical frame: x right, y down, z forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Reasons a box gets no 3D estimate (GroundedObject.position_status).
STATUS_OK = "ok"
STATUS_NO_DEPTH = "no_depth"  # no depth image was received for this camera
STATUS_NO_CAMERA_INFO = "no_camera_info"  # no usable intrinsics
STATUS_NO_VALID_DEPTH = "no_valid_depth"  # depth exists but too few valid pixels in the box
STATUS_STALE_DEPTH = "stale_depth"  # depth exists but none close enough in time to the frame
STATUS_BAD_BOX = "bad_box"  # box empty, non-finite or outside the image


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics from CameraInfo.k, valid for an image of (width, height) pixels.

    width/height 0 means "same size as the colour image" (nothing to scale).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0
    height: int = 0

    @classmethod
    def from_k(cls, k: np.ndarray | list[float], width: int = 0, height: int = 0) -> Intrinsics:
        """From a row-major 3x3 K (CameraInfo.k)."""
        k = np.asarray(k, dtype=np.float64).reshape(-1)
        if k.size != 9:
            raise ValueError(f"K must have 9 entries, got {k.size}")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))

    def valid(self) -> bool:
        vals = (self.fx, self.fy, self.cx, self.cy)
        return all(np.isfinite(v) for v in vals) and self.fx > 0 and self.fy > 0

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """The same camera seen at another resolution (pixel-edge scaling, OpenCV centres)."""
        if self.width <= 0 or self.height <= 0 or (self.width, self.height) == (width, height):
            return Intrinsics(self.fx, self.fy, self.cx, self.cy, width, height)
        sx, sy = width / self.width, height / self.height
        # centre-of-pixel convention: u' + 0.5 = (u + 0.5) * s
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, width, height)


def camera_info_intrinsics(msg: Any) -> Intrinsics | None:
    """sensor_msgs/CameraInfo (rclpy's class or a bag reader's: only k, width and height are
    read) -> Intrinsics for (width, height); None when K is unset (zeros)."""
    k = Intrinsics.from_k(np.asarray(msg.k, dtype=np.float64), int(msg.width), int(msg.height))
    return k if k.valid() else None


@dataclass(frozen=True)
class Position3D:
    """A box's 3D estimate, or valid=False and why."""

    valid: bool
    status: str
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[float, float, float] = (0.0, 0.0, 0.0)
    samples: int = 0

    @classmethod
    def invalid(cls, status: str, samples: int = 0) -> Position3D:
        return cls(False, status, samples=samples)


def depth_to_metres(depth: np.ndarray) -> np.ndarray:
    """16UC1 millimetres or 32FC1 metres -> float32 metres; 0, NaN and inf become NaN."""
    if depth.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        out = depth.astype(np.float32) * np.float32(1e-3)
        out[depth == 0] = np.nan
        return out
    if depth.dtype in (np.float32, np.float64):
        out = depth.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out <= 0)] = np.nan
        return out
    raise ValueError(f"unsupported depth dtype {depth.dtype} (uint16 mm or float32 m)")


def box_depth_samples(depth_m: np.ndarray, box_xyxy: np.ndarray | tuple[float, ...],
                      image_size: tuple[int, int], shrink: float = 0.1) -> np.ndarray:
    """Valid depth values (metres) of the depth pixels whose centres lie inside the box.

    The box is given in colour-image pixels (image_size = (W, H)) and scaled to the depth
    image. shrink removes that fraction of the box's width and height (half on each side) so
    the background around an object's outline weighs less. At least one pixel is sampled.
    """
    h_d, w_d = depth_m.shape
    w_c, h_c = image_size
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    sx, sy = w_d / w_c, h_d / h_c
    bw, bh = (x2 - x1) * shrink / 2, (y2 - y1) * shrink / 2
    x1, x2 = (x1 + bw) * sx, (x2 - bw) * sx
    y1, y2 = (y1 + bh) * sy, (y2 - bh) * sy
    # pixel k (centre k + 0.5) is inside when x1 <= k + 0.5 < x2
    c0, c1 = int(np.ceil(x1 - 0.5)), int(np.ceil(x2 - 0.5))
    r0, r1 = int(np.ceil(y1 - 0.5)), int(np.ceil(y2 - 0.5))
    if c1 <= c0:  # thinner than a pixel: take the pixel under the centre
        c0 = int(np.floor((x1 + x2) / 2))
        c1 = c0 + 1
    if r1 <= r0:
        r0 = int(np.floor((y1 + y2) / 2))
        r1 = r0 + 1
    c0, c1 = max(c0, 0), min(c1, w_d)
    r0, r1 = max(r0, 0), min(r1, h_d)
    if c1 <= c0 or r1 <= r0:
        return np.empty(0, np.float32)
    patch = depth_m[r0:r1, c0:c1].reshape(-1)
    return patch[np.isfinite(patch)]


def estimate_position(
    box_xyxy: np.ndarray | tuple[float, ...],
    image_size: tuple[int, int],
    depth_m: np.ndarray | None,
    intrinsics: Intrinsics | None,
    *,
    shrink: float = 0.1,
    spread_percentiles: tuple[float, float] = (10.0, 90.0),
    min_samples: int = 4,
    min_valid_fraction: float = 0.0,
) -> Position3D:
    """A robust 3D point and size for one box.

    The point is the box centre back-projected at the median valid depth inside the (shrunk)
    box: the median ignores holes and a minority of background pixels. x/y size is the box
    extent at that depth; z size the spread between the two depth percentiles.
    depth_m: metres, NaN where invalid (see depth_to_metres).
    """
    if depth_m is None:
        return Position3D.invalid(STATUS_NO_DEPTH)
    if intrinsics is None or not intrinsics.valid():
        return Position3D.invalid(STATUS_NO_CAMERA_INFO)
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    w_c, h_c = image_size
    if (box.size != 4 or not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]
            or box[2] <= 0 or box[3] <= 0 or box[0] >= w_c or box[1] >= h_c):
        return Position3D.invalid(STATUS_BAD_BOX)
    samples = box_depth_samples(depth_m, box, image_size, shrink)
    n = int(samples.size)
    if n < min_samples:
        return Position3D.invalid(STATUS_NO_VALID_DEPTH, n)
    if min_valid_fraction > 0:
        total = box_depth_samples(np.zeros_like(depth_m), box, image_size, shrink).size
        if total and n / total < min_valid_fraction:
            return Position3D.invalid(STATUS_NO_VALID_DEPTH, n)
    z = float(np.median(samples))
    lo, hi = np.percentile(samples, spread_percentiles)
    k = intrinsics.scaled_to(w_c, h_c)
    u = (box[0] + box[2]) / 2 - 0.5
    v = (box[1] + box[3]) / 2 - 0.5
    x = (u - k.cx) / k.fx * z
    y = (v - k.cy) / k.fy * z
    size = ((box[2] - box[0]) / k.fx * z, (box[3] - box[1]) / k.fy * z, float(hi - lo))
    return Position3D(True, STATUS_OK, (float(x), float(y), z),
                      tuple(float(s) for s in size), n)  # type: ignore[arg-type]

"""Qwen3-VL / ObjEmbed image preprocessing with numpy and PIL only (no torch).

Why our own: transformers' ``AutoProcessor`` wants torchvision for its video processor, and
the node must preprocess on the CPU without it. Every step follows the official ObjEmbed
inference path (``qwen_vl_utils``-style ``fetch_image`` + ``Qwen2VLImageProcessor`` with
resizing off), see the ObjEmbed spec section 3:

1. ``to_rgb``: RGBA is composited on white (PIL ``paste`` with the alpha mask, as the
   official ``to_rgb``), grey HxW / HxWx1 is replicated to three channels.
2. ``smart_resize``: sides rounded to multiples of ``factor`` (Python's ``round``, i.e.
   half-to-even), then scaled into [min_pixels, max_pixels]; the ceil branch may exceed
   max_pixels (official behaviour); aspect ratio > 200 raises :class:`InputError`.
3. ``resize_rgb``: PIL bicubic resize.
4. ``patchify``: rescale (float64 multiply, cast to float32), normalise in float32,
   repeat the frame ``temporal_patch_size`` times and lay the patches out exactly as
   ``Qwen2VLImageProcessor`` does (each merge window contiguous).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from objembed_ros.core.errors import InputError
from objembed_ros.core.image import check_image

MAX_RATIO = 200
IMAGE_MIN_TOKEN_NUM = 900
IMAGE_MAX_TOKEN_NUM = 1200


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The image-processor numbers a checkpoint fixes (its ``preprocessor_config.json``).

    ``min_pixels`` / ``max_pixels`` default to the official ObjEmbed inference values
    (900 and 1200 merged tokens of 32x32 pixels), not the Qwen3-VL processor defaults.
    """

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1.0 / 255.0
    min_pixels: int = IMAGE_MIN_TOKEN_NUM * 32 * 32
    max_pixels: int = IMAGE_MAX_TOKEN_NUM * 32 * 32

    @property
    def factor(self) -> int:
        """Side multiple of the resized image: one merged token covers factor x factor px."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_json(cls, path: str | Path, **overrides: int) -> ImageProcessorConfig:
        """Read patch/merge/temporal/mean/std/rescale from a ``preprocessor_config.json``.

        The min/max pixels stay the ObjEmbed inference values unless overridden: the
        released processor config carries Qwen3-VL's generic limits, which the official
        ObjEmbed inference does not use.
        """
        raw = json.loads(Path(path).read_text())
        patch = int(raw.get("patch_size", cls.patch_size))
        merge = int(raw.get("merge_size", cls.merge_size))
        factor = patch * merge
        kwargs = dict(
            patch_size=patch,
            temporal_patch_size=int(raw.get("temporal_patch_size", cls.temporal_patch_size)),
            merge_size=merge,
            image_mean=tuple(float(v) for v in raw.get("image_mean", cls.image_mean)),
            image_std=tuple(float(v) for v in raw.get("image_std", cls.image_std)),
            rescale_factor=float(raw.get("rescale_factor", cls.rescale_factor)),
            min_pixels=IMAGE_MIN_TOKEN_NUM * factor * factor,
            max_pixels=IMAGE_MAX_TOKEN_NUM * factor * factor,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass
class PreprocessedImage:
    """Model-ready pixels plus the geometry needed to map boxes into them.

    pixel_values: (grid_h*grid_w, 3*temporal*patch*patch) float32, Qwen2-VL patch order.
    grid_thw: (1, grid_h, grid_w) in patches; merged grid is (grid_h/merge, grid_w/merge).
    resized_hw / original_hw: (height, width) in pixels.
    """

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    resized_hw: tuple[int, int]
    original_hw: tuple[int, int]
    merge_size: int

    @property
    def merged_hw(self) -> tuple[int, int]:
        """(H', W'): the visual-token grid the language model sees."""
        return self.grid_thw[1] // self.merge_size, self.grid_thw[2] // self.merge_size


def round_by_factor(number: float, factor: int) -> int:
    """Closest multiple of ``factor`` (Python ``round``: ties go to the even multiple)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int = 32,
                 min_pixels: int = IMAGE_MIN_TOKEN_NUM * 32 * 32,
                 max_pixels: int = IMAGE_MAX_TOKEN_NUM * 32 * 32) -> tuple[int, int]:
    """Target (height, width), both multiples of ``factor``, per the official ObjEmbed code.

    Raises InputError for non-positive sizes or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise InputError(f"image size must be positive, got {height}x{width} (HxW)")
    if max_pixels < min_pixels:
        raise ValueError("max_pixels must be >= min_pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise InputError(f"absolute aspect ratio must be at most {MAX_RATIO}, got {ratio:.1f}")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = floor_by_factor(height / beta, factor)
        w_bar = floor_by_factor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array.

    Accepts HxWx3 (returned as is), HxWx4 RGBA (composited on white exactly like the
    official ``to_rgb``: PIL paste with the alpha channel as mask), and HxW or HxWx1 grey
    (replicated). Anything else, an empty image or a non-uint8 dtype raises InputError.
    """
    image = check_image(image)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 3:
        return image
    rgba = Image.fromarray(np.ascontiguousarray(image), mode="RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    return np.asarray(white)


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bicubic resize of an HxWx3 uint8 array (the official ``image.resize`` default)."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    pil = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    return np.asarray(pil.resize((width, height), resample=Image.Resampling.BICUBIC))


def patchify(rgb: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Rescale, normalise and cut an HxWx3 uint8 image into Qwen2-VL's ``pixel_values``.

    Same arithmetic and layout as ``Qwen2VLImageProcessor._preprocess`` with
    ``do_resize=False``: returns (grid_h*grid_w, 3*T*P*P) float32 and (1, grid_h, grid_w).
    """
    height, width = rgb.shape[:2]
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise InputError(f"image size {height}x{width} is not a multiple of {p * m}")
    x = (rgb.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    x = (x - mean) / std
    x = x.transpose(2, 0, 1)  # C,H,W
    gh, gw = height // p, width // p
    frames = np.broadcast_to(x[None], (t,) + x.shape)  # T,C,H,W (the frame repeated)
    patches = frames.reshape(1, t, 3, gh // m, m, p, gw // m, m, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = np.ascontiguousarray(patches.reshape(gh * gw, 3 * t * p * p))
    return flat, (1, gh, gw)


def preprocess_image(image: np.ndarray, cfg: ImageProcessorConfig) -> PreprocessedImage:
    """to_rgb -> smart_resize -> bicubic resize -> patchify (spec section 3)."""
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    resized = resize_rgb(rgb, rh, rw)
    pixel_values, grid = patchify(resized, cfg)
    return PreprocessedImage(pixel_values=pixel_values, grid_thw=grid, resized_hw=(rh, rw),
                             original_hw=(height, width), merge_size=cfg.merge_size)

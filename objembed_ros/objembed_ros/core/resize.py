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
4. ``patchify``: rescale and normalise with the official arithmetic and lay the patches out
   exactly as ``Qwen2VLImageProcessor`` does (each merge window contiguous), but for ONE
   temporal slice: the official processor repeats the frame ``temporal_patch_size`` times,
   and the encoder folds that repeat into its patch embedding instead
   (``objembed_ros.encoder.preprocess.FoldedPatchEmbedding``). :func:`repeat_temporal`
   rebuilds the official layout where it is needed.

Cost (the host path of the frame loop): one PIL resize, one strided uint8 -> float32 pass
straight into the patch layout, then in-place float32 arithmetic. The official rescale
(``float32(float64(v) * rescale_factor)``) has only 256 inputs per channel, so
:func:`normalisation_table` computes it exactly and the float32 arithmetic is used only when
it reproduces that table bit for bit for every value (checked once per config); otherwise
the table itself is gathered. Either way the pixels equal the official ones bit for bit.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    pixel_values: (grid_h*grid_w, 3*patch*patch), Qwen2-VL patch order, ONE temporal slice
        (see the module docstring): float32 numpy from :func:`preprocess_image` (exact mode),
        or a tensor already on the model's device (the encoder's device mode).
    grid_thw: (1, grid_h, grid_w) in patches; merged grid is (grid_h/merge, grid_w/merge).
    resized_hw / original_hw: (height, width) in pixels.
    """

    pixel_values: Any
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


def merged_grid_for(width: int, height: int, cfg: ImageProcessorConfig) -> tuple[int, int]:
    """(H', W'): the visual-token grid a camera's WxH frames get (the grid engines are keyed
    by; equal to ``PreprocessedImage.merged_hw`` of such a frame)."""
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return h // cfg.factor, w // cfg.factor


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480); ValueError naming the text unless two positive integers."""
    parts = text.strip().lower().split("x")
    try:
        a, b = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"expected WxH such as 640x480, got {text!r}") from None
    if a <= 0 or b <= 0:
        raise ValueError(f"sizes must be positive, got {text!r}")
    return a, b


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


def normalisation_table(cfg: ImageProcessorConfig) -> np.ndarray:
    """(3, 256) float32: the official rescale + normalise of every uint8 value per channel.

    Same arithmetic as transformers' ``rescale`` (float64 multiply, cast to float32) and
    ``normalize`` (float32 ``(x - mean) / std``), so gathering from it is exact by definition.
    """
    scaled = (np.arange(256, dtype=np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None]
    return (scaled[None, :] - mean) / std


def _normalise_float32(values: np.ndarray, out: np.ndarray, cfg: ImageProcessorConfig,
                       channel_axis: int) -> np.ndarray:
    """uint8 ``values`` -> float32 ``out`` (same shape): divide by 1/rescale, subtract the
    mean, divide by std, all float32 and in place (no float64, no temporaries)."""
    shape = [1] * out.ndim
    shape[channel_axis] = 3
    np.copyto(out, values, casting="unsafe")
    np.divide(out, np.float32(1.0 / cfg.rescale_factor), out=out)
    np.subtract(out, np.asarray(cfg.image_mean, dtype=np.float32).reshape(shape), out=out)
    np.divide(out, np.asarray(cfg.image_std, dtype=np.float32).reshape(shape), out=out)
    return out


@functools.lru_cache(maxsize=16)
def float32_normalisation_is_exact(cfg: ImageProcessorConfig) -> bool:
    """Whether the fast float32 arithmetic equals the official table for all 256 values of
    every channel (an exhaustive check, so it then holds for every image)."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))
    fast = _normalise_float32(values, np.empty((3, 256), np.float32), cfg, channel_axis=0)
    return bool(np.array_equal(fast, normalisation_table(cfg)))


def patchify(rgb: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Rescale, normalise and cut an HxWx3 uint8 image into ONE temporal slice of Qwen2-VL's
    ``pixel_values``.

    Returns (grid_h*grid_w, 3*P*P) float32 and (1, grid_h, grid_w); each row equals the first
    (and every) temporal slice of the official row, bit for bit. The uint8 pixels are read in
    patch order and converted in the same pass; the arithmetic then runs in place.
    """
    height, width = rgb.shape[:2]
    p, m = cfg.patch_size, cfg.merge_size
    if height % (p * m) or width % (p * m):
        raise InputError(f"image size {height}x{width} is not a multiple of {p * m}")
    gh, gw = height // p, width // p
    # (H, W, C) -> (gh/m, gw/m, m, m, C, p, p): each merge window contiguous, C,y,x per patch
    layout = rgb.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    out = np.empty(layout.shape, dtype=np.float32)
    if float32_normalisation_is_exact(cfg):
        _normalise_float32(layout, out, cfg, channel_axis=4)
    else:
        table = normalisation_table(cfg)
        for c in range(3):
            np.take(table[c], layout[:, :, :, :, c], out=out[:, :, :, :, c])
    return out.reshape(gh * gw, 3 * p * p), (1, gh, gw)


def repeat_temporal(pixel_values: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """One-slice ``pixel_values`` -> the official (N, 3*T*P*P) layout (the frame repeated T
    times per channel), for code that feeds an unfolded patch embedding."""
    n = pixel_values.shape[0]
    p, t = cfg.patch_size, cfg.temporal_patch_size
    per_channel = pixel_values.reshape(n, 3, 1, p * p)
    return np.repeat(per_channel, t, axis=2).reshape(n, 3 * t * p * p)


def preprocess_image(image: np.ndarray, cfg: ImageProcessorConfig) -> PreprocessedImage:
    """to_rgb -> smart_resize -> bicubic resize -> patchify (spec section 3)."""
    rgb = to_rgb(image)
    height, width = rgb.shape[:2]
    rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    resized = resize_rgb(rgb, rh, rw)
    pixel_values, grid = patchify(resized, cfg)
    return PreprocessedImage(pixel_values=pixel_values, grid_thw=grid, resized_hw=(rh, rw),
                             original_hw=(height, width), merge_size=cfg.merge_size)

"""The one check every image entry point runs before its own colour conversion.

The encoder and the proposer convert differently on purpose (ObjEmbed composites RGBA on
white, WeDetect drops alpha as PIL ``convert("RGB")`` does), but what counts as an image
is the same for both, and for the grounder that feeds them.
"""
from __future__ import annotations

import numpy as np

from objembed_ros.core.errors import InputError


def check_image(image: object, max_pixels: int | None = None) -> np.ndarray:
    """An HxWxC uint8 view of `image` with C in (1, 3, 4), or InputError naming the problem.

    Accepts HxW (returned as HxWx1), HxWx1, HxWx3 and HxWx4 uint8 arrays. Empty images, other
    dtypes (no value range is guessed for float images), other shapes or channel counts, and
    more than `max_pixels` pixels (when given) are errors.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise InputError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    height, width, channels = image.shape
    if height == 0 or width == 0:
        raise InputError(f"image is empty: shape {image.shape}")
    if channels not in (1, 3, 4):
        raise InputError(f"image must have 1, 3 or 4 channels, got {channels} "
                         f"(shape {image.shape})")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(f"image of {width}x{height} = {width * height} pixels exceeds "
                         f"max_pixels={max_pixels}")
    return image

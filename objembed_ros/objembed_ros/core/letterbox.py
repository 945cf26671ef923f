"""WeDetect letterbox: image coercion, geometry, the letterboxed canvas and the way back.

numpy + PIL only (no torch), so the node, the CLI and tests share one exact copy. Every
number follows the official ``letterbox`` of WeChatCV/ObjEmbed ``generate_proposal.py``
(WeDetect spec sections 2 and 8):

* ``r = min(S/W, S/H)`` as a Python double (upscaling allowed);
* ``nw = int(round(W*r))``, ``nh = int(round(H*r))`` with Python's half-to-even ``round``
  (853 * 0.5 = 426.5 -> 426);
* PIL ``BILINEAR`` resize (it widens its filter when shrinking: OpenCV is *not* equivalent);
* paste on an (114, 114, 114) S x S canvas at ``((S-nw)//2, (S-nh)//2)`` (floor);
* boxes come back by subtracting the *float* half-paddings ``(S-nw)/2, (S-nh)/2``, dividing by
  ``float32(r)`` in float32 and clamping x to ``[0, W]`` and y to ``[0, H]`` (not W-1 / H-1).

Colour: the official detector reads files with PIL ``convert("RGB")``. We follow that: grey
is replicated to three channels and RGBA **drops** alpha (no compositing; note that the
ObjEmbed encoder's own ``to_rgb`` composites on white, the detector does not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from objembed_ros.core.errors import InputError
from objembed_ros.core.image import check_image

PAD_VALUE = 114
# 100 megapixels: an 8K frame is 33 MP. Anything bigger is almost surely a mistake (a
# mis-declared width/height) and would cost seconds in PIL before the letterbox shrinks it.
DEFAULT_MAX_PIXELS = 100_000_000


def to_rgb_uint8(image: object, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check and convert an image to a C-contiguous HxWx3 uint8 RGB array.

    Accepts HxWx3 (RGB), HxW or HxWx1 (grey, replicated as PIL ``convert("RGB")`` does)
    and HxWx4 (RGBA, alpha dropped as PIL ``convert("RGB")`` does). Anything else (empty,
    not uint8, other channel counts, more than ``max_pixels`` pixels) raises
    :class:`InputError` naming the problem: we never guess a value range for float images.
    """
    image = check_image(image, max_pixels)
    channels = image.shape[2]
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an original W x H image lies inside the S x S letterbox canvas."""

    width: int
    height: int
    size: int
    ratio: float  # r = min(S/W, S/H), a Python double
    new_width: int  # nw
    new_height: int  # nh

    @property
    def left(self) -> int:
        """Integer paste offset (floor), used for the canvas only."""
        return (self.size - self.new_width) // 2

    @property
    def top(self) -> int:
        return (self.size - self.new_height) // 2

    @property
    def half_pad(self) -> tuple[float, float]:
        """(dw/2, dh/2) as floats: what the official code subtracts from boxes."""
        return (self.size - self.new_width) / 2, (self.size - self.new_height) / 2


def letterbox_geometry(width: int, height: int, size: int) -> LetterboxGeometry:
    """Official letterbox numbers for a W x H image and an S x S canvas.

    nw/nh are at least 1: the official code would hand PIL a zero side (and fail) for
    aspect ratios beyond S:0.5; we keep such images usable instead.
    """
    if width <= 0 or height <= 0 or size <= 0:
        raise InputError(f"bad letterbox sizes: image {width}x{height}, canvas {size}")
    r = min(size / width, size / height)
    nw = max(1, int(round(width * r)))
    nh = max(1, int(round(height * r)))
    return LetterboxGeometry(int(width), int(height), int(size), r, nw, nh)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxGeometry]:
    """Letterboxed S x S x 3 uint8 canvas (bit-identical to the official PIL path).

    ``rgb`` must already be HxWx3 uint8 (see :func:`to_rgb_uint8`).
    """
    height, width = rgb.shape[:2]
    geo = letterbox_geometry(width, height, size)
    if (geo.new_width, geo.new_height) == (width, height):
        # PIL returns a plain copy for an identity resize; skip the round trip.
        resized = rgb
    else:
        resized = np.asarray(Image.fromarray(rgb)
                             .resize((geo.new_width, geo.new_height), Image.BILINEAR))
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[geo.top:geo.top + geo.new_height, geo.left:geo.left + geo.new_width] = resized
    return canvas, geo


def unletterbox_boxes(boxes: np.ndarray, geo: LetterboxGeometry) -> np.ndarray:
    """Letterbox-pixel xyxy boxes -> original-image pixels, float32, as the official code.

    ``(b - half_pad) / float32(r)`` in float32 (IEEE division, so identical to torch's
    float32 ``/=``), then x clamped to [0, W] and y to [0, H].
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    hx, hy = geo.half_pad
    out = (b - np.array([hx, hy, hx, hy], dtype=np.float32)) / np.float32(geo.ratio)
    out[:, 0::2] = np.clip(out[:, 0::2], np.float32(0), np.float32(geo.width))
    out[:, 1::2] = np.clip(out[:, 1::2], np.float32(0), np.float32(geo.height))
    return out.astype(np.float32, copy=False)

"""WeDetect letterbox (objembed_ros.core.letterbox) against a literal PIL reference and
float64 arithmetic: geometry, canvas bytes, colour conversion, the way back, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from objembed_ros.core.errors import InputError
from objembed_ros.core.letterbox import (
    letterbox,
    letterbox_geometry,
    to_rgb_uint8,
    unletterbox_boxes,
)


def reference_letterbox(img: Image.Image, size: int) -> tuple[np.ndarray, float, float, float]:
    """The official generate_proposal.py letterbox, written out with PIL."""
    w, h = img.size
    r = min(size / w, size / h)
    nw, nh = int(round(w * r)), int(round(h * r))
    resized = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(canvas), (size - nw) / 2, (size - nh) / 2, r


def _random_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


PHOTOS = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("size", [640, 1280, 320])
def test_photos_bit_identical(name: str, size: int) -> None:
    rgb = np.ascontiguousarray(PHOTOS[name])
    canvas, geo = letterbox(rgb, size)
    ref, hx, hy, r = reference_letterbox(Image.fromarray(rgb), size)
    assert canvas.dtype == np.uint8 and canvas.shape == (size, size, 3)
    assert np.array_equal(canvas, ref)
    assert geo.half_pad == (hx, hy) and geo.ratio == r


@pytest.mark.parametrize("w,h", [
    (853, 1280),   # r = 0.5 exactly: 426.5 rounds half-to-even to 426
    (335, 517),    # non-round scale, odd padding (112.5)
    (333, 517),    # non-round scale
    (641, 479),    # slight downscale, odd sizes
    (100, 50),     # upscaling x6.4
    (1, 1), (3, 2), (2, 3),  # tiny
    (1920, 1080), (480, 640), (639, 640),
])
def test_geometry_and_canvas_match_reference(w: int, h: int) -> None:
    rgb = _random_image(w, h, seed=w * 7 + h)
    canvas, geo = letterbox(rgb, 640)
    ref, hx, hy, r = reference_letterbox(Image.fromarray(rgb), 640)
    assert np.array_equal(canvas, ref)
    assert geo.ratio == r
    assert geo.half_pad == (hx, hy)
    # the paste offsets are floors of the half paddings
    assert (geo.left, geo.top) == (int(np.floor(hx)), int(np.floor(hy)))


def test_bankers_rounding_case() -> None:
    geo = letterbox_geometry(853, 1280, 640)
    assert geo.ratio == 0.5
    assert geo.new_width == 426  # not 427: Python's round(426.5) == 426
    assert geo.half_pad == (107.0, 0.0) and geo.left == 107
    geo = letterbox_geometry(855, 1280, 640)  # 427.5 -> 428 (to even)
    assert geo.new_width == 428
    odd = letterbox_geometry(335, 517, 640)
    assert odd.half_pad[0] % 1 == 0.5  # odd total padding: a .5 half-pad


def test_extreme_aspect_keeps_one_pixel() -> None:
    geo = letterbox_geometry(10000, 1, 640)
    assert geo.new_height == 1 and geo.new_width == 640
    canvas, _ = letterbox(_random_image(10000, 1), 640)
    assert canvas.shape == (640, 640, 3)


def test_grey_and_rgba_follow_pil_convert_rgb() -> None:
    grey = np.ascontiguousarray(data.camera()[::3, ::2])
    ref = np.asarray(Image.fromarray(grey).convert("RGB"))
    assert np.array_equal(to_rgb_uint8(grey), ref)
    assert np.array_equal(to_rgb_uint8(grey[:, :, None]), ref)
    rgba = np.dstack([data.astronaut()[:200, :300],
                      np.random.default_rng(1).integers(0, 256, (200, 300), dtype=np.uint8)])
    ref_rgba = np.asarray(Image.fromarray(rgba, "RGBA").convert("RGB"))  # drops alpha
    assert np.array_equal(to_rgb_uint8(rgba), ref_rgba)
    # and the canvases agree with PIL doing the conversion itself
    canvas, _ = letterbox(to_rgb_uint8(rgba), 640)
    assert np.array_equal(canvas, reference_letterbox(Image.fromarray(rgba).convert("RGB"),
                                                      640)[0])


def test_non_contiguous_input() -> None:
    rgb = np.ascontiguousarray(data.chelsea())[::-1, ::2]
    out = to_rgb_uint8(rgb)
    assert out.flags.c_contiguous and np.array_equal(out, rgb)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((5, 0), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 3), np.uint16), "uint8"),
    (np.zeros((4, 4, 2), np.uint8), "channels"),
    (np.zeros((4, 4, 5), np.uint8), "channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros(7, np.uint8), "shape"),
    ([[1, 2], [3, 4]], "numpy"),
])
def test_bad_images_raise_input_error(bad: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        to_rgb_uint8(bad)


def test_max_pixels_guard() -> None:
    img = np.zeros((100, 101, 3), np.uint8)
    with pytest.raises(InputError, match="max_pixels"):
        to_rgb_uint8(img, max_pixels=100 * 100)
    assert to_rgb_uint8(img, max_pixels=None).shape == (100, 101, 3)


@pytest.mark.parametrize("w,h", [(853, 1280), (333, 517), (100, 50), (3, 2), (512, 512)])
def test_unletterbox_float32_exact_and_close_to_float64(w: int, h: int) -> None:
    geo = letterbox_geometry(w, h, 640)
    rng = np.random.default_rng(w + h)
    boxes = rng.uniform(-80, 720, (500, 4)).astype(np.float32)
    out = unletterbox_boxes(boxes, geo)
    assert out.dtype == np.float32
    # literal float32 arithmetic of the official torch code (subtract, divide, clamp)
    hx, hy = geo.half_pad
    lit = (boxes - np.float32(hx) * np.array([1, 0, 1, 0], np.float32)
           - np.float32(hy) * np.array([0, 1, 0, 1], np.float32))
    lit = lit / np.float32(geo.ratio)
    lit[:, 0::2] = np.minimum(np.maximum(lit[:, 0::2], np.float32(0)), np.float32(w))
    lit[:, 1::2] = np.minimum(np.maximum(lit[:, 1::2], np.float32(0)), np.float32(h))
    assert np.array_equal(out, lit)
    # float64 reference: only float32 rounding apart
    ref = (boxes.astype(np.float64) - np.array([hx, hy, hx, hy])) / geo.ratio
    ref[:, 0::2] = ref[:, 0::2].clip(0, w)
    ref[:, 1::2] = ref[:, 1::2].clip(0, h)
    assert np.abs(out - ref).max() <= 4e-7 * max(w, h) + 1e-6
    assert out[:, 0::2].min() >= 0 and out[:, 0::2].max() <= w
    assert out[:, 1::2].min() >= 0 and out[:, 1::2].max() <= h
    # clamped at W and H, not W-1 / H-1
    assert (out[:, 2] == w).any() and (out[:, 3] == h).any()


def test_unletterbox_roundtrip_of_image_corners() -> None:
    geo = letterbox_geometry(333, 517, 640)
    hx, hy = geo.half_pad
    # the image's own corners in letterbox pixels map back onto [0, W] x [0, H]
    corners = np.array([[hx, hy, hx + 333 * geo.ratio, hy + 517 * geo.ratio]], np.float32)
    out = unletterbox_boxes(corners, geo)
    assert np.allclose(out, [[0, 0, 333, 517]], atol=1e-3)

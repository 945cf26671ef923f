"""smart_resize, RGB conversion and patchify against hand-computed values and transformers."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from transformers_reference import official_image_processor

from objembed_ros.core.errors import InputError
from objembed_ros.core.resize import (
    ImageProcessorConfig,
    float32_normalisation_is_exact,
    merged_grid_for,
    parse_size,
    patchify,
    preprocess_image,
    repeat_temporal,
    resize_rgb,
    smart_resize,
    to_rgb,
)

MIN_PIXELS = 900 * 32 * 32
MAX_PIXELS = 1200 * 32 * 32


def test_smart_resize_rounds_half_to_even() -> None:
    # 1008/32 = 31.5 -> 32 and 1040/32 = 32.5 -> 32 (Python round, half to even).
    assert smart_resize(1008, 1040, 32, 32 * 32, 10**9) == (1024, 1024)
    # 1000/32 = 31.25 -> 31; 1020/32 = 31.875 -> 32; tiny side stays at least one factor.
    assert smart_resize(1000, 1020, 32, 32 * 32, 10**9) == (992, 1024)
    assert smart_resize(10, 1000, 32, 32 * 32, 10**9) == (32, 992)


def test_smart_resize_floor_branch_hand_computed() -> None:
    # 3000x4000: beta = sqrt(12e6 / 1228800) = 3.125 -> 960 x 1280 (exactly max_pixels).
    assert smart_resize(3000, 4000, 32, MIN_PIXELS, MAX_PIXELS) == (960, 1280)


def test_smart_resize_ceil_branch_may_exceed_max_pixels() -> None:
    # 37x7000: rounded 32x7008 < min; beta = sqrt(921600 / 259000) = 1.88633...
    # h = ceil(69.79/32)*32 = 96, w = ceil(13204.3/32)*32 = 13216; 96*13216 > max_pixels.
    h, w = smart_resize(37, 7000, 32, MIN_PIXELS, MAX_PIXELS)
    assert (h, w) == (96, 13216)
    assert h * w > MAX_PIXELS


def test_smart_resize_small_photo_goes_up_to_min_pixels() -> None:
    # 512x512: beta = sqrt(921600/262144) = 1.875 -> 960 x 960 (900 merged tokens).
    assert smart_resize(512, 512, 32, MIN_PIXELS, MAX_PIXELS) == (960, 960)


def test_smart_resize_aspect_ratio_limit() -> None:
    smart_resize(10, 2000, 32, MIN_PIXELS, MAX_PIXELS)  # exactly 200 is allowed
    with pytest.raises(InputError, match="aspect ratio"):
        smart_resize(10, 2001, 32, MIN_PIXELS, MAX_PIXELS)
    with pytest.raises(InputError):
        smart_resize(0, 20)


def _official_pixels(resized: np.ndarray, cfg: ImageProcessorConfig) -> dict:
    ref = official_image_processor(patch_size=cfg.patch_size, merge_size=cfg.merge_size,
                                   temporal_patch_size=cfg.temporal_patch_size,
                                image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
                                rescale_factor=cfg.rescale_factor)
    return ref.preprocess(images=resized, do_resize=False, return_tensors="np")


def _assert_one_slice_of_official(mine: np.ndarray, official: np.ndarray) -> None:
    """Our rows are one temporal slice; the official rows hold the frame T=2 times."""
    assert mine.dtype == official.dtype == np.float32
    per_slice = official.reshape(official.shape[0], 3, 2, 16 * 16)
    np.testing.assert_array_equal(mine.reshape(-1, 3, 16 * 16), per_slice[:, :, 0])
    np.testing.assert_array_equal(mine.reshape(-1, 3, 16 * 16), per_slice[:, :, 1])


def test_patchify_equals_transformers_slow_processor(photo_wide: np.ndarray) -> None:
    cfg = ImageProcessorConfig()
    h, w = smart_resize(*photo_wide.shape[:2], 32, 64 * 1024, 300 * 1024)
    resized = resize_rgb(photo_wide, h, w)
    out = _official_pixels(resized, cfg)
    mine, grid = patchify(resized, cfg)
    assert grid == tuple(out["image_grid_thw"][0])
    _assert_one_slice_of_official(mine, out["pixel_values"])  # bit-exact
    np.testing.assert_array_equal(repeat_temporal(mine, cfg), out["pixel_values"])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera"])
def test_preprocess_image_is_the_official_pixels(name: str) -> None:
    """The whole exact path on real photos against the official one: PIL bicubic resize to
    the smart_resize size (qwen_vl_utils' fetch_image), then transformers' processor."""
    from skimage import data

    image = np.ascontiguousarray(getattr(data, name)())
    cfg = ImageProcessorConfig()
    pre = preprocess_image(image, cfg)
    rgb = np.asarray(Image.fromarray(image).convert("RGB"))
    h, w = smart_resize(*rgb.shape[:2], 32, cfg.min_pixels, cfg.max_pixels)
    official = _official_pixels(np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC)),
                                cfg)
    assert pre.grid_thw == tuple(official["image_grid_thw"][0])
    _assert_one_slice_of_official(pre.pixel_values, official["pixel_values"])


@pytest.mark.parametrize("rescale", [1 / 255, 1 / 3.7])
def test_patchify_table_fallback_is_exact(photo: np.ndarray, rescale: float) -> None:
    """Where float32 arithmetic cannot reproduce the official float64 rescale (1/3.7), the
    exact table is gathered instead; both agree with transformers bit for bit."""
    cfg = dataclasses.replace(ImageProcessorConfig(), rescale_factor=rescale,
                              image_mean=(0.48145466, 0.4578275, 0.40821073),
                              image_std=(0.26862954, 0.26130258, 0.27577711))
    assert float32_normalisation_is_exact(cfg) == (rescale == 1 / 255)
    resized = resize_rgb(photo, 320, 384)
    _assert_one_slice_of_official(patchify(resized, cfg)[0],
                                  _official_pixels(resized, cfg)["pixel_values"])


def test_resize_is_pil_bicubic(photo: np.ndarray) -> None:
    ours = resize_rgb(photo, 960, 992)
    ref = np.asarray(Image.fromarray(photo).resize((992, 960), Image.Resampling.BICUBIC))
    assert np.array_equal(ours, ref)


def test_to_rgb_variants(photo: np.ndarray) -> None:
    assert to_rgb(photo) is photo
    grey = photo[:, :, 0]
    assert np.array_equal(to_rgb(grey), np.repeat(grey[:, :, None], 3, axis=2))
    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[:, 256:] = 255
    alpha[:10, :10] = 128
    rgba = np.concatenate([photo, alpha[:, :, None]], axis=2)
    out = to_rgb(rgba)
    assert np.array_equal(out[:, 300:], photo[:, 300:])  # opaque: the photo
    assert (out[20:, :200] == 255).all()  # transparent: white
    blend = photo[:10, :10].astype(np.float64) * 128 / 255 + 255 * 127 / 255
    assert np.abs(out[:10, :10] - blend).max() <= 1.0


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((4, 4, 2), np.uint8), np.zeros((4,), np.uint8)])
def test_to_rgb_rejects_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        to_rgb(bad)


def test_config_from_json_and_preprocess(tmp_path, photo: np.ndarray) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                                "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    cfg = ImageProcessorConfig.from_json(path)
    assert (cfg.factor, cfg.min_pixels, cfg.max_pixels) == (32, MIN_PIXELS, MAX_PIXELS)
    pre = preprocess_image(photo, cfg)
    assert pre.resized_hw == (960, 960) and pre.merged_hw == (30, 30)
    assert pre.pixel_values.shape == (60 * 60, 3 * 16 * 16)  # one temporal slice
    assert pre.pixel_values.dtype == np.float32


def test_merged_grid_for_a_camera_resolution() -> None:
    cfg = ImageProcessorConfig()
    # 1280x720: rounded 704x1280 has 901120 < 921600 px (900 tokens), so beta = 1.0 and
    # h = ceil(720 / 32) * 32 = 736: 23 x 40 merged tokens
    assert merged_grid_for(1280, 720, cfg) == (23, 40)
    for width, height in ((1280, 720), (640, 480), (333, 517)):
        pre = preprocess_image(np.zeros((height, width, 3), np.uint8), cfg)
        assert merged_grid_for(width, height, cfg) == pre.merged_hw


def test_parse_size() -> None:
    assert parse_size("640x480") == (640, 480)
    assert parse_size(" 1280X720 ") == (1280, 720)
    for bad in ("640", "640x", "x480", "0x480", "640x-1", "axb", "1x2x3", ""):
        with pytest.raises(ValueError, match="640x480|positive"):
            parse_size(bad)

"""smart_resize, RGB conversion and patchify against hand-computed values and transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from objembed_ros.core.errors import InputError
from objembed_ros.core.resize import (
    ImageProcessorConfig,
    patchify,
    preprocess_image,
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


def test_patchify_equals_transformers_slow_processor(photo_wide: np.ndarray) -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    cfg = ImageProcessorConfig()
    h, w = smart_resize(*photo_wide.shape[:2], 32, 64 * 1024, 300 * 1024)
    resized = resize_rgb(photo_wide, h, w)
    ref = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    out = ref.preprocess(images=resized, do_resize=False, return_tensors="np")
    mine, grid = patchify(resized, cfg)
    assert grid == tuple(out["image_grid_thw"][0])
    assert mine.dtype == out["pixel_values"].dtype == np.float32
    assert np.array_equal(mine, out["pixel_values"])  # bit-exact


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
    assert pre.pixel_values.shape == (60 * 60, 3 * 2 * 16 * 16)
    # temporal repeat: both frames of every patch are the same pixels
    pv = pre.pixel_values.reshape(-1, 3, 2, 16, 16)
    assert np.array_equal(pv[:, :, 0], pv[:, :, 1])

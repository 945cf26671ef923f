"""Depth -> 3D geometry on synthetic scenes with known intrinsics and depth."""
from __future__ import annotations

import numpy as np
import pytest

from objembed_ros.core.depth import (
    STATUS_BAD_BOX,
    STATUS_NO_CAMERA_INFO,
    STATUS_NO_DEPTH,
    STATUS_NO_VALID_DEPTH,
    Intrinsics,
    box_depth_samples,
    depth_to_metres,
    estimate_position,
)

K = Intrinsics(fx=500.0, fy=520.0, cx=319.5, cy=239.5, width=640, height=480)


def tilted_plane(width: int = 640, height: int = 480, z0: float = 2.0,
                 slope: float = 0.002) -> np.ndarray:
    """Depth (m) of a plane that recedes to the right: z = z0 + slope * (u - cx)."""
    u = np.arange(width, dtype=np.float64)[None, :].repeat(height, 0)
    return (z0 + slope * (u - K.cx)).astype(np.float32)


def expected_centre(box: tuple[float, ...], z: float, k: Intrinsics = K) -> np.ndarray:
    u = (box[0] + box[2]) / 2 - 0.5
    v = (box[1] + box[3]) / 2 - 0.5
    return np.array([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z])


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_plane_point_within_one_percent(encoding: str) -> None:
    depth_m = tilted_plane()
    raw = np.round(depth_m * 1000).astype(np.uint16) if encoding == "16UC1" else depth_m
    box = (100.0, 80.0, 260.0, 300.0)
    pos = estimate_position(box, (640, 480), depth_to_metres(raw), K)
    assert pos.valid and pos.status == "ok"
    z_true = 2.0 + 0.002 * ((box[0] + box[2]) / 2 - 0.5 - K.cx)
    err = np.linalg.norm(np.array(pos.xyz) - expected_centre(box, z_true))
    assert err < 0.01 * z_true
    # size: box extent at that depth; z spread of the tilted plane over the inner 80 % box
    assert pos.size[0] == pytest.approx(160 / K.fx * pos.xyz[2], rel=1e-6)
    assert pos.size[1] == pytest.approx(220 / K.fy * pos.xyz[2], rel=1e-6)
    assert 0.0 < pos.size[2] < 0.002 * 160
    assert pos.samples == 144 * 198


def test_holes_and_background_are_ignored() -> None:
    depth = np.full((480, 640), 1.5, np.float32)
    depth[::3, ::2] = np.nan  # sensor holes
    depth[1::7, :] = 0.0  # zero = no return
    depth[5::11, 3::5] = np.inf
    box = (300.0, 200.0, 400.0, 300.0)
    depth[200:210, 300:400] = 9.0  # a sliver of background inside the box (cut by shrink too)
    pos = estimate_position(box, (640, 480), depth_to_metres(depth), K)
    assert pos.valid
    assert pos.xyz[2] == pytest.approx(1.5)


def test_depth_at_other_resolution_than_colour() -> None:
    """Aligned depth at half resolution: boxes and intrinsics are scaled consistently."""
    full = tilted_plane()
    half = full[::2, ::2].copy()  # 320x240 depth of the same scene (approximately)
    box = (100.0, 80.0, 260.0, 300.0)
    a = estimate_position(box, (640, 480), depth_to_metres(full), K)
    b = estimate_position(box, (640, 480), depth_to_metres(half), K)
    assert b.valid
    assert np.allclose(a.xyz, b.xyz, rtol=0.005)
    # intrinsics given for a lower-resolution calibration are scaled to the colour image
    # (pixel centres: (319.5 + 0.5) / 2 - 0.5 = 159.5)
    k_half = Intrinsics(fx=250.0, fy=260.0, cx=159.5, cy=119.5, width=320, height=240)
    c = estimate_position(box, (640, 480), depth_to_metres(full), k_half)
    assert np.allclose(a.xyz, c.xyz, rtol=1e-6)


def test_invalid_reasons() -> None:
    depth = depth_to_metres(np.zeros((480, 640), np.uint16))
    box = (10.0, 10.0, 50.0, 50.0)
    assert estimate_position(box, (640, 480), None, K).status == STATUS_NO_DEPTH
    assert estimate_position(box, (640, 480), depth, None).status == STATUS_NO_CAMERA_INFO
    bad_k = Intrinsics(0.0, 0.0, 0.0, 0.0)
    assert estimate_position(box, (640, 480), depth, bad_k).status == STATUS_NO_CAMERA_INFO
    pos = estimate_position(box, (640, 480), depth, K)
    assert not pos.valid and pos.status == STATUS_NO_VALID_DEPTH and pos.xyz == (0, 0, 0)
    ok = depth_to_metres(np.full((480, 640), 1000, np.uint16))
    for bad in [(np.nan, 0, 5, 5), (700, 10, 800, 20), (10, 10, 5, 5)]:
        assert estimate_position(bad, (640, 480), ok, K).status == STATUS_BAD_BOX


def test_thin_box_samples_one_column() -> None:
    depth = depth_to_metres(np.full((480, 640), 1234, np.uint16))
    samples = box_depth_samples(depth, (100.2, 100.0, 100.4, 140.0), (640, 480), shrink=0.0)
    assert samples.size == 40 and np.allclose(samples, 1.234)
    pos = estimate_position((100.2, 100.0, 100.4, 140.0), (640, 480), depth, K)
    assert pos.valid and pos.xyz[2] == pytest.approx(1.234)


def test_box_partly_outside_image_is_clipped() -> None:
    depth = depth_to_metres(np.full((480, 640), 2.0, np.float32))
    pos = estimate_position((-50.0, -50.0, 20.0, 20.0), (640, 480), depth, K)
    assert pos.valid and pos.xyz[2] == pytest.approx(2.0)


def test_intrinsics_from_k() -> None:
    k = Intrinsics.from_k([500, 0, 320, 0, 510, 240, 0, 0, 1], 640, 480)
    assert (k.fx, k.fy, k.cx, k.cy) == (500, 510, 320, 240)
    with pytest.raises(ValueError):
        Intrinsics.from_k([1, 2, 3])
    with pytest.raises(ValueError):
        depth_to_metres(np.zeros((4, 4), np.int32))

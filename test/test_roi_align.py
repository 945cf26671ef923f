"""Our vectorised RoIAlign against a literal loop transcription of torchvision's kernel."""
from __future__ import annotations

import math

import pytest
import torch

from objembed_ros.encoder.roi_align import roi_align, sample_bound
from objembed_ros.testing.roi_align_reference import roi_align_reference

MAXDIFF: dict[str, float] = {}


def _features(c: int = 5, h: int = 13, w: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((c, h, w), generator=g, dtype=torch.float64)


BOXES = [
    [0.0, 0.0, 17.0, 13.0],  # whole map
    [2.3, 1.7, 9.9, 8.2],  # interior, fractional
    [15.5, 11.2, 16.9, 12.9],  # near the bottom-right border (clamping rules)
    [-3.0, -2.0, 4.0, 5.0],  # leaving the image top-left (samples < -1 count zero)
    [12.0, 9.0, 25.0, 20.0],  # leaving bottom-right (samples > size count zero)
    [5.0, 5.0, 5.0, 9.0],  # zero width -> roi width max(., 1)
    [7.2, 3.1, 7.4, 3.3],  # tiny
    [-30.0, -30.0, -20.0, -20.0],  # completely outside: all zero
    [0.0, 0.0, 200.0, 3.0],  # wide: many samples along x, few along y
]


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.125])
def test_roi_align_matches_literal_loop(scale: float) -> None:
    feats = _features()
    boxes = torch.tensor(BOXES, dtype=torch.float64) / scale
    ours = roi_align(feats, boxes, 7, scale)
    ref = roi_align_reference(feats, boxes, 7, scale)
    diff = (ours - ref).abs().max().item()
    MAXDIFF[f"roi_align f64 scale {scale}"] = diff
    print(f"MAXDIFF roi_align float64 scale={scale}: {diff:.3e}")
    assert diff < 1e-12
    assert ours[7].abs().max().item() == 0.0  # outside box counts zero everywhere
    assert ours[3].abs().max().item() > 0.0


def test_roi_align_float32_and_sampling_ratio() -> None:
    feats = _features(seed=1)
    boxes = torch.tensor(BOXES, dtype=torch.float64)
    ref = roi_align_reference(feats, boxes, 7, 1.0)
    ours32 = roi_align(feats.float(), boxes.float(), 7, 1.0)
    diff = (ours32.double() - ref).abs().max().item()
    print(f"MAXDIFF roi_align float32 vs float64 loop: {diff:.3e}")
    assert diff < 1e-5
    ref2 = roi_align_reference(feats, boxes, 3, 1.0, sampling_ratio=2)
    assert torch.allclose(roi_align(feats, boxes, 3, 1.0, sampling_ratio=2), ref2, atol=1e-12)


def test_static_bound_gives_same_result_and_batching_is_per_box() -> None:
    feats = _features(c=3, h=40, w=36, seed=2)
    boxes = torch.tensor([[0.0, 0.0, 36.0, 40.0], [3.0, 4.0, 10.0, 30.0], [1, 1, 2, 2]],
                         dtype=torch.float64)
    bound = (sample_bound(40), sample_bound(36))
    assert bound == (math.ceil(40 / 7) + 1, math.ceil(36 / 7) + 1)
    auto = roi_align(feats, boxes, 7, 1.0)
    static = roi_align(feats, boxes, 7, 1.0, max_samples=bound)
    assert torch.equal(auto, static)
    single = torch.cat([roi_align(feats, boxes[i:i + 1], 7, 1.0) for i in range(3)])
    assert torch.allclose(auto, single, atol=1e-12)
    assert roi_align(feats, boxes[:0], 7, 1.0).shape == (0, 3, 7, 7)

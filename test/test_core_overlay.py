"""The one overlay renderer (core.overlay), pixel by pixel on a blank image."""
from __future__ import annotations

import numpy as np

from objembed_ros.core.overlay import BANNER_COLOUR, OverlayBox, colour, draw_overlay


def test_boxes_cover_their_last_pixel_in_query_colours() -> None:
    rgb = np.full((120, 240, 3), 255, np.uint8)  # width = max(1, round(120/240)) = 1 px
    out = draw_overlay(rgb, [[OverlayBox((10, 40, 50, 80), "a")],
                             [OverlayBox((100, 40, 200, 100), "b"),
                              OverlayBox((0, 0, float("nan"), 5), "skipped")]])
    assert out.shape == (120, 240, 3) and out.dtype == np.uint8
    assert (rgb == 255).all()  # input untouched
    assert tuple(out[60, 10]) == colour(0) and tuple(out[60, 49]) == colour(0)  # x1, x2 - 1
    assert tuple(out[60, 50]) == (255, 255, 255)  # pixel 50 is outside [10, 50)
    assert tuple(out[99, 150]) == colour(1) and tuple(out[70, 150]) == (255, 255, 255)
    assert tuple(out[39, 10]) == colour(0)  # label background right above the box
    assert (out[:5, :5] == 255).all()  # the NaN box was not drawn


def test_banner_and_alpha() -> None:
    rgba = np.zeros((64, 200, 4), np.uint8)
    out = draw_overlay(rgba, [], banner="UNTRAINED")
    assert out.shape == (64, 200, 3)
    red = (out[..., 0] > 128) & (out[..., 1] == 0) & (out[..., 2] == 0)  # antialiased text
    assert BANNER_COLOUR == (255, 0, 0)
    assert red[40:, :100].any() and not red[:30].any()

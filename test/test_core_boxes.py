"""Supplied-box repair with a status per box, and request indices (core/boxes.py). Expected
values are worked out by hand from the policy in repair_boxes' docstring."""
from __future__ import annotations

import math

import numpy as np

from objembed_ros.core.boxes import repair_boxes


def test_each_box_gets_an_exact_status() -> None:
    w, h = 100, 80
    boxes = [
        [10, 10, 50, 40],  # inside
        [50, 40, 10, 10],  # corners swapped
        [-5, 10, 50, 90],  # crosses left and bottom edges
        [90, 70, 120, 20],  # swapped y and crosses the right edge
        [200, 10, 300, 40],  # wholly right of the image
        [-30, -20, 0, 40],  # ends on the left edge: covers no pixel
        [20, 20, 20, 60],  # zero width
        [10, math.nan, 50, 40],
        [0, 0, math.inf, 40],
        [0, 0, 100, 80],  # the whole image
    ]
    kept, index, status = repair_boxes(np.array(boxes, np.float64), w, h)
    assert status == [
        "ok", "reordered", "clipped", "reordered,clipped",
        "refused: wholly outside the 100x80 image", "refused: wholly outside the 100x80 image",
        "refused: zero area", "refused: not finite", "refused: not finite", "ok"]
    assert index.tolist() == [0, 1, 2, 3, 9]
    assert kept.tolist() == [[10, 10, 50, 40], [10, 10, 50, 40], [0, 10, 50, 80],
                             [90, 20, 100, 70], [0, 0, 100, 80]]


def test_zero_area_after_clipping_is_named() -> None:
    _, index, status = repair_boxes([[-10, 5, 5, 5]], 100, 80)
    assert index.size == 0 and status == ["refused: zero area after clipping"]


def test_empty_input() -> None:
    kept, index, status = repair_boxes([], 10, 10)
    assert kept.shape == (0, 4) and index.size == 0 and status == []

"""The one overlay renderer: boxes and labels drawn on an image copy (numpy + PIL, no ROS).

The node's ~/debug_image (ros/viz.py), objembed-replay's debug image (both from
GroundedObjectArray messages, through `message_groups`) and the CLI's --overlay PNG (from its
results) all draw here, so they look the same: one colour per
query in request order, a box outline on the last covered pixel (pixel k covers [k, k+1)),
a filled label above the box (inside it when there is no room above).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Distinct colours (RGB 0-255), one per query in request order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)
BANNER_COLOUR = (255, 0, 0)


def colour(index: int) -> tuple[int, int, int]:
    """The colour of query `index` (the palette repeats after 10 queries)."""
    return PALETTE[index % len(PALETTE)]


@dataclass(frozen=True)
class OverlayBox:
    """One box to draw: xyxy source pixels and its label text."""

    box: tuple[float, float, float, float]
    label: str


def message_groups(arrays: Sequence[Any], max_per_query: int = 5) -> list[list[OverlayBox]]:
    """GroundedObjectArray messages (rclpy's or rosbags' classes alike: only fields are read)
    -> one group per query: its best boxes labelled "label score [z m]"."""
    groups = []
    for arr in arrays:
        items = []
        for obj in list(arr.objects)[:max_per_query]:
            label = f"{obj.label} {obj.score:.2f}"
            if obj.position_valid:
                label += f" {obj.position.z:.2f}m"
            items.append(OverlayBox((obj.x1, obj.y1, obj.x2, obj.y2), label))
        groups.append(items)
    return groups


def draw_overlay(rgb: np.ndarray, groups: Sequence[Sequence[OverlayBox]],
                 banner: str | None = None) -> np.ndarray:
    """The image (HxWx3 or HxWx4 uint8; alpha ignored) with group i's boxes in colour(i),
    as a new HxWx3 uint8 array. Boxes with a non-finite coordinate are skipped. banner: a
    line written at the bottom left (e.g. that the weights are untrained)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(min(img.size) / 240))
    for gi, group in enumerate(groups):
        fill = colour(gi)
        for item in group:
            if not all(math.isfinite(v) for v in item.box):
                continue
            x1, y1, x2, y2 = item.box
            x2, y2 = max(x2 - 1, x1), max(y2 - 1, y1)  # last covered pixel
            draw.rectangle((x1, y1, x2, y2), outline=fill, width=width)
            left, top, right, bottom = draw.textbbox((x1, y1), item.label)
            ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
            draw.rectangle((x1, ty, x1 + (right - left) + 2, ty + (bottom - top) + 2), fill=fill)
            draw.text((x1 + 1, ty), item.label, fill=(0, 0, 0))
    if banner:
        _, top, _, bottom = draw.textbbox((0, 0), banner)
        draw.text((4, img.height - (bottom - top) - 4), banner, fill=BANNER_COLOUR)
    return np.asarray(img)

"""The WeDetect letterbox on the model's device (torch), next to the exact PIL one.

Same geometry as :func:`objembed_ros.core.letterbox.letterbox` (``letterbox_geometry``: the
official r, nw, nh and floor paste offsets, so boxes map back with the same
``unletterbox_boxes``); only the resize differs: torch's antialiased bilinear (PIL's filter
widths) rounded to integers, instead of PIL's fixed-point BILINEAR. Then the official order:
cast to the model dtype, divide by 255.
"""
from __future__ import annotations

import torch

from objembed_ros.core.letterbox import PAD_VALUE, LetterboxGeometry, letterbox_geometry
from objembed_ros.device_frames import resize_on_device


def letterbox_on_device(rgb: torch.Tensor, size: int, dtype: torch.dtype
                        ) -> tuple[torch.Tensor, LetterboxGeometry]:
    """HxWx3 uint8 tensor (on any device) -> ([1, 3, S, S] ``dtype`` in [0, 1], geometry)."""
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    geo = letterbox_geometry(width, height, size)
    resized = resize_on_device(rgb.permute(2, 0, 1)[None].float(), geo.new_height,
                               geo.new_width, "bilinear")
    canvas = torch.full((1, 3, size, size), float(PAD_VALUE), dtype=torch.float32,
                        device=rgb.device)
    canvas[:, :, geo.top:geo.top + geo.new_height, geo.left:geo.left + geo.new_width] = resized
    return canvas.to(dtype) / 255.0, geo

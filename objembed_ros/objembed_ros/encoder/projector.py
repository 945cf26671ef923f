"""The ObjEmbed modules around Qwen3-VL, with the exact stored key names (spec section 2).

``ObjectProjector().state_dict()`` keys equal the checkpoint keys::

    model.image_pos_projector.{0,2}.*      Linear(D,D), GELU, Linear(D,D)
    model.object_pos_projector.{0,2}.*     Linear(D,D), GELU, Linear(D,D)
    model.object_vision_projector.{0,2}.*  Linear(49D,D) | Linear(D,D) (D > 4000), GELU, Linear(D,D)
    model.second_scale_conv.*              ConvTranspose2d(D, D/2, 2, 2)
    model.first_scale_conv1.*              ConvTranspose2d(D, D/2, 2, 2)
    model.first_scale_norm.*               LayerNorm(D/2, eps 1e-5)
    model.first_scale_conv2.*              ConvTranspose2d(D/2, D/4, 2, 2)
    model.merge.*                          Linear(D/4 + D/2 + D, D)
    logit_iou_proj.{0,2}.*                 Linear(D, D/2), GELU, Linear(D/2, 1)
    logit_pos_embedding.weight             Embedding(1, D)
    logit_log_scale, logit_bias, logit_image_log_scale, logit_image_bias   shape (1,)

``forward(E, deepstack_second_last, deepstack_last, boxes, merged_hw)`` is pure tensor code
(no ``.item()``, no host copies, no branches on tensor values) so that it can be exported
to ONNX with a dynamic number of boxes; ``merged_hw`` is a pair of Python ints (the graph
is specialised to one image size). Inputs:

* ``E``: (H'W', D) merged visual tokens in raster order, before any position add;
* ``deepstack_second_last`` / ``deepstack_last``: (H'W', D) = deepstack[-2], deepstack[-1];
* ``boxes``: (K, 4) xyxy in resized-image pixels (inside ``[0, 32W'] x [0, 32H']``);

and outputs ``(object_tokens, second_tokens, image_pos)``, (K, D), (K, D), (H'W', D):
``object_tokens = R_i + P_i`` (first ``<object>`` of pair i), ``second_tokens =
logit_pos_embedding[0] + P_i`` and ``image_pos`` = image_pos_projector(sine(y, x)), the
addend for the image-pad tokens. Dtypes follow the official code: everything in the module
dtype, except RoIAlign, which runs in float32 and is cast back.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from objembed_ros.encoder.roi_align import roi_align, sample_bound

ROI_SIZE = 7
WIDE_HIDDEN = 4000  # above this D the vision projector averages the 7x7 cells


def sine_embedding(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine embedding of (K, k) coordinates to (K, dim); k = 2 -> blocks (y, x), k = 4 ->
    (cy, cx, w, h) for input columns (x, y, w, h) -- the official ``gen_sineembed``.

    Computed in ``pos.dtype`` with the official operation order, so bf16 inputs give the
    official bf16 numbers.
    """
    k = pos.shape[-1]
    d = dim // k
    dim_t = torch.arange(d, dtype=pos.dtype, device=pos.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / d)
    scale = 2 * math.pi

    def block(v: torch.Tensor) -> torch.Tensor:
        p = (v * scale)[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    if k == 2:
        return torch.cat((block(pos[:, 1]), block(pos[:, 0])), dim=1)
    if k == 4:
        return torch.cat((block(pos[:, 1]), block(pos[:, 0]), block(pos[:, 2]),
                          block(pos[:, 3])), dim=1)
    raise ValueError(f"sine_embedding takes 2 or 4 coordinates, got {k}")


def dummy_box(merged_hw: tuple[int, int], dtype: torch.dtype,
              device: torch.device | str) -> torch.Tensor:
    """The official no-box placeholder [0, 0, 32W', 32H'] in resized pixels (spec 5.4).

    With no boxes it goes through every projector step and its outputs are dropped; the
    encoder and the ONNX/TensorRT runtimes (whose graphs need N >= 1) both use this one.
    """
    mh, mw = int(merged_hw[0]), int(merged_hw[1])
    return torch.tensor([[0.0, 0.0, 32.0 * mw, 32.0 * mh]], dtype=dtype, device=device)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class _Inner(nn.Module):
    """Holds the modules stored under ``model.*`` in the checkpoint."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.image_pos_projector = _mlp(d, d, d)
        wide = d > WIDE_HIDDEN
        self.object_vision_projector = _mlp(d if wide else d * ROI_SIZE * ROI_SIZE, d, d)
        self.object_pos_projector = _mlp(d, d, d)
        self.second_scale_conv = nn.ConvTranspose2d(d, d // 2, kernel_size=2, stride=2)
        self.first_scale_conv1 = nn.ConvTranspose2d(d, d // 2, kernel_size=2, stride=2)
        self.first_scale_norm = nn.LayerNorm(d // 2)
        self.first_scale_conv2 = nn.ConvTranspose2d(d // 2, d // 4, kernel_size=2, stride=2)
        self.merge = nn.Linear(d // 4 + d // 2 + d, d)


class ObjectProjector(nn.Module):
    """ObjEmbed's box/image-position modules and logit scalars (see the module docstring)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        d = int(hidden_size)
        self.hidden_size = d
        self.model = _Inner(d)
        self.logit_iou_proj = _mlp(d, d // 2, 1)
        self.logit_pos_embedding = nn.Embedding(1, d)
        for name in ("logit_log_scale", "logit_bias", "logit_image_log_scale",
                     "logit_image_bias"):
            setattr(self, name, nn.Parameter(torch.zeros(1)))

    @property
    def wide(self) -> bool:
        """True when D > 4000: the vision projector takes the mean over the 7x7 cells."""
        return self.hidden_size > WIDE_HIDDEN

    def image_positions(self, merged_h: int, merged_w: int) -> torch.Tensor:
        """(H'W', D) image_pos_projector(sine(y, x)) with x = c/W' + .5, y = r/H' + .5."""
        w = self.logit_pos_embedding.weight
        xs = torch.arange(merged_w, device=w.device, dtype=torch.float32) / merged_w
        ys = torch.arange(merged_h, device=w.device, dtype=torch.float32) / merged_h
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        coords = (torch.stack((xx, yy), dim=-1).reshape(-1, 2) + 0.5).to(w.dtype)
        return self.model.image_pos_projector(sine_embedding(coords, self.hidden_size))

    def pyramid(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                ds_last: torch.Tensor, merged_h: int, merged_w: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S1, S2, S3) channels-first maps: D/4 x 4H' x 4W', D/2 x 2H' x 2W', D x H' x W'."""
        d = self.hidden_size
        inner = self.model

        def to_map(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, merged_h, merged_w, d).permute(0, 3, 1, 2).contiguous()

        s1 = inner.first_scale_conv1(to_map(ds_second_last)).permute(0, 2, 3, 1)
        s1 = nn.functional.gelu(inner.first_scale_norm(s1)).permute(0, 3, 1, 2)
        s1 = inner.first_scale_conv2(s1)
        s2 = inner.second_scale_conv(to_map(ds_last))
        s3 = to_map(image_embeds)
        return s1[0], s2[0], s3[0]

    def box_positions(self, boxes: torch.Tensor, merged_h: int, merged_w: int) -> torch.Tensor:
        """(K, D) object_pos_projector(sine(cx, cy, w, h normalised by 32W', 32H'))."""
        dtype = self.logit_pos_embedding.weight.dtype
        b = boxes.to(dtype)
        cxcywh = torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                              b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), dim=1)
        size = torch.tensor([merged_w * 32, merged_h * 32, merged_w * 32, merged_h * 32],
                            dtype=dtype, device=b.device)
        return self.model.object_pos_projector(sine_embedding(cxcywh / size, self.hidden_size))

    def roi_features(self, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor,
                     boxes: torch.Tensor) -> torch.Tensor:
        """(K, D) R_i: float32 RoIAlign at 1/8, 1/16, 1/32, merge, object_vision_projector."""
        dtype = s3.dtype
        b = boxes.float()
        feats = []
        for fmap, scale in ((s1, 1 / 8), (s2, 1 / 16), (s3, 1 / 32)):
            bound = (sample_bound(fmap.shape[-2]), sample_bound(fmap.shape[-1]))
            feats.append(roi_align(fmap.float(), b, ROI_SIZE, scale, -1, bound).to(dtype))
        roi = torch.cat(feats, dim=1).permute(0, 2, 3, 1)  # (K, 7, 7, D/4 + D/2 + D)
        roi = self.model.merge(roi)  # (K, 7, 7, D)
        if self.wide:
            return self.model.object_vision_projector(roi.flatten(1, 2).mean(dim=1))
        return self.model.object_vision_projector(roi.flatten(1))

    def forward(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                ds_last: torch.Tensor, boxes: torch.Tensor, merged_hw: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        merged_h, merged_w = int(merged_hw[0]), int(merged_hw[1])
        s1, s2, s3 = self.pyramid(image_embeds, ds_second_last, ds_last, merged_h, merged_w)
        roi = self.roi_features(s1, s2, s3, boxes)
        pos = self.box_positions(boxes, merged_h, merged_w)
        second = self.logit_pos_embedding.weight[0][None, :] + pos
        return roi + pos, second, self.image_positions(merged_h, merged_w)

    def iou_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(K, D) last hidden states at the second ``<object>`` tokens -> (K,) iou logits."""
        return self.logit_iou_proj(hidden).squeeze(-1)

"""The frame's way onto the model's device, and the folded patch embedding that takes it.

Two preprocessing modes (``PREPROCESS_MODES``), both producing ONE temporal slice of
Qwen2-VL's ``pixel_values`` (N, 3*P*P) for :class:`FoldedPatchEmbedding`:

* ``"exact"``: :func:`objembed_ros.core.resize.preprocess_image` on the host (PIL bicubic,
  the official pixels bit for bit), then one float32 upload.
* ``"device"``: one uint8 upload of the frame, then smart-resize (torch's antialiased bicubic
  in PIL's two rounded passes, ``device_frames.resize_on_device``), the official float32 rescale /
  normalise arithmetic and the patch layout on the model's device. Only the resize differs
  from exact mode (see README "Preprocessing modes" for what that changes in the outputs).

Uploads go through :class:`objembed_ros.device_frames.StagingUploader` (reused pinned
buffers on CUDA; one upload per frame shared with the WeDetect letterbox).

The temporal fold: Qwen3-VL's patch embedding is a Conv3d with kernel (T=2, P, P) and stride
equal to the kernel, applied to a frame repeated T times. Its output for identical temporal
slices equals a Linear over one slice with the kernel summed over T (the sum is folded once,
in float64, then rounded once to the model dtype): half the FLOPs and half the pixel bytes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from objembed_ros.core.resize import (
    ImageProcessorConfig,
    PreprocessedImage,
    preprocess_image,
    smart_resize,
    to_rgb,
)
from objembed_ros.device_frames import StagingUploader, resize_on_device

PREPROCESS_MODES = ("exact", "device")
PREPROCESS_CHOICES = ("auto",) + PREPROCESS_MODES


def resolve_preprocess_mode(mode: str, device: str | torch.device) -> str:
    """"auto" -> "device" on CUDA, "exact" elsewhere (measured: README "Preprocessing modes");
    "exact"/"device" pass through; anything else raises ValueError."""
    if mode not in PREPROCESS_CHOICES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_CHOICES}, got {mode!r}")
    if mode == "auto":
        return "device" if torch.device(device).type == "cuda" else "exact"
    return mode


# ---------------------------------------------------------------------- patch embedding
class FoldedPatchEmbedding(nn.Module):
    """Drop-in for transformers' ``Qwen3VLVisionPatchEmbed`` that also takes one temporal slice.

    Rows of 3*P*P values (one slice, channel-major, as :func:`core.resize.patchify` lays
    them out) go through the folded Linear; rows of 3*T*P*P values (the official layout,
    possibly with different slices) go through the original Conv3d unchanged. ``proj`` is the
    original module, so parameter names and the state dict are those of the checkpoint.
    """

    def __init__(self, patch_embed: nn.Module) -> None:
        super().__init__()
        self.patch_size = int(patch_embed.patch_size)
        self.temporal_patch_size = int(patch_embed.temporal_patch_size)
        self.in_channels = int(patch_embed.in_channels)
        self.embed_dim = int(patch_embed.embed_dim)
        self.proj = patch_embed.proj
        weight = self.proj.weight.detach()  # (D, C, T, P, P)
        folded = weight.double().sum(dim=2).reshape(self.embed_dim, -1)
        self.register_buffer("folded_weight", folded.to(weight.dtype), persistent=False)

    @property
    def slice_size(self) -> int:
        """Values per row of one temporal slice: C*P*P."""
        return self.in_channels * self.patch_size * self.patch_size

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = self.proj.weight.dtype
        width = hidden_states.shape[-1]
        if width == self.slice_size:
            return F.linear(hidden_states.to(dtype), self.folded_weight, self.proj.bias)
        if width == self.slice_size * self.temporal_patch_size:
            x = hidden_states.view(-1, self.in_channels, self.temporal_patch_size,
                                   self.patch_size, self.patch_size)
            return self.proj(x.to(dtype)).view(-1, self.embed_dim)
        raise ValueError(f"pixel rows must hold {self.slice_size} (one temporal slice) or "
                         f"{self.slice_size * self.temporal_patch_size} values, got {width}")


def fold_patch_embedding(visual: nn.Module) -> FoldedPatchEmbedding:
    """Replace ``visual.patch_embed`` by its folded form (once; idempotent). Call after the
    weights are loaded: the folded kernel is a copy taken now."""
    if not isinstance(visual.patch_embed, FoldedPatchEmbedding):
        visual.patch_embed = FoldedPatchEmbedding(visual.patch_embed)
    return visual.patch_embed


# ---------------------------------------------------------------------- preprocessing
def normalise_on_device(chw: torch.Tensor, cfg: ImageProcessorConfig) -> torch.Tensor:
    """(..., 3, H, W) float32 0..255 -> the official float32 arithmetic of
    ``core.resize._normalise_float32`` (divide by 1/rescale, minus mean, over std)."""
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32, device=chw.device)
    std = torch.tensor(cfg.image_std, dtype=torch.float32, device=chw.device)
    x = chw / torch.tensor(np.float32(1.0 / cfg.rescale_factor), device=chw.device)
    return (x - mean[:, None, None]) / std[:, None, None]


def patch_layout(chw: torch.Tensor, cfg: ImageProcessorConfig) -> torch.Tensor:
    """(3, H, W) -> (H/P * W/P, 3*P*P): one temporal slice in Qwen2-VL's patch order (each
    merge window's m*m patches contiguous, channel-major inside a patch)."""
    c, height, width = chw.shape
    p, m = cfg.patch_size, cfg.merge_size
    gh, gw = height // p, width // p
    x = chw.reshape(c, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)
    return x.reshape(gh * gw, c * p * p)


def preprocess_on_device(rgb: torch.Tensor, cfg: ImageProcessorConfig,
                         dtype: torch.dtype) -> PreprocessedImage:
    """An HxWx3 uint8 tensor (already on the model's device) -> :class:`PreprocessedImage`
    whose ``pixel_values`` is an (N, 3*P*P) ``dtype`` tensor on that device."""
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    rh, rw = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    x = resize_on_device(rgb.permute(2, 0, 1)[None].float(), rh, rw, "bicubic")
    pixels = patch_layout(normalise_on_device(x[0], cfg).to(dtype), cfg)
    p = cfg.patch_size
    return PreprocessedImage(pixel_values=pixels, grid_thw=(1, rh // p, rw // p),
                             resized_hw=(rh, rw), original_hw=(height, width),
                             merge_size=cfg.merge_size)


def use_preprocess_mode(mode: str, encoder: Any, proposer: Any = None) -> str:
    """Resolve ``mode`` ("auto"/"exact"/"device") for the encoder's device and set it on the
    encoder and on a proposer that has a device letterbox (WeDetect), which then shares the
    encoder's uploader (one upload per frame). Returns the mode in use."""
    resolved = resolve_preprocess_mode(mode, encoder.device)
    encoder.preprocessor.mode = resolved
    if hasattr(proposer, "preprocess_mode"):
        proposer.preprocess_mode = resolved
        proposer.uploader = encoder.preprocessor.uploader
    return resolved


class ImagePreprocessor:
    """The encoder's preprocessing in the chosen mode, and its uploads."""

    def __init__(self, cfg: ImageProcessorConfig, mode: str = "exact",
                 uploader: StagingUploader | None = None) -> None:
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode must be one of {PREPROCESS_MODES}, got {mode!r}")
        self.cfg = cfg
        self.mode = mode
        self.uploader = uploader or StagingUploader()

    def __call__(self, image: np.ndarray, device: torch.device,
                 dtype: torch.dtype) -> PreprocessedImage:
        """Validate (InputError) and preprocess; RGBA is composited on white, grey replicated."""
        if self.mode == "exact":
            return preprocess_image(image, self.cfg)
        rgb = self.uploader.upload_frame(to_rgb(image), device)
        return preprocess_on_device(rgb, self.cfg, dtype)

    def pixels_on(self, pixel_values: Any, device: torch.device) -> torch.Tensor:
        """``pixel_values`` on ``device``: device-mode tensors pass, host arrays are uploaded."""
        if isinstance(pixel_values, torch.Tensor):
            return pixel_values.to(device)
        return self.uploader.upload(pixel_values, device)

"""The camera frame on the model's device: staged uploads and a PIL-like resize (torch).

Shared by the ObjEmbed device preprocessing (:mod:`objembed_ros.encoder.preprocess`) and the
WeDetect device letterbox (:mod:`objembed_ros.proposals.letterbox_device`), so that one
upload of the uint8 frame serves both and both resize the same way.

On CUDA every upload goes through a pinned staging buffer per (shape, dtype) that is reused
frame after frame, instead of pinning a fresh buffer per frame (``pin_memory()`` allocates).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from objembed_ros.core.cache import LRUCache


def _canonical(device: torch.device | str) -> torch.device:
    """"cuda" -> "cuda:<current>" so it compares equal to a tensor's device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class StagingUploader:
    """Host arrays -> device tensors; on CUDA through reused pinned buffers.

    One pinned buffer per (shape, dtype), at most ``max_buffers`` (least recently used
    dropped; PyTorch's pinned allocator keeps a dropped buffer alive until its copy is done).
    Before a buffer is refilled, the event recorded after its last copy is waited on, so an
    asynchronous copy never reads half-overwritten memory. ``uploads`` / ``uploaded_bytes``
    count host-to-device transfers (also on CPU, where "upload" is a zero-copy view).
    """

    def __init__(self, max_buffers: int = 4) -> None:
        self._buffers: LRUCache[tuple[tuple[int, ...], str], tuple[torch.Tensor, Any]] = \
            LRUCache(max_buffers)
        self._shared: torch.Tensor | None = None
        self._sharing: np.ndarray | None = None
        self.uploads = 0
        self.uploaded_bytes = 0

    def upload(self, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """A device tensor with ``array``'s contents (asynchronous on CUDA: ordered on the
        current stream, so later kernels on that stream see the data)."""
        self.uploads += 1
        self.uploaded_bytes += int(array.nbytes)
        device = _canonical(device)
        if device.type != "cuda":
            with warnings.catch_warnings():  # read-only frames: the tensor is only read
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                return torch.from_numpy(np.ascontiguousarray(array)).to(device)
        key = (tuple(array.shape), array.dtype.str)
        entry = self._buffers.get(key)
        if entry is None:
            pinned = torch.from_numpy(np.empty(array.shape, array.dtype)).pin_memory()
            entry = (pinned, torch.cuda.Event())
            self._buffers.put(key, entry)
        else:
            entry[1].synchronize()  # the previous copy out of this buffer is done
        pinned, done = entry
        np.copyto(pinned.numpy(), array)
        out = pinned.to(device, non_blocking=True)
        done.record(torch.cuda.current_stream(device))
        return out

    @staticmethod
    def _identity(array: np.ndarray) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        return array.__array_interface__["data"][0], array.shape, array.strides

    def upload_frame(self, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """Like :meth:`upload`, but inside :meth:`sharing` the shared frame (same memory,
        shape and strides) is uploaded only once and its device copy returned again."""
        if self._sharing is None or self._identity(array) != self._identity(self._sharing):
            return self.upload(array, device)
        if self._shared is None or self._shared.device != _canonical(device):
            self._shared = self.upload(array, device)
        return self._shared

    @contextmanager
    def sharing(self, frame: np.ndarray) -> Iterator[None]:
        """Within the block, uploads of ``frame`` (which must not change meanwhile) reuse
        one device copy. Not re-entrant; meant for one frame pass under the model lock."""
        self._sharing, self._shared = frame, None
        try:
            yield
        finally:
            self._sharing, self._shared = None, None


def resize_on_device(chw: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """(1, C, H, W) float32 with integer values -> (1, C, height, width), resized like PIL.

    PIL resizes in two passes, horizontal then vertical, each rounded half up and clipped to
    uint8; this does the same with torch's antialiased ``mode`` filter (PIL's filter shapes
    and widths). Rounding the intermediate matters for bicubic: its overshoot at sharp edges
    is clipped between the passes (one float pass differs from PIL by up to 17 levels on
    skimage's coffee photo, the two passes by at most 2). PIL's 22-bit fixed-point weights
    still send some near-ties the other way: on skimage photos <= 0.5% of the bicubic values
    and up to 10% of a 1.25x bilinear upscale differ, by 1-2 levels (test_encoder_preprocess).
    """
    for size in ((chw.shape[-2], width), (height, width)):
        if tuple(chw.shape[-2:]) != size:
            chw = F.interpolate(chw, size=size, mode=mode, align_corners=False, antialias=True)
            chw = chw.add_(0.5).floor_().clamp_(0, 255)
    return chw

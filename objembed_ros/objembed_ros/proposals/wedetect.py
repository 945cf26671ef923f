"""WeDetectProposer: the official WeDetect-Uni class-agnostic proposals, from the original file.

Same numbers as the official ObjEmbed ``SimpleYOLOWorldDetector`` on CPU float32 (spec
sections 2-8): bit-identical letterbox, exact decoding, top-30000, per-prompt NMS at IoU 0.7
(our exact vectorised version, :mod:`objembed_ros.proposals.select`), first
``num_proposals``, boxes mapped back and clamped to [0, W] x [0, H].

GPU options (``device="cuda"``): ``dtype=torch.float16`` runs the convolutions in half
precision and ``channels_last=True`` changes the memory layout; the contrastive product,
sigmoid, DFL decoding, top-k and NMS always run in float32. Neither is bit-exact: the GPU
itself is not (cuDNN may use TF32, which the official code also allows), so expect the same
boxes up to near-ties in score; tests compare selections on CPU. NMS is always ours
(identical selection to the official ``batched_nms``, see ``select``): torchvision is not
a dependency.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch

from objembed_ros.core.letterbox import (
    DEFAULT_MAX_PIXELS,
    LetterboxGeometry,
    letterbox,
    to_rgb_uint8,
    unletterbox_boxes,
)
from objembed_ros.device_frames import StagingUploader
from objembed_ros.proposals.base import Proposals
from objembed_ros.proposals.letterbox_device import letterbox_on_device
from objembed_ros.proposals.select import (
    IOU_THRESHOLD,
    PRE_NMS_TOPK,
    per_label_nms,
    topk_candidates,
)
from objembed_ros.proposals.wedetect_keys import (
    WeDetectCheckpointError,
    load_wedetect_state_dict,
)
from objembed_ros.proposals.wedetect_model import WeDetectConfig, WeDetectModel

log = logging.getLogger(__name__)

__all__ = ["WeDetectCheckpointError", "WeDetectProposer"]


class WeDetectProposer:
    """Top ``num_proposals`` class-agnostic boxes of WeDetect-Uni for an RGB image."""

    name = "wedetect"

    def __init__(self, model: WeDetectModel, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, num_proposals: int = 100,
                 input_size: int | None = None, channels_last: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 unused_keys: tuple[str, ...] | list[str] = ()) -> None:
        if num_proposals < 1:
            raise ValueError(f"num_proposals must be >= 1, got {num_proposals}")
        self.device = torch.device(device)
        self.config: WeDetectConfig = model.config
        self.input_size = int(input_size or self.config.input_size)
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")
        self.num_proposals = int(num_proposals)
        self.max_pixels = max_pixels
        self.channels_last = bool(channels_last)
        self.unused_keys = list(unused_keys)
        self.source = f"wedetect-{self.config.size}"
        model = model.to(self.device).eval().requires_grad_(False)
        if dtype != torch.float32:
            model.set_compute_dtype(dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.dtype = dtype
        self.preprocess_mode = "exact"  # or "device": letterbox_on_device (see preprocess)
        self.uploader = StagingUploader()  # the grounder shares the encoder's

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, num_proposals: int = 100,
                        size: str | None = None, **kwargs: object) -> WeDetectProposer:
        """Load the ORIGINAL WeDetect-Uni ``.pth`` (flat dict, original key names).

        ``size`` ("base"/"large") is inferred from tensor shapes when None and checked
        when given. Unused keys are logged once and kept in ``unused_keys``; missing or
        misshapen keys raise :class:`WeDetectCheckpointError` listing them. ``kwargs`` go
        to the constructor (``input_size``, ``channels_last``, ``max_pixels``).
        """
        weights = load_wedetect_state_dict(path, size=size)
        with torch.device("meta"):
            model = WeDetectModel(weights.config)
        model.load_state_dict(weights.state_dict, strict=True, assign=True)
        return cls(model, device=device, dtype=dtype, num_proposals=num_proposals,
                   unused_keys=weights.unused_keys, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ pieces

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, LetterboxGeometry]:
        """Image -> ([1, 3, S, S] tensor in [0, 1], letterbox geometry).

        Official order: uint8 -> CHW -> cast to the model dtype -> divide by 255. Exact mode
        letterboxes with PIL on the host; device mode uploads the uint8 frame and letterboxes
        on the model's device (``letterbox_on_device``).
        """
        img = to_rgb_uint8(rgb, self.max_pixels)
        if self.preprocess_mode == "device":
            frame = self.uploader.upload_frame(img, self.device)
            return self._layout(*letterbox_on_device(frame, self.input_size, self.dtype))
        canvas, geo = letterbox(img, self.input_size)
        x = self.uploader.upload(canvas, self.device).permute(2, 0, 1)[None]
        return self._layout(x.to(self.dtype) / 255.0, geo)

    def _layout(self, x: torch.Tensor, geo: LetterboxGeometry
                ) -> tuple[torch.Tensor, LetterboxGeometry]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, geo

    @torch.inference_mode()
    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Letterboxed batch -> boxes [B, A, 4] (letterbox px) and scores [B, A, P], float32."""
        return self.model(x)

    @torch.inference_mode()
    def select(self, boxes: torch.Tensor, scores: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """One image's dense output -> (boxes, scores, labels) of the kept rows, by score.

        Anchors with a non-finite box or score are dropped first (only a broken checkpoint
        produces them; the official code would return garbage), so outputs are finite.
        """
        t0 = time.perf_counter()
        finite = torch.isfinite(boxes).all(1)
        if not bool(finite.all()):
            log.warning("%d anchors with non-finite boxes dropped", int((~finite).sum()))
            scores = torch.where(finite[:, None], scores, torch.zeros_like(scores))
        cand_scores, anchors, labels = topk_candidates(scores, PRE_NMS_TOPK)
        cand_boxes = boxes[anchors]
        t1 = time.perf_counter()
        keep = per_label_nms(cand_boxes, cand_scores, labels, IOU_THRESHOLD, self.num_proposals)
        t2 = time.perf_counter()
        return (cand_boxes[keep], cand_scores[keep], labels[keep],
                {"topk": t1 - t0, "nms": t2 - t1})

    # ------------------------------------------------------------------ API

    def propose(self, rgb: np.ndarray) -> Proposals:
        """HxWx3 uint8 RGB (or grey / RGBA, see ``to_rgb_uint8``) -> :class:`Proposals`.

        Raises :class:`InputError` for empty, non-uint8, wrong-channel or oversized
        (``max_pixels``) images.
        """
        t0 = time.perf_counter()
        x, geo = self.preprocess(rgb)
        t1 = time.perf_counter()
        boxes, scores = self.dense(x)
        if boxes.is_cuda:
            torch.cuda.synchronize(boxes.device)
        t2 = time.perf_counter()
        kb, ks, kl, sel_t = self.select(boxes[0], scores[0])
        kb, ks, kl = kb.cpu().numpy(), ks.cpu().numpy(), kl.cpu().numpy()
        t3 = time.perf_counter()
        out = unletterbox_boxes(kb, geo)
        ok = np.isfinite(out).all(1) & np.isfinite(ks)
        if not ok.all():  # cannot happen after the finite filter; kept as a guarantee
            out, ks, kl = out[ok], ks[ok], kl[ok]
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "model": t2 - t1, **sel_t,
                   "postprocess": t4 - t3, "total": t4 - t0}
        return Proposals(out, ks, kl, self.source, timings, (geo.width, geo.height))

    def __repr__(self) -> str:
        return (f"WeDetectProposer(size={self.config.size!r}, depths={self.config.depths}, "
                f"input_size={self.input_size}, device={self.device}, dtype={self.dtype}, "
                f"num_proposals={self.num_proposals})")


"""The two places where a faster runtime can plug into the encoder (filled by objembed_ros.accel).

The encoder never imports the runtimes: the grounder's build step (or a caller) creates one
and assigns it to ``ObjEmbedEncoder.projector_backend`` / ``ObjEmbedEncoder.text_runner``.
``None`` means the plain torch modules and the eager text pass.
"""
from __future__ import annotations

from typing import Protocol

import torch

ProjectorOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ProjectorHook(Protocol):
    """Runs the object projector and the IoU head; called exactly like ``ObjectProjector``."""

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor, merged_hw: tuple[int, int]
                 ) -> ProjectorOutputs: ...

    def iou_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


class TextRunnerHook(Protocol):
    """Runs the language model for a text batch.

    ids, mask: (B, L) long on the host, right-padded. Returns (B, L, D) last hidden states
    on the encoder's device, or None to make the encoder run its eager pass instead.
    """

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None: ...

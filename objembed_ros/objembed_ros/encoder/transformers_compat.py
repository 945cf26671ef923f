"""The transformers pieces that differ between 4.57.x and 5.x, in one place.

The official ObjEmbed code targets transformers 4.57.1; GPU images ship 5.x. Qwen3-VL's
weights, config, tokenizer and numbers are the same in both; three private entry points
changed shape (spec section 7), and the encoder reaches them only through this module:

- ``get_image_features``: 4.57 returns ``(per-image embeds, deepstack list)``; 5.x returns an
  output object whose ``pooler_output`` is the per-image tuple and whose
  ``deepstack_features`` holds, per deepstack layer, one tensor for all images (5.17) or a
  per-image tuple (5.23).
- ``get_rope_index``: 5.x finds the image block from ``mm_token_type_ids`` (0 text,
  1 image) instead of scanning for ``<|vision_start|>``; we build those ids from the prompt.
- ``no_init_weights`` moved from ``transformers.modeling_utils`` to
  ``transformers.initialization``.

Dispatch is by what the installed version offers (checked by
test/test_encoder_transformers_guard.py for each supported major version), so a future
release that moves one of these again fails that test instead of changing embeddings.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import transformers

SUPPORTED = "4.57.x or 5.x (CI runs 4.57.1, 5.17.0 and 5.23.0)"


def version_problem(version: str = transformers.__version__) -> str | None:
    """None when ``version`` is one we support, else why not (for the load error)."""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return f"cannot read the transformers version {version!r}; install {SUPPORTED}"
    if (major, minor) == (4, 57) or major == 5:
        return None
    return (f"transformers {version} is not supported: install {SUPPORTED} "
            "(pip install 'transformers==4.57.1' or 'transformers>=5,<6')")


def no_init_weights() -> contextlib.AbstractContextManager[Any]:
    """transformers' context that skips weight initialisation (weights are loaded next)."""
    try:
        from transformers.initialization import no_init_weights as ctx  # 5.x
    except ImportError:
        from transformers.modeling_utils import no_init_weights as ctx  # 4.57
    return ctx()


def image_features(qwen: Any, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Merged image tokens (n, D) and the deepstack maps [(n, D), ...] of ONE image."""
    out = qwen.get_image_features(pixel_values, grid_thw)
    if hasattr(out, "pooler_output"):  # 5.x output object; embeds split per image
        embeds, deepstack = out.pooler_output, out.deepstack_features
    else:  # 4.57: a tuple
        embeds, deepstack = out
    return embeds[0], [_first_image(d) for d in deepstack]


def _first_image(maps: Any) -> torch.Tensor:
    """One deepstack layer's maps of the first image: 4.57 and 5.x before ~5.20 give one
    tensor for all images, later 5.x a per-image tuple."""
    return maps if torch.is_tensor(maps) else maps[0]


def _rope_takes_token_types(qwen: Any) -> bool:
    return "mm_token_type_ids" in inspect.signature(qwen.get_rope_index).parameters


def rope_positions(qwen: Any, input_ids: torch.Tensor, grid_thw: torch.Tensor,
                   image_token_id: int) -> torch.Tensor:
    """(3, 1, L) M-RoPE positions of a one-image prompt (CPU ids, CPU grid)."""
    if _rope_takes_token_types(qwen):
        token_types = (input_ids == image_token_id).to(torch.int32)
        positions, _ = qwen.get_rope_index(input_ids, mm_token_type_ids=token_types,
                                           image_grid_thw=grid_thw)
    else:
        positions, _ = qwen.get_rope_index(input_ids, grid_thw, None, None)
    return positions

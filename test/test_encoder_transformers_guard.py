"""Guards for the transformers pieces the encoder relies on (pinned 4.57.1).

A transformers upgrade that changes any of these must fail here, loudly, before it
silently changes embeddings (spec section 7 lists what 5.x changed).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import transformers
from transformers.models.qwen3_vl import modeling_qwen3_vl as mq


def test_transformers_version_is_the_pinned_one() -> None:
    assert transformers.__version__ == "4.57.1"


def test_private_signatures() -> None:
    rope = list(inspect.signature(mq.Qwen3VLModel.get_rope_index).parameters)
    assert rope[:5] == ["self", "input_ids", "image_grid_thw", "video_grid_thw",
                        "attention_mask"]
    feats = list(inspect.signature(mq.Qwen3VLModel.get_image_features).parameters)
    assert feats == ["self", "pixel_values", "image_grid_thw"]
    text = inspect.signature(mq.Qwen3VLTextModel.forward).parameters
    for name in ("inputs_embeds", "position_ids", "attention_mask", "use_cache",
                 "visual_pos_masks", "deepstack_visual_embeds"):
        assert name in text, name
    assert hasattr(mq.Qwen3VLTextModel, "_deepstack_process")


def test_get_image_features_structure(tiny_objembed_dir: Path) -> None:
    from objembed_ros.encoder.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_objembed_dir)
    pv = torch.randn((4 * 6, 3 * 2 * 16 * 16))
    grid = torch.tensor([[1, 4, 6]])
    with torch.no_grad():
        embeds, deepstack = ck.qwen.get_image_features(pv, grid)
    assert isinstance(embeds, tuple) and len(embeds) == 1
    assert embeds[0].shape == (6, ck.config.text_config.hidden_size)
    assert isinstance(deepstack, list)
    assert len(deepstack) == len(ck.config.vision_config.deepstack_visual_indexes)
    assert all(d.shape == embeds[0].shape for d in deepstack)
    ids = torch.tensor([[1, ck.config.vision_start_token_id] + [ck.config.image_token_id] * 6
                        + [2, 3]])
    pos, delta = ck.qwen.get_rope_index(ids, grid, None, None)
    assert pos.shape == (3, 1, 10)
    # the image block gets (t, row, col) positions, text continues after max + 1
    assert pos[:, 0, 2:8].tolist() == [[2] * 6, [2, 2, 2, 3, 3, 3], [2, 3, 4, 2, 3, 4]]
    assert pos[:, 0, 8].tolist() == [5, 5, 5]

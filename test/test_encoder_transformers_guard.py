"""Guards for the transformers pieces the encoder relies on, per supported major version.

CI runs this file under transformers 4.57.1 (.venv) and each 5.x of transformers5-versions.txt
(.venv/transformers-VERSION overlays).
A release that changes any of these must fail here, loudly, before it silently changes
embeddings (spec section 7 lists what 5.x changed; encoder/transformers_compat.py adapts).
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.qwen3_vl import modeling_qwen3_vl as mq
from transformers_reference import TRANSFORMERS_MAJOR, TRANSFORMERS_MINOR, transformers5_versions

from objembed_ros.encoder import transformers_compat

REPO = Path(__file__).resolve().parents[1]


def test_installed_version_is_a_ci_pin() -> None:
    text = (REPO / "requirements.txt").read_text()
    pinned = re.search(r"^transformers==(\S+)$", text, re.MULTILINE).group(1)
    fives = transformers5_versions()
    assert pinned.startswith("4.57.") and fives and all(v.startswith("5.") for v in fives)
    assert transformers.__version__ in [pinned, *fives]


@pytest.mark.parametrize(("version", "supported"), [
    ("4.57.1", True), ("4.57.6", True), ("5.0.0", True), ("5.17.0", True), ("5.23.0", True),
    ("4.56.2", False), ("4.58.0", False), ("6.0.0", False), ("3.4.0", False), ("dev", False)])
def test_version_problem(version: str, supported: bool) -> None:
    problem = transformers_compat.version_problem(version)
    assert (problem is None) == supported
    if not supported:
        assert "4.57" in problem and "5." in problem


def test_private_signatures() -> None:
    rope = list(inspect.signature(mq.Qwen3VLModel.get_rope_index).parameters)
    feats = list(inspect.signature(mq.Qwen3VLModel.get_image_features).parameters)
    if TRANSFORMERS_MAJOR == 4:
        assert rope[:5] == ["self", "input_ids", "image_grid_thw", "video_grid_thw",
                            "attention_mask"]
        assert feats == ["self", "pixel_values", "image_grid_thw"]
        from transformers.modeling_utils import no_init_weights
    else:
        assert rope[:6] == ["self", "input_ids", "mm_token_type_ids", "image_grid_thw",
                            "video_grid_thw", "attention_mask"]
        assert feats[:3] == ["self", "pixel_values", "image_grid_thw"]
        from transformers.initialization import no_init_weights  # noqa: F401
    text = inspect.signature(mq.Qwen3VLTextModel.forward).parameters
    for name in ("inputs_embeds", "position_ids", "attention_mask", "use_cache",
                 "visual_pos_masks", "deepstack_visual_embeds"):
        assert name in text, name
    assert hasattr(mq.Qwen3VLTextModel, "_deepstack_process")


def test_get_image_features_structure(tiny_objembed_dir: Path) -> None:
    """The raw return value per version, and what the compat layer makes of it."""
    from objembed_ros.encoder.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_objembed_dir)
    hidden = ck.config.text_config.hidden_size
    n_deep = len(ck.config.vision_config.deepstack_visual_indexes)
    pv = torch.randn((4 * 6, 3 * 16 * 16))  # one temporal slice (folded patch embedding)
    grid = torch.tensor([[1, 4, 6]])
    with torch.no_grad():
        raw = ck.qwen.get_image_features(pv, grid)
        embeds, deepstack = transformers_compat.image_features(ck.qwen, pv, grid)
    if TRANSFORMERS_MAJOR == 4:
        raw_embeds, raw_deep = raw
        assert isinstance(raw_embeds, tuple) and len(raw_embeds) == 1
        assert isinstance(raw_deep, list) and all(torch.is_tensor(d) for d in raw_deep)
        raw_embeds, raw_deep = raw_embeds[0], raw_deep
    else:  # deepstack: one tensor per layer (5.17) or a per-image tuple per layer (5.23)
        assert isinstance(raw.pooler_output, tuple) and len(raw.pooler_output) == 1
        if TRANSFORMERS_MINOR < 20:
            assert all(torch.is_tensor(d) for d in raw.deepstack_features)
            raw_deep = list(raw.deepstack_features)
        else:
            assert all(isinstance(d, tuple) and len(d) == 1 for d in raw.deepstack_features)
            raw_deep = [d[0] for d in raw.deepstack_features]
        raw_embeds = raw.pooler_output[0]
    assert embeds.shape == (6, hidden) and torch.equal(embeds, raw_embeds)
    assert len(deepstack) == len(raw_deep) == n_deep
    assert all(torch.equal(a, b) and a.shape == (6, hidden) for a, b in zip(deepstack, raw_deep,
                                                                           strict=True))


def test_rope_positions_by_hand(tiny_objembed_dir: Path) -> None:
    """M-RoPE positions of [text, <vision_start>, 2x3 image block, text, text], by hand."""
    from objembed_ros.encoder.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_objembed_dir)
    image = ck.config.image_token_id
    ids = torch.tensor([[1, ck.config.vision_start_token_id] + [image] * 6 + [2, 3]])
    grid = torch.tensor([[1, 4, 6]])
    pos = transformers_compat.rope_positions(ck.qwen, ids, grid, image)
    assert pos.shape == (3, 1, 10)
    # text 0, 1; the image block gets (t, row, col) offset by 2; text continues at 2 + 3
    assert pos[:, 0, :2].tolist() == [[0, 1]] * 3
    assert pos[:, 0, 2:8].tolist() == [[2] * 6, [2, 2, 2, 3, 3, 3], [2, 3, 4, 2, 3, 4]]
    assert pos[:, 0, 8:].tolist() == [[5, 6]] * 3

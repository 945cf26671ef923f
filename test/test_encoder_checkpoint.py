"""Checkpoint loading: the tiny official-format directory, transformers compatibility,
sharding, and every CheckpointError message the loader promises."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from objembed_ros import CheckpointError, ObjEmbedEncoder
from objembed_ros.encoder.checkpoint import load_checkpoint
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builder_is_deterministic(tmp_path: Path) -> None:
    """Same seed, same bytes; another seed, other weights (no timing: CI machines vary)."""
    a = make_tiny_objembed_checkpoint(tmp_path / "a", seed=3)
    b = make_tiny_objembed_checkpoint(tmp_path / "b", seed=3)
    c = make_tiny_objembed_checkpoint(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(b / name), name
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    weights = load_file(str(a / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in weights.values())
    assert "lm_head.weight" not in weights  # tied, like ObjEmbed-2B
    assert {"model.visual.patch_embed.proj.weight", "model.language_model.embed_tokens.weight",
            "model.merge.weight", "logit_iou_proj.2.bias", "logit_image_bias"} <= set(weights)


def test_transformers_loads_the_tiny_checkpoint(tiny_objembed_dir: Path) -> None:
    from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(str(tiny_objembed_dir), local_files_only=True)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in
               ("<object>", "<local_text>", "<global>", "<global_text>"))
    cfg = Qwen3VLConfig.from_pretrained(str(tiny_objembed_dir))
    assert cfg.use_two_tokens == 2 and cfg.use_global_caption is True
    model, info = Qwen3VLForConditionalGeneration.from_pretrained(
        str(tiny_objembed_dir), output_loading_info=True, local_files_only=True,
        dtype=torch.float32)
    assert info["missing_keys"] == [] or set(info["missing_keys"]) <= {"lm_head.weight"}
    unexpected = set(info["unexpected_keys"])
    assert unexpected and all(k.startswith(("model.image_pos", "model.object", "model.second",
                                            "model.first", "model.merge", "logit_"))
                              for k in unexpected)
    ours = load_checkpoint(tiny_objembed_dir)
    for name, p in ours.qwen.state_dict().items():
        assert torch.equal(p, model.model.state_dict()[name]), name


def test_sharded_and_untied_load_the_same(tmp_path: Path, photo: np.ndarray) -> None:
    single = make_tiny_objembed_checkpoint(tmp_path / "single", seed=7)
    sharded = make_tiny_objembed_checkpoint(tmp_path / "sharded", seed=7, sharded=True)
    untied = make_tiny_objembed_checkpoint(tmp_path / "untied", seed=7,
                                           tie_word_embeddings=False, dtype="float32")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    assert "lm_head.weight" in load_file(str(untied / "model.safetensors"))
    boxes = [[10, 10, 200, 300]]
    a = ObjEmbedEncoder.from_pretrained(single).encode_image(photo, boxes)
    b = ObjEmbedEncoder.from_pretrained(sharded).encode_image(photo, boxes)
    assert torch.equal(a.object_embeddings, b.object_embeddings)
    enc = ObjEmbedEncoder.from_pretrained(untied)  # lm_head present and skipped
    assert enc.encode_image(photo, boxes).object_embeddings.shape == (1, 64)


@pytest.fixture
def broken(tiny_objembed_dir: Path, tmp_path: Path) -> Path:
    return _copy(tiny_objembed_dir, tmp_path / "ckpt")


def _rewrite_weights(path: Path, edit) -> None:
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_missing_directory_and_files(tmp_path: Path, broken: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        load_checkpoint(broken)


def test_missing_and_unexpected_keys_are_listed(broken: Path) -> None:
    def edit(t: dict) -> None:
        del t["model.merge.weight"]
        del t["model.language_model.layers.1.mlp.up_proj.weight"]
        t["model.extra_head.weight"] = torch.zeros(2)

    _rewrite_weights(broken, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(broken)
    msg = str(err.value)
    assert "missing keys (2)" in msg and "model.merge.weight" in msg
    assert "model.language_model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected keys (1): model.extra_head.weight" in msg


def test_wrong_shape_and_non_finite(broken: Path) -> None:
    _rewrite_weights(broken, lambda t: t.update({"logit_pos_embedding.weight":
                                                 torch.zeros((2, 64), dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match=r"logit_pos_embedding.weight: stored \(2, 64\)"):
        load_checkpoint(broken)
    _rewrite_weights(broken, lambda t: t.update({
        "logit_pos_embedding.weight": torch.full((1, 64), float("nan"), dtype=torch.bfloat16)}))
    with pytest.raises(CheckpointError, match="non-finite.*logit_pos_embedding"):
        load_checkpoint(broken)


def test_tokenizer_without_objembed_tokens(broken: Path) -> None:
    tok = json.loads((broken / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<global_text>"]
    (broken / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items()
                                   if v["content"] != "<global_text>"}
    cfg["additional_special_tokens"] = ["<object>", "<local_text>", "<global>"]
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="<global_text>"):
        load_checkpoint(broken)


def test_bad_config(broken: Path) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "llama"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type"):
        load_checkpoint(broken)
    cfg["model_type"] = "qwen3_vl"
    cfg["text_config"]["hidden_size"] = 32  # every LM / projector shape disagrees now
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_checkpoint(broken)


def test_attn_selection(tiny_objembed_dir: Path) -> None:
    from objembed_ros.encoder.checkpoint import resolve_attn

    assert resolve_attn("auto", torch.device("cpu")) == "sdpa"
    assert resolve_attn("eager", torch.device("cpu")) == "eager"
    with pytest.raises(ValueError):
        resolve_attn("magic", torch.device("cpu"))
    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, attn="eager")
    assert enc.ckpt.attn_implementation == "eager"
    assert enc.qwen.config._attn_implementation == "eager"


@pytest.mark.parametrize("installed", [True, False])
def test_auto_attn_picks_flash_attention_only_for_half_precision_on_cuda(
        monkeypatch, caplog, installed: bool) -> None:
    """FA2 has no float32 kernels: float32 on CUDA gets sdpa (logged), even with flash_attn."""
    import logging
    import sys
    import types

    from objembed_ros.encoder.checkpoint import resolve_attn

    monkeypatch.setitem(sys.modules, "flash_attn",
                        types.ModuleType("flash_attn") if installed else None)
    cuda = torch.device("cuda", 1)
    fa2 = "flash_attention_2" if installed else "sdpa"
    assert resolve_attn("auto", cuda, torch.bfloat16) == fa2
    assert resolve_attn("auto", cuda, torch.float16) == fa2
    with caplog.at_level(logging.INFO, logger="objembed_ros.encoder.checkpoint"):
        assert resolve_attn("auto", cuda, torch.float32) == "sdpa"
    assert ("no torch.float32 kernels" in caplog.text) == installed
    assert resolve_attn("auto", torch.device("cpu"), torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        resolve_attn("flash_attention_2", cuda, torch.float32)

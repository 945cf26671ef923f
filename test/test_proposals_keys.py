"""WeDetect-Uni key renaming and size inference against the full 906-key list
(test/data/wedetect-keys.tsv, a copy of the spec's table), on shapes only (no memory)."""
from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pytest
import torch

from objembed_ros.proposals.wedetect_keys import (
    WeDetectCheckpointError,
    convert_state_dict,
    expected_shapes,
    infer_config,
    original_to_simple,
    simple_to_original,
)
from objembed_ros.proposals.wedetect_model import WeDetectConfig

TSV = Path(__file__).resolve().parent / "data" / "wedetect-keys.tsv"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with TSV.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _shape(row: dict[str, str]) -> tuple[int, ...]:
    return tuple(ast.literal_eval(row["shape"]))


def large_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The spec's x1.5 rule (sections 4, 5, 11): backbone and neck channel dims scale; the
    stem's 3 input channels, kernels, alpha, the prompts [256, 768], the head's hidden
    widths (256 cls, 64 reg) and outputs (768, 64) and the contrast BN do not; only the
    head's first conv input (in_L) scales."""
    def s(v: int) -> int:
        return v * 3 // 2

    if key == "embeddings" or ".cls_contrasts." in key or len(shape) == 0:
        return shape
    if key.startswith("bbox_head."):
        if key.endswith(".0.weight"):  # [hidden, in_L, 3, 3]
            return (shape[0], s(shape[1]), *shape[2:])
        return shape
    if key.endswith(".alpha"):
        return shape
    out = list(shape)
    for i in range(min(2, len(shape))):
        if out[i] not in (1, 3):
            out[i] = s(out[i])
    return tuple(out)


def test_tsv_is_complete(rows: list[dict[str, str]]) -> None:
    assert len(rows) == 906
    assert sum(math.prod(_shape(r)) for r in rows) == 107_356_725


def test_renaming_both_ways_matches_tsv(rows: list[dict[str, str]]) -> None:
    for r in rows:
        assert original_to_simple(r["original_key"]) == r["simple_key"], r
        assert simple_to_original(r["simple_key"]) == r["original_key"], r
    assert len({r["original_key"] for r in rows}) == 906


@pytest.mark.parametrize("key", [
    "backbone.image_model.model.norm.weight", "backbone.image_model.model.head.bias",
    "backbone.text_model.model.embeddings.word_embeddings.weight", "data_preprocessor.mean",
    "bbox_head.head_module.cls_preds.0.0.conv.bias", "bbox_head.head_module.reg_preds.0.7.x",
])
def test_unused_keys_map_to_none(key: str) -> None:
    assert original_to_simple(key) is None


def test_base_model_keys_and_shapes_equal_tsv(rows: list[dict[str, str]]) -> None:
    tsv = {r["simple_key"]: _shape(r) for r in rows}
    ours = expected_shapes(WeDetectConfig.for_size("base"))
    assert list(ours) == list(tsv)  # same keys, same order
    assert ours == tsv
    assert infer_config(tsv) == WeDetectConfig.for_size("base")


def test_large_model_follows_the_x1_5_rule(rows: list[dict[str, str]]) -> None:
    rule = {r["simple_key"]: large_shape(r["simple_key"], _shape(r)) for r in rows}
    assert sum(math.prod(s) for s in rule.values()) == 235_416_885  # spec 9.1
    large = WeDetectConfig.for_size("large")
    assert expected_shapes(large) == rule
    cfg = infer_config(rule)
    assert cfg.size == "large" and cfg.depths == (3, 3, 27, 3) and cfg.input_size == 1280
    with pytest.raises(WeDetectCheckpointError, match="'base' was asked"):
        infer_config(rule, size="base")


def test_depths_are_read_from_keys(rows: list[dict[str, str]]) -> None:
    small = WeDetectConfig.for_size("base", (1, 2, 3, 1))
    cfg = infer_config(expected_shapes(small))
    assert cfg.size == "base" and cfg.depths == (1, 2, 3, 1) and not cfg.official_depths


def test_unknown_stem_width_is_an_error() -> None:
    shapes = expected_shapes(WeDetectConfig.for_size("base", (1, 1, 1, 1)))
    shapes["backbone.downsample_layers.0.0.weight"] = (96, 3, 4, 4)
    with pytest.raises(WeDetectCheckpointError, match="stem width 96"):
        infer_config(shapes)
    with pytest.raises(WeDetectCheckpointError, match="cannot infer"):
        infer_config({"embeddings": (256, 768)})


def _meta_original(config: WeDetectConfig) -> dict[str, torch.Tensor]:
    return {simple_to_original(k): torch.empty(s, device="meta")
            for k, s in expected_shapes(config).items()}


def test_convert_reports_unused_and_checks_everything() -> None:
    raw = _meta_original(WeDetectConfig.for_size("base"))
    raw["backbone.image_model.model.head.weight"] = torch.empty(1000, 1024, device="meta")
    raw["backbone.text_model.head.bias"] = torch.empty(768, device="meta")
    w = convert_state_dict(raw)
    assert w.config.size == "base" and w.config.depths == (3, 3, 27, 3)
    assert w.unused_keys == ["backbone.image_model.model.head.weight",
                             "backbone.text_model.head.bias"]
    assert len(w.state_dict) == 906 and w.layout == "original"


def test_missing_and_misshapen_keys_are_listed() -> None:
    raw = _meta_original(WeDetectConfig.for_size("base", (1, 1, 2, 1)))
    del raw["neck.Rep_p3.m.block.4.alpha"]
    del raw["bbox_head.head_module.reg_preds.2.1.bn.running_var"]
    raw["bbox_head.head_module.cls_preds.1.2.weight"] = torch.empty(768, 255, 1, 1,
                                                                    device="meta")
    with pytest.raises(WeDetectCheckpointError) as info:
        convert_state_dict(raw, source="bad.pth")
    msg = str(info.value)
    assert "2 missing key(s)" in msg and "1 misshapen key(s)" in msg
    assert "neck.Rep_p3.m.block.4.alpha" in msg
    assert "bbox_head.head_module.reg_preds.2.1.bn.running_var" in msg  # original names
    assert "bbox_head.head_module.cls_preds.1.2.weight: (768, 255, 1, 1)" in msg
    assert "bad.pth" in msg


def test_a_missing_middle_block_is_missing_not_shallower() -> None:
    raw = _meta_original(WeDetectConfig.for_size("base", (1, 1, 3, 1)))
    for k in [k for k in raw if ".stages.2.1." in k]:
        del raw[k]
    with pytest.raises(WeDetectCheckpointError, match=r"9 missing key\(s\)"):
        convert_state_dict(raw)


def test_simple_layout_is_accepted() -> None:
    shapes = expected_shapes(WeDetectConfig.for_size("base", (1, 1, 1, 1)))
    raw = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    w = convert_state_dict(raw)
    assert w.layout == "simple" and not w.unused_keys


def test_non_tensor_entries_are_an_error() -> None:
    raw: dict[str, object] = dict(_meta_original(WeDetectConfig.for_size("base", (1,) * 4)))
    raw["meta"] = {"epoch": 3}
    with pytest.raises(WeDetectCheckpointError, match="non-tensor entries: meta"):
        convert_state_dict(raw)

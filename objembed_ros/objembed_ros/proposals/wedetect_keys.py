"""Reading the original WeDetect-Uni ``.pth``: key renaming, size inference, checks.

Why not the official loader: it guesses the size from the *file name* (``'base' in path``)
and loads with ``strict=False``, so a wrong or truncated file silently yields a model with
random layers. Here (WeDetect spec section 9):

* :func:`original_to_simple` / :func:`simple_to_original` write the 9.2 renaming out
  explicitly, both ways (tested against the full 906-key list);
* :func:`infer_config` reads size, ConvNeXt depths and prompt count from tensor *shapes*;
* :func:`load_wedetect_state_dict` checks every expected key and shape and raises
  :class:`WeDetectCheckpointError` listing what is missing or misshapen; keys we do not use
  (ConvNeXt ``norm``/``head``, ``backbone.text_model.*``) are returned and logged once.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from objembed_ros.proposals.wedetect_model import SIZES, WeDetectConfig, WeDetectModel

log = logging.getLogger(__name__)

BACKBONE_ORIG = "backbone.image_model.model."
HEAD_ORIG = "bbox_head.head_module."
# Inside cls_preds.L / reg_preds.L: simple Sequential index <-> original ConvModule child.
_BRANCH_TO_ORIG = {"0": "0.conv", "1": "0.bn", "3": "1.conv", "4": "1.bn", "6": "2"}
_BRANCH_TO_SIMPLE = {v: k for k, v in _BRANCH_TO_ORIG.items()}
_SIMPLE_BRANCH = re.compile(r"^bbox_head\.(cls_preds|reg_preds)\.(\d+)\.(\d)\.(\w+)$")
_ORIG_BRANCH = re.compile(r"^bbox_head\.head_module\.(cls_preds|reg_preds)\.(\d+)\."
                          r"(\d(?:\.conv|\.bn)?)\.(\w+)$")


class WeDetectCheckpointError(ValueError):
    """The file is not a usable WeDetect-Uni checkpoint; the message says exactly why."""


def original_to_simple(name: str) -> str | None:
    """Original file key -> our module's key, or None for a key we do not use."""
    if name == "embeddings" or name.startswith("neck."):
        return name
    if name.startswith(BACKBONE_ORIG):
        rest = name[len(BACKBONE_ORIG):]
        if rest.startswith(("downsample_layers.", "stages.")):
            return "backbone." + rest
        return None  # ConvNeXt norm / classifier head
    if name.startswith(HEAD_ORIG):
        m = _ORIG_BRANCH.match(name)
        if m:
            branch, lvl, child, leaf = m.groups()
            idx = _BRANCH_TO_SIMPLE.get(child)
            if idx is None or (child.endswith(".conv") and leaf != "weight"):
                return None
            return f"bbox_head.{branch}.{lvl}.{idx}.{leaf}"
        rest = name[len(HEAD_ORIG):]
        if rest.startswith("cls_contrasts."):
            return "bbox_head." + rest
    return None


def simple_to_original(name: str) -> str:
    """Our key -> the name the original WeDetect-Uni file stores it under (inverse map)."""
    if name.startswith("backbone."):
        return BACKBONE_ORIG + name[len("backbone."):]
    m = _SIMPLE_BRANCH.match(name)
    if m:
        branch, lvl, idx, leaf = m.groups()
        return f"{HEAD_ORIG}{branch}.{lvl}.{_BRANCH_TO_ORIG[idx]}.{leaf}"
    if name.startswith("bbox_head."):
        return HEAD_ORIG + name[len("bbox_head."):]
    return name


def _shorten(names: Iterable[str], limit: int = 15) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...] | None:
    s = shapes.get(key)
    return None if s is None else tuple(int(v) for v in s)


def infer_config(shapes: Mapping[str, Sequence[int]], size: str | None = None
                 ) -> WeDetectConfig:
    """Size ("base"/"large"), ConvNeXt depths and prompt count from *simple*-key shapes.

    The size comes from the stem width (128 base, 192 large), never from a file name;
    depths from the block indices present. A stated ``size`` must agree with the shapes.
    """
    stem = _shape(shapes, "backbone.downsample_layers.0.0.weight")
    if stem is None or len(stem) != 4:
        raise WeDetectCheckpointError(
            "cannot infer the WeDetect size: no 4-d 'backbone.image_model.model."
            "downsample_layers.0.0.weight' (is this a WeDetect-Uni checkpoint?)")
    by_width = {v["dims"][0]: k for k, v in SIZES.items()}
    inferred = by_width.get(stem[0])
    if inferred is None:
        raise WeDetectCheckpointError(
            f"stem width {stem[0]} matches no WeDetect size "
            f"({', '.join(f'{k}: {v}' for k, v in by_width.items())})")
    if size is not None and size != inferred:
        raise WeDetectCheckpointError(
            f"size={size!r} was asked for but the tensor shapes are those of {inferred!r}")
    depths = []
    for s in range(4):
        pat = re.compile(rf"^backbone\.stages\.{s}\.(\d+)\.")
        idx = [int(m.group(1)) for k in shapes if (m := pat.match(k))]
        if not idx:
            raise WeDetectCheckpointError(f"no ConvNeXt blocks found for stage {s} "
                                          f"('{BACKBONE_ORIG}stages.{s}.*')")
        depths.append(max(idx) + 1)
    emb = _shape(shapes, "embeddings")
    num_prompts = emb[0] if emb is not None and len(emb) == 2 else 256
    cfg = WeDetectConfig.for_size(inferred, tuple(depths))
    return WeDetectConfig(**{**cfg.__dict__, "num_prompts": num_prompts})


def expected_shapes(config: WeDetectConfig) -> dict[str, tuple[int, ...]]:
    """Simple key -> shape for a config, built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = WeDetectModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _is_simple_layout(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return (not any(k.startswith((BACKBONE_ORIG, HEAD_ORIG)) for k in keys)
            and "backbone.downsample_layers.0.0.weight" in keys)


@dataclass
class WeDetectWeights:
    """A checked state dict in simple names plus what the file held that we do not use."""

    state_dict: dict[str, torch.Tensor]
    config: WeDetectConfig
    unused_keys: list[str] = field(default_factory=list)
    layout: str = "original"  # or "simple" when the file already used our names


def convert_state_dict(raw: Mapping[str, object], size: str | None = None,
                       source: str = "checkpoint") -> WeDetectWeights:
    """Rename original keys, infer the config, check every key and shape.

    Raises :class:`WeDetectCheckpointError` listing missing and misshapen keys. Floating
    tensors are cast to float32 (the official model is float32).
    """
    bad_values = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad_values:
        raise WeDetectCheckpointError(
            f"{source}: expected a flat dict of tensors; non-tensor entries: "
            f"{_shorten(bad_values)}")
    layout = "simple" if _is_simple_layout(raw) else "original"
    simple: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for name, tensor in raw.items():
        new = name if layout == "simple" else original_to_simple(name)
        if new is None:
            unused.append(name)
        else:
            simple[new] = tensor  # type: ignore[assignment]
    config = infer_config({k: tuple(v.shape) for k, v in simple.items()}, size)
    expected = expected_shapes(config)
    unused += [k for k in simple if k not in expected]
    for k in [k for k in simple if k not in expected]:
        del simple[k]

    def orig(k: str) -> str:
        return k if layout == "simple" else simple_to_original(k)

    missing = [orig(k) for k in expected if k not in simple]
    misshapen = [f"{orig(k)}: {tuple(simple[k].shape)} (expected {shape})"
                 for k, shape in expected.items()
                 if k in simple and tuple(simple[k].shape) != shape]
    if missing or misshapen:
        parts = [f"{source} is not a complete WeDetect-Uni {config.size} checkpoint "
                 f"(ConvNeXt depths {config.depths})"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_shorten(missing)}")
        if misshapen:
            parts.append(f"{len(misshapen)} misshapen key(s): {_shorten(misshapen, 8)}")
        raise WeDetectCheckpointError("; ".join(parts))
    out = {}
    for k, t in simple.items():
        out[k] = t.float() if t.is_floating_point() else t
    return WeDetectWeights(out, config, sorted(unused), layout)


def _unwrap(obj: object, source: str) -> Mapping[str, object]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                log.info("%s: using the %r entry of a wrapped checkpoint", source, key)
                return obj[key]
    if not isinstance(obj, Mapping):
        raise WeDetectCheckpointError(f"{source}: expected a dict of tensors, got "
                                      f"{type(obj).__name__}")
    return obj


def load_wedetect_state_dict(path: str | os.PathLike, size: str | None = None
                             ) -> WeDetectWeights:
    """Read a WeDetect-Uni ``.pth`` (``weights_only=True``) and check it.

    Unused keys are logged once here (a summary at INFO, so a text tower does not flood
    the log) and kept in :attr:`WeDetectWeights.unused_keys`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeDetectCheckpointError(f"WeDetect checkpoint not found: {path}")
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling problem is a checkpoint problem
        raise WeDetectCheckpointError(f"cannot read {path} as a torch checkpoint "
                                      f"(weights_only): {exc}") from exc
    weights = convert_state_dict(_unwrap(raw, str(path)), size=size, source=str(path))
    if weights.unused_keys:
        groups: dict[str, int] = {}
        for k in weights.unused_keys:
            prefix = "backbone.text_model.*" if k.startswith("backbone.text_model.") else k
            groups[prefix] = groups.get(prefix, 0) + 1
        summary = ", ".join(f"{g} ({n})" if n > 1 else g for g, n in sorted(groups.items()))
        log.info("%s: %d key(s) not used by the proposal network: %s",
                 path.name, len(weights.unused_keys), summary)
    if not weights.config.official_depths:
        log.warning("%s: ConvNeXt depths %s differ from the released %s model's %s "
                    "(a test checkpoint?)", path.name, weights.config.depths,
                    weights.config.size, SIZES[weights.config.size]["depths"])
    return weights

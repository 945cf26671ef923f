"""Load an official-format ObjEmbed checkpoint directory, offline, into our modules.

Builds transformers' ``Qwen3VLModel`` (vision tower + language model) from the
directory's ``config.json`` and our :class:`ObjectProjector`, then copies the safetensors
weights in one tensor at a time (no second copy of the model is ever held: the modules are
created with initialisation skipped, directly on the target device and dtype).

Key mapping (exactly as stored): ``model.visual.*`` -> ``Qwen3VLModel.visual.*``,
``model.language_model.*`` -> ``Qwen3VLModel.language_model.*``, the ObjEmbed keys
(``model.image_pos_projector.*`` ... ``logit_image_bias``) -> ``ObjectProjector``;
``lm_head.*`` is skipped whether tied/untied, present or absent (we never produce logits).

Every problem raises :class:`CheckpointError` with a message naming what is wrong: a
missing directory or file, missing / unexpected keys (listed), wrong shapes, non-finite
weights, a tokenizer without the four ObjEmbed tokens. Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objembed_ros.core.resize import ImageProcessorConfig
from objembed_ros.encoder.preprocess import fold_patch_embedding
from objembed_ros.encoder.projector import ObjectProjector
from objembed_ros.encoder.prompts import OBJEMBED_TOKENS, TokenIds, special_token_ids
from objembed_ros.encoder.transformers_compat import no_init_weights, version_problem

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SKIPPED_PREFIXES = ("lm_head.",)
QWEN_PREFIX = "model."
QWEN_SUBMODULES = ("model.visual.", "model.language_model.")


class CheckpointError(RuntimeError):
    """The checkpoint directory cannot be used; the message says why and what to fix."""


@dataclass
class ObjEmbedAttrs:
    """The ObjEmbed fields of config.json."""

    num_classes: int | None
    use_global_caption: bool
    use_two_tokens: int
    use_two_captions: bool


@dataclass
class LoadedCheckpoint:
    """Everything the encoder needs, already on the target device and dtype."""

    path: Path
    config: Any  # transformers Qwen3VLConfig
    qwen: Any  # transformers Qwen3VLModel, eval mode
    projector: ObjectProjector
    tokenizer: Any
    token_ids: TokenIds
    image_config: ImageProcessorConfig
    attrs: ObjEmbedAttrs
    attn_implementation: str


def _shorten(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def resolve_attn(attn: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """"auto" -> flash_attention_2 on CUDA in fp16/bf16 when flash_attn imports, else sdpa.

    FlashAttention-2 has no float32 kernels: with the node's float32 default every forward
    would raise, so "auto" then picks sdpa and logs why; an explicit
    "flash_attention_2" with float32 is refused here rather than on the first frame.
    """
    if attn not in ("auto", "sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn must be auto, sdpa, eager or flash_attention_2, got {attn!r}")
    half = dtype in (torch.float16, torch.bfloat16)
    if attn == "flash_attention_2" and not half:
        raise ValueError(f"attn flash_attention_2 needs dtype float16 or bfloat16, not {dtype}")
    if attn != "auto":
        return attn
    if device.type != "cuda":
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    if not half:
        log.info("attn auto: sdpa, not flash_attention_2 (it has no %s kernels)", dtype)
        return "sdpa"
    return "flash_attention_2"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing {path.name} in {path.parent}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def weight_files(path: Path) -> dict[str, Path]:
    """Stored key -> safetensors file holding it (single file or sharded with an index)."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = {name: path / fname for name, fname in weight_map.items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise CheckpointError(f"shard(s) listed in {INDEX_FILE} are missing: "
                                  f"{_shorten(absent)}")
        return files
    single = path / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"no weights in {path}: expected {SINGLE_FILE} or {INDEX_FILE}")
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def load_config(path: Path) -> tuple[Any, ObjEmbedAttrs]:
    """transformers Qwen3VLConfig from config.json plus the ObjEmbed attributes."""
    from transformers import Qwen3VLConfig

    raw = _read_json(path / "config.json")
    if raw.get("model_type") != "qwen3_vl":
        raise CheckpointError(f"config.json model_type is {raw.get('model_type')!r}, "
                              "expected 'qwen3_vl' (an ObjEmbed / Qwen3-VL checkpoint)")
    try:
        config = Qwen3VLConfig.from_dict(raw)
    except Exception as exc:
        raise CheckpointError(f"config.json is not a valid Qwen3-VL config: {exc}") from exc
    two = int(raw.get("use_two_tokens", 0))
    if two not in (0, 1, 2):
        raise CheckpointError(f"config.json use_two_tokens must be 0, 1 or 2, got {two}")
    attrs = ObjEmbedAttrs(num_classes=raw.get("num_classes"),
                          use_global_caption=bool(raw.get("use_global_caption", False)),
                          use_two_tokens=two,
                          use_two_captions=bool(raw.get("use_two_captions", False)))
    return config, attrs


def load_tokenizer(path: Path) -> tuple[Any, TokenIds]:
    """The checkpoint's tokenizer (local files only) with its chat template and token ids."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer from {path}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        for name in ("chat_template.jinja", "chat_template.json"):
            file = path / name
            if file.is_file():
                text = file.read_text()
                tokenizer.chat_template = (json.loads(text)["chat_template"]
                                           if name.endswith(".json") else text)
                break
        else:
            raise CheckpointError(f"no chat template in {path} (tokenizer_config.json, "
                                  "chat_template.jinja or chat_template.json)")
    vocab = tokenizer.get_vocab()
    missing = [t for t in OBJEMBED_TOKENS if t not in vocab]
    if missing:
        raise CheckpointError(f"the tokenizer in {path} lacks the ObjEmbed special token(s) "
                              f"{', '.join(missing)}; is this an ObjEmbed checkpoint?")
    try:
        ids = special_token_ids(tokenizer)
    except KeyError as exc:
        raise CheckpointError(f"the tokenizer in {path} lacks the token {exc}") from exc
    return tokenizer, ids


def _build_modules(config: Any, device: torch.device, dtype: torch.dtype, attn: str
                   ) -> tuple[Any, ObjectProjector]:
    from transformers import Qwen3VLModel

    # Sub-models are built with _from_config(sub_config), which takes the dtype from each
    # sub-config: set all three so nothing is created in the stored (bf16) dtype by accident.
    for cfg in (config, config.text_config, config.vision_config):
        cfg.dtype = dtype
    with torch.device(device), no_init_weights():
        qwen = Qwen3VLModel._from_config(config, dtype=dtype, attn_implementation=attn)
        projector = ObjectProjector(config.text_config.hidden_size)
    projector.to(dtype=dtype)
    return qwen.eval(), projector.eval()


def _target_params(qwen: Any, projector: ObjectProjector) -> dict[str, torch.Tensor]:
    """Stored key -> the tensor it fills (persistent parameters and buffers)."""
    targets = {QWEN_PREFIX + k: v for k, v in qwen.state_dict(keep_vars=True).items()}
    targets.update(projector.state_dict(keep_vars=True))
    return targets


def load_weights(path: Path, qwen: Any, projector: ObjectProjector,
                 check_finite: bool = True) -> None:
    """Copy every stored tensor into its module tensor; strict key and shape checks."""
    from safetensors import safe_open

    files = weight_files(path)
    stored = {k for k in files if not k.startswith(SKIPPED_PREFIXES)}
    targets = _target_params(qwen, projector)
    missing = set(targets) - stored
    unexpected = stored - set(targets)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
        raise CheckpointError(f"checkpoint {path} does not match the ObjEmbed model built "
                              f"from its config.json: " + "; ".join(parts))
    by_file: dict[Path, list[str]] = {}
    for key in sorted(stored):
        by_file.setdefault(files[key], []).append(key)
    bad_shapes: list[str] = []
    non_finite: list[str] = []
    with torch.no_grad():
        for file, keys in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for key in keys:
                    target = targets[key]
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(target.shape):
                        bad_shapes.append(f"{key}: stored {shape}, expected "
                                          f"{tuple(target.shape)}")
                        continue
                    tensor = f.get_tensor(key)
                    if check_finite and tensor.is_floating_point() and \
                            not bool(torch.isfinite(tensor).all()):
                        non_finite.append(key)
                    target.copy_(tensor)
                    del tensor
    if bad_shapes:
        raise CheckpointError(f"wrong shapes in {path} ({len(bad_shapes)}): "
                              f"{_shorten(bad_shapes, 6)}")
    if non_finite:
        raise CheckpointError(f"non-finite (NaN/inf) weights in {path}: {_shorten(non_finite)}")


def _check_token_config(config: Any, ids: TokenIds, path: Path) -> None:
    """get_rope_index reads the vision token ids from the config: they must match."""
    if config.image_token_id != ids.image_pad or \
            config.vision_start_token_id != ids.vision_start:
        raise CheckpointError(
            f"config.json image_token_id/vision_start_token_id ({config.image_token_id}, "
            f"{config.vision_start_token_id}) differ from the tokenizer's <|image_pad|>/"
            f"<|vision_start|> ids ({ids.image_pad}, {ids.vision_start}) in {path}")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, attn: str = "auto",
                    check_finite: bool = True) -> LoadedCheckpoint:
    """Load config, tokenizer, image-processor config and weights (offline only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {root} (see model/README.md)")
    for name in ("config.json", "preprocessor_config.json"):
        if not (root / name).is_file():
            raise CheckpointError(f"missing {name} in {root}")
    if not ((root / "tokenizer.json").is_file() or (root / "vocab.json").is_file()):
        raise CheckpointError(f"missing tokenizer files (tokenizer.json or vocab.json + "
                              f"merges.txt) in {root}")
    problem = version_problem()
    if problem:
        raise CheckpointError(problem)
    dev = torch.device(device)
    config, attrs = load_config(root)
    tokenizer, ids = load_tokenizer(root)
    _check_token_config(config, ids, root)
    image_cfg = ImageProcessorConfig.from_json(root / "preprocessor_config.json")
    weight_files(root)  # fail on missing weights before building anything big
    attn_impl = resolve_attn(attn, dev, dtype)
    qwen, projector = _build_modules(config, dev, dtype, attn_impl)
    load_weights(root, qwen, projector, check_finite=check_finite)
    fold_patch_embedding(qwen.visual)  # one temporal slice in, half the FLOPs (preprocess.py)
    return LoadedCheckpoint(path=root, config=config, qwen=qwen, projector=projector,
                            tokenizer=tokenizer, token_ids=ids, image_config=image_cfg,
                            attrs=attrs, attn_implementation=attn_impl)

"""Where a TensorRT engine lives and when it is stale.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU and precision it was
built for, and only for the box counts its optimisation profile covers. Each engine file has a
JSON sidecar recording that key; a lookup whose key differs (another checkpoint size, another
GPU, a new TensorRT, another max_boxes) reports the engine as stale so it is rebuilt, never
silently used.

Naming: :func:`model_name` is the one rule that turns a checkpoint path into the ``model``
part of ONNX/engine file names and keys (model/build_engines.py and the runtime both use it).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_name(checkpoint: str | os.PathLike) -> str:
    """The checkpoint directory's own name, lower-cased, as the user wrote the path.

    Symlinks are NOT resolved: a checkpoint linked as ``model/ObjEmbed-2B`` into a download
    cache (``.../snapshots/3f9c...``) is named ``objembed-2b`` by the engine builder and the
    node alike. ``..`` is normalised lexically (``os.path.abspath``); ``.`` is the working
    directory as the OS reports it (resolved). Identity never rests on the name: the key
    also holds the ONNX hash, which holds the weights hash.
    """
    name = os.path.basename(os.path.abspath(os.path.expanduser(os.fspath(checkpoint))))
    if not name:
        raise ValueError(f"cannot name a model after {checkpoint!r}")
    return name.lower()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two engines are interchangeable iff keys are equal."""

    graph: str  # "projector" or "iou_head" or "wedetect"
    model: str  # e.g. "objembed-2b" (hidden size and layout in the name)
    onnx_sha256: str
    precision: str  # "fp32" | "fp16" | "bf16"
    gpu: str  # device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"
    tensorrt: str  # TensorRT version string
    box_profile: str  # optimisation profile of the box axis, "min/opt/max" rows

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def filename(self) -> str:
        gpu = "".join(c if c.isalnum() else "_" for c in self.gpu).strip("_").lower()
        return f"{self.graph}-{self.model}-{self.precision}-{gpu}-{self.digest()}.engine"


@dataclass(frozen=True)
class EngineLookup:
    path: Path
    status: str  # "ok" | "missing" | "stale"
    reason: str


def engine_path(cache_dir: str | Path, key: EngineKey) -> Path:
    return Path(cache_dir) / key.filename()


def lookup_engine(cache_dir: str | Path, key: EngineKey) -> EngineLookup:
    """Find the engine for `key`; say why it cannot be used if it can't."""
    path = engine_path(cache_dir, key)
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        return EngineLookup(path, "missing", f"no engine at {path}")
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return EngineLookup(path, "stale", f"unreadable sidecar {sidecar}: {exc}")
    expected = asdict(key)
    diffs = sorted(k for k in expected if recorded.get(k) != expected[k])
    if diffs:
        return EngineLookup(path, "stale", "engine was built for a different " + ", ".join(
            f"{k} ({recorded.get(k)!r} != {expected[k]!r})" for k in diffs))
    return EngineLookup(path, "ok", "engine matches")


def record_engine(path: str | Path, key: EngineKey) -> None:
    """Write the sidecar after a successful build (the engine file itself is written first)."""
    Path(path).with_suffix(".json").write_text(json.dumps(asdict(key), indent=1, sort_keys=True))

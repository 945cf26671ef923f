"""Config -> the parts of a Grounder: the ObjEmbed encoder, the configured Proposer and the
acceleration runtimes installed into the encoder's hooks.

The one place where the packages below the grounder are wired together: encoder/ knows
nothing of accel/ (accel/ fills in the encoder's hooks here) and the Grounder only sees a
``Proposer`` whatever the source. torch is imported when parts are built, not on import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objembed_ros.core.resize import merged_grid_for
from objembed_ros.proposals.base import (
    GridProposer,
    Proposer,
    SuppliedBoxesProposer,
    WholeImageProposer,
)

# wedetect: WeDetect-Uni proposals; external: boxes given with each frame (another
# detector), none otherwise; whole_image: one box [0, 0, W, H]; grid: sliding windows.
PROPOSERS = ("wedetect", "external", "whole_image", "grid")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class GrounderConfig:
    """How to build a Grounder; the node fills it from its parameters, the CLI from flags."""

    checkpoint: str
    proposer: str = "wedetect"  # one of PROPOSERS
    wedetect_checkpoint: str = ""
    num_proposals: int = 100
    device: str = "cpu"
    dtype: str = "float32"  # one of DTYPES
    attn: str = "auto"
    max_boxes: int = 300
    text_cache_size: int = 256
    frame_cache_size: int = 8  # per camera
    max_query_tokens: int = 256
    # Object projector runtime (objembed_ros.accel): falls back tensorrt -> onnxruntime ->
    # torch with a reason in `Grounder.backend`.
    projector_backend: str = "torch"  # one of objembed_ros.accel.backends.BACKENDS
    engine_cache_dir: str = ""  # ONNX exports and TensorRT engines; "" = ~/.cache/objembed_ros
    # Camera resolutions (W, H) whose projector graphs/engines are prepared when the grounder
    # is built (the node's on_configure); a frame of another resolution never exports or
    # builds anything: its projector runs in torch (logged once per grid).
    engine_resolutions: tuple[tuple[int, int], ...] = ()
    # Export/build missing or stale graphs/engines for engine_resolutions while building
    # (TensorRT: minutes); False: a missing engine fails the build with the command to run.
    allow_engine_build: bool = False
    text_cuda_graphs: bool = False  # CUDA only: replay captured graphs for the text pass
    # "exact" (PIL on the host, the official pixels), "device" (one uint8 upload, resize and
    # letterbox on the model's device) or "auto" (device on CUDA, exact elsewhere).
    preprocess: str = "auto"  # one of objembed_ros.encoder.preprocess.PREPROCESS_CHOICES


def check_config(config: GrounderConfig) -> None:
    """ValueError / FileNotFoundError naming the first problem, before anything loads."""
    if config.proposer not in PROPOSERS:
        raise ValueError(f"proposer must be one of {PROPOSERS}, got {config.proposer!r}")
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {config.dtype!r}")
    if not config.checkpoint:
        raise FileNotFoundError("no ObjEmbed checkpoint given (parameter 'checkpoint')")
    if not Path(config.checkpoint).is_dir():
        raise FileNotFoundError(f"ObjEmbed checkpoint directory not found: {config.checkpoint}")
    if config.proposer == "wedetect" and (
            not config.wedetect_checkpoint or not Path(config.wedetect_checkpoint).is_file()):
        raise FileNotFoundError(
            f"WeDetect checkpoint file not found: {config.wedetect_checkpoint!r} "
            "(parameter 'wedetect_checkpoint'; or set proposer to 'external' or "
            "'whole_image')")


def supplied_proposer(config: GrounderConfig, name: str = "supplied") -> SuppliedBoxesProposer:
    """The proposer for boxes given with a call (checked, clipped, at most max_boxes)."""
    return SuppliedBoxesProposer(max_boxes=config.max_boxes, name=name)


def build_proposer(config: GrounderConfig) -> Proposer:
    """The configured proposal source (WeDetect loads its checkpoint here)."""
    if config.proposer == "whole_image":
        return WholeImageProposer()
    if config.proposer == "grid":
        return GridProposer()
    if config.proposer == "external":
        return supplied_proposer(config, "external")
    import torch

    from objembed_ros.proposals.wedetect import WeDetectProposer

    # WeDetect runs in float32 on CPU; half precision only on CUDA.
    dtype = getattr(torch, config.dtype) if config.device.startswith("cuda") else torch.float32
    return WeDetectProposer.from_checkpoint(config.wedetect_checkpoint, device=config.device,
                                            dtype=dtype, num_proposals=config.num_proposals)


def build_encoder(config: GrounderConfig) -> Any:
    """The ObjEmbedEncoder (CheckpointError with the reason when the directory is wrong)."""
    import torch

    from objembed_ros.encoder.model import ObjEmbedEncoder

    return ObjEmbedEncoder.from_pretrained(
        config.checkpoint, device=config.device, dtype=getattr(torch, config.dtype),
        attn=config.attn, max_boxes=config.max_boxes, text_cache_size=config.text_cache_size)


def install_accel(encoder: Any, config: GrounderConfig) -> str:
    """Fill the encoder's hooks with the configured runtimes; returns what runs the
    projector, and why (``BackendChoice.describe``)."""
    backend = "projector backend: torch"
    if config.projector_backend != "torch":
        from objembed_ros.accel.projector_runtime import install_projector_backend

        cache_dir = config.engine_cache_dir or str(
            Path.home() / ".cache" / "objembed_ros" / "engines")
        grids = [merged_grid_for(w, h, encoder.image_config) for w, h in config.engine_resolutions]
        backend = install_projector_backend(
            encoder, config.projector_backend, cache_dir=cache_dir,
            allow_build=config.allow_engine_build, grids=grids).describe()
    if config.text_cuda_graphs:
        from objembed_ros.accel.cuda_graphs import install_text_graphs

        install_text_graphs(encoder, True)
    return backend


def build_parts(config: GrounderConfig) -> tuple[Any, Proposer, str]:
    """(encoder with its accel hooks filled, proposer, backend description)."""
    check_config(config)
    proposer = build_proposer(config)
    encoder = build_encoder(config)
    from objembed_ros.encoder.preprocess import use_preprocess_mode  # torch: lazily

    use_preprocess_mode(config.preprocess, encoder, proposer)
    return encoder, proposer, install_accel(encoder, config)


def free_device_memory() -> None:
    """Return cached CUDA memory to the driver after the parts were dropped."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # torch missing or CUDA unusable: nothing to free
        pass

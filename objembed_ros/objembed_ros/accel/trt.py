"""TensorRT helpers: engine keys for this GPU, engine builds, and a named-tensor runner.

``tensorrt`` is imported lazily (inside functions) so that this module, the engine recipe
(model/build_engines.py) and the runtimes import on machines without it.

Supported: TensorRT 10.x (Jetson JetPack 6/7, older workstations) and 11.x (PyPI today).
What differs between them lives in one place, :class:`TrtApi`, chosen by the installed major
version. Both build *strongly typed* networks: precision comes from the ONNX graph's own
types (:func:`objembed_ros.accel.onnx_export.export_projector` with ``precision`` writes a
typed fp16/bf16 graph with RoIAlign sampling, LayerNorm and softmax in float32), never from
builder flags. TensorRT 11 removed the weak-typing flags (``BuilderFlag.FP16/INT8/
PREFER_PRECISION_CONSTRAINTS``), ``IBuilderConfig.int8_calibrator`` and the ``IInt8*``
calibrators, and every network is strongly typed; TensorRT 10 needs the network creation
flag ``STRONGLY_TYPED`` and, for a strongly typed network, no builder precision flag at
all. int8 is not offered (TensorRT 11 takes int8 only as explicit Q/DQ nodes).
Runtime (both): ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``.
IO tensors are float32 in every precision.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objembed_ros.accel.engine_cache import EngineKey, file_sha256, record_engine
from objembed_ros.accel.onnx_export import PRECISIONS

log = logging.getLogger(__name__)

SUPPORTED_MAJORS = (10, 11)
OPT_BOXES = 100  # the profile's opt shape (a typical proposal count)


class EngineError(RuntimeError):
    """A TensorRT engine cannot be used (missing, stale, failed build); the message says why."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise EngineError("the tensorrt Python package is not installed "
                          "(pip install tensorrt, or JetPack's python3-libnvinfer)") from exc
    return trt


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


@dataclass(frozen=True)
class TrtApi:
    """The TensorRT API differences this project depends on, for one major version."""

    trt: Any
    major: int

    def network_flags(self) -> int:
        """create_network flags for a strongly typed network."""
        if self.major == 10:
            return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return 0  # 11: always strongly typed (the flag is deprecated and ignored)


def tensorrt_api(trt: Any = None) -> TrtApi:
    """The adapter for the installed (or given) ``tensorrt`` module; EngineError if its
    major version is not supported."""
    trt = import_tensorrt() if trt is None else trt
    version = str(trt.__version__)
    try:
        major = int(version.split(".")[0])
    except ValueError as exc:
        raise EngineError(f"unreadable TensorRT version {version!r}") from exc
    if major not in SUPPORTED_MAJORS:
        raise EngineError(f"TensorRT {version} is not supported (supported: "
                          f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)})")
    return TrtApi(trt, major)


def gpu_identity(device: torch.device | str) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise EngineError(f"TensorRT engines need a CUDA device, not {str(dev)!r}")
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


def box_profile(max_boxes: int) -> tuple[int, int, int]:
    """min / opt / max rows of the box axis: up to ``max_boxes`` (the encoder's limit)."""
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    return 1, min(OPT_BOXES, max_boxes), int(max_boxes)


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the dynamic box axis (input name -> fixed trailing dims)."""

    inputs: dict[str, tuple[int, ...]]
    boxes: tuple[int, int, int]

    @classmethod
    def for_graph(cls, graph: str, hidden_size: int, max_boxes: int) -> Profile:
        """The profile of the "projector" (``boxes`` N x 4) or "iou_head" (``hidden`` N x D)."""
        inputs = {"projector": {"boxes": (4,)}, "iou_head": {"hidden": (hidden_size,)}}
        if graph not in inputs:
            raise ValueError(f"unknown graph {graph!r}")
        return cls(inputs[graph], box_profile(max_boxes))

    def describe(self) -> str:
        return "/".join(str(v) for v in self.boxes)


def make_engine_key(graph: str, model: str, onnx_path: str | Path, precision: str,
                    gpu: str, compute_capability: str, trt_version: str,
                    profile: Profile) -> EngineKey:
    """The key an engine for this ONNX file, precision, box profile and GPU must carry."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return EngineKey(graph=graph, model=model, onnx_sha256=file_sha256(onnx_path),
                     precision=precision, gpu=gpu, compute_capability=compute_capability,
                     tensorrt=trt_version, box_profile=profile.describe())


def build_engine(onnx_path: str | Path, engine_out: str | Path, key: EngineKey, profile: Profile,
                 workspace_gb: float = 4.0, trt: Any = None) -> Path:
    """Build a strongly typed engine from a typed ONNX graph, serialise it, then write its
    key sidecar (engine_cache format). ``trt`` defaults to the installed module."""
    api = tensorrt_api(trt)
    trt = api.trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt = builder.create_optimization_profile()
    lo, mid, hi = profile.boxes
    for name, tail in profile.inputs.items():
        opt.set_shape(name, (lo, *tail), (mid, *tail), (hi, *tail))
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path}")
    out = Path(engine_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    record_engine(out, key)
    log.info("built %s (%s, TensorRT %s, boxes %s)", out, key.precision, key.tensorrt,
             key.box_profile)
    return out


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32,
                 "INT64": torch.int64, "BF16": torch.bfloat16, "BOOL": torch.bool}


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current (cuda:N, N > 0: TensorRT allocates and enqueues on the
    current device, and torch's current stream is per device)."""
    return torch.cuda.device(device)


def stream_handle(device: torch.device) -> int:
    """The raw handle of torch's current stream on ``device``."""
    return torch.cuda.current_stream(device).cuda_stream


class TrtRunner:
    """Run a deserialised engine on torch CUDA tensors, on torch's current stream.

    Inputs and outputs are torch tensors on ``device`` (no host copies); outputs are
    allocated per call at the shapes the engine reports for the given input shapes. Every
    TensorRT call runs with ``device`` current.
    """

    def __init__(self, engine_path: str | Path, device: torch.device | str,
                 trt: Any = None) -> None:
        self.api = tensorrt_api(trt)
        trt = self.api.trt
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with device_guard(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise EngineError(f"could not deserialise {engine_path} "
                                  "(built by another TensorRT?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def _place(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return tensor.to(self.device, dtype).contiguous()

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def __call__(self, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        with device_guard(self.device):
            return self._run(list(self._bind(tensors)))

    def _bind(self, tensors: dict[str, torch.Tensor]) -> Iterator[torch.Tensor]:
        for name in self.inputs:
            t = self._place(tensors[name], self._dtype(name))
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise EngineError(f"input {name} shape {tuple(t.shape)} is outside the "
                                  "engine's optimisation profile (more boxes than max_boxes?)")
            self.context.set_tensor_address(name, t.data_ptr())
            yield t

    def _run(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Enqueue on the current stream; ``inputs`` stay referenced until enqueued."""
        outs = {}
        for name in self.outputs:
            out = self._empty(tuple(self.context.get_tensor_shape(name)), self._dtype(name))
            outs[name] = out
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(stream_handle(self.device)):
            raise EngineError("TensorRT execution failed")
        return outs

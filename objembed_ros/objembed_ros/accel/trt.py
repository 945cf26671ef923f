"""TensorRT helpers: engine keys for this GPU, engine builds, and a named-tensor runner.

``tensorrt`` is imported lazily (inside functions) so that this module, the engine recipe
(model/build_engines.py) and the runtimes import on machines without it. Written for the
TensorRT 10 API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``,
``build_serialized_network``); TensorRT 8.x is not supported.

Precision: ``fp16`` builds with FP16 enabled and keeps the RoIAlign contraction (the
``Einsum`` layers) in float32, as the official model runs RoIAlign in float32; ``int8``
additionally needs a calibrator (:func:`make_calibrator`, fed by model/build_engines.py
with the real encoder's projector inputs for calibration/images.txt); ``fp32``
is the reference. IO tensors stay float32 in every precision.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from objembed_ros.accel.engine_cache import EngineKey, file_sha256, record_engine

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
BOX_PROFILE = (1, 100, 300)  # min / opt / max boxes per frame


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


def gpu_identity(device: torch.device | str) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise EngineError(f"TensorRT engines need a CUDA device, not {str(dev)!r}")
    major, minor = torch.cuda.get_device_capability(dev)
    return torch.cuda.get_device_name(dev), f"{major}.{minor}"


def make_engine_key(graph: str, model: str, onnx_path: str | Path, precision: str,
                    gpu: str, compute_capability: str, trt_version: str,
                    calibration_cache: str | Path | None = None) -> EngineKey:
    """The key an engine for this ONNX file, precision and GPU must carry."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    calib = ""
    if precision == "int8":
        if calibration_cache is None or not Path(calibration_cache).exists():
            raise EngineError("an int8 engine needs a calibration cache "
                              "(model/build_engines.py --precision int8 --calibration ...)")
        calib = file_sha256(calibration_cache)
    return EngineKey(graph=graph, model=model, onnx_sha256=file_sha256(onnx_path),
                     precision=precision, gpu=gpu, compute_capability=compute_capability,
                     tensorrt=trt_version, calibration_sha256=calib)


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the dynamic box axis (input name -> min/opt/max rows)."""

    inputs: dict[str, tuple[int, ...]]  # name -> fixed trailing dims
    boxes: tuple[int, int, int] = BOX_PROFILE


def build_engine(onnx_path: str | Path, engine_out: str | Path, key: EngineKey, profile: Profile,
                 calibrator: Any = None, workspace_gb: float = 4.0) -> Path:
    """Build and serialise an engine, then write its key sidecar (engine_cache format)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
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
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        # RoIAlign in float32 as the official model: pin the einsum contractions.
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type == trt.LayerType.EINSUM:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
    if key.precision == "int8":
        if calibrator is None:
            raise EngineError("int8 needs a calibrator (or a calibration cache it can read)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path}")
    out = Path(engine_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    record_engine(out, key)
    log.info("built %s (%s, %s)", out, key.precision, key.gpu)
    return out


def make_calibrator(batches: Iterator[dict[str, np.ndarray]], cache_path: str | Path,
                    device: torch.device | str) -> Any:
    """An entropy calibrator over ``batches`` (input name -> array at the profile's opt
    shape); reads ``cache_path`` when it exists (no batches needed) and writes it after."""
    trt = import_tensorrt()
    cache = Path(cache_path)

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._keep: dict[str, torch.Tensor] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._keep = {n: torch.from_numpy(batch[n]).to(device).contiguous() for n in names}
            return [int(self._keep[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(data))

    return _Calibrator()


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32,
                 "INT64": torch.int64, "BF16": torch.bfloat16, "BOOL": torch.bool}


class TrtRunner:
    """Run a deserialised engine on torch CUDA tensors, on torch's current stream.

    Inputs and outputs are torch tensors (no host copies); outputs are allocated per call
    at the shapes the engine reports for the given input shapes.
    """

    def __init__(self, engine_path: str | Path, device: torch.device | str) -> None:
        trt = import_tensorrt()
        self.device = torch.device(device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineError(f"could not deserialise {engine_path} (built by another TensorRT?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) != mode]

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def __call__(self, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        keep = []
        for name in self.inputs:
            t = tensors[name].to(self.device, self._dtype(name)).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise EngineError(f"input {name} shape {tuple(t.shape)} is outside the "
                                  "engine's optimisation profile (max boxes?)")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._dtype(name), device=self.device)
            outs[name] = out
            self.context.set_tensor_address(name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise EngineError("TensorRT execution failed")
        return outs

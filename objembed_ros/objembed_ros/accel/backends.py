"""Which runtime executes the object projector: torch, onnxruntime or TensorRT.

The choice is a parameter; what is actually available depends on the machine (TensorRT needs
a CUDA GPU and the tensorrt package; onnxruntime needs its package and, on a CUDA device, its
CUDAExecutionProvider: the CPU build there would run the projector on the host with
device<->host copies every frame, slower than torch on the GPU). An unavailable choice falls
back along tensorrt -> onnxruntime -> torch, and the reason is returned so the caller logs
it: a robot operator must be able to see that the engine they asked for is not in use.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_FALLBACK = {"tensorrt": "onnxruntime", "onnxruntime": "torch"}


@dataclass(frozen=True)
class BackendChoice:
    requested: str
    chosen: str
    reasons: tuple[str, ...]  # one line per backend skipped, empty when the request was met

    @property
    def fell_back(self) -> bool:
        return self.chosen != self.requested

    def describe(self) -> str:
        if not self.fell_back:
            return f"projector backend: {self.chosen}"
        return (f"projector backend {self.requested!r} unavailable ({'; '.join(self.reasons)}); "
                f"using {self.chosen!r}")


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _ort_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def backend_unavailable_reason(name: str, device: str) -> str | None:
    """None if `name` can run on `device`, else why not."""
    if name == "torch":
        return None
    if name == "onnxruntime":
        if not _has_module("onnxruntime"):
            return "onnxruntime is not installed"
        if device.startswith("cuda") and "CUDAExecutionProvider" not in _ort_providers():
            return ("this onnxruntime has no CUDAExecutionProvider (CPU build): it would run "
                    f"on the host, not on {device} (install onnxruntime-gpu)")
        return None
    if name == "tensorrt":
        if not device.startswith("cuda"):
            return f"TensorRT needs a CUDA device, not {device!r}"
        if not _has_module("tensorrt"):
            return "the tensorrt Python package is not installed"
        return None
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def choose_backend(requested: str, device: str) -> BackendChoice:
    """The first available backend along the fallback chain starting at `requested`."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {BACKENDS}")
    reasons: list[str] = []
    name: str | None = requested
    while name is not None:
        why = backend_unavailable_reason(name, device)
        if why is None:
            return BackendChoice(requested, name, tuple(reasons))
        reasons.append(f"{name}: {why}")
        name = _FALLBACK.get(name)
    raise AssertionError("torch is always available")  # pragma: no cover

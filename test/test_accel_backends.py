"""Backend selection falls back with a reason, never silently."""
from __future__ import annotations

import pytest

from objembed_ros.accel import backends
from objembed_ros.accel.backends import choose_backend


def test_torch_is_always_available() -> None:
    choice = choose_backend("torch", "cpu")
    assert (choice.chosen, choice.fell_back, choice.reasons) == ("torch", False, ())


def test_tensorrt_on_cpu_falls_back_with_reason() -> None:
    choice = choose_backend("tensorrt", "cpu")
    assert choice.fell_back and choice.chosen == "onnxruntime"  # onnxruntime is a dependency
    assert choice.describe() == ("projector backend 'tensorrt' unavailable (tensorrt: TensorRT "
                                 "needs a CUDA device, not 'cpu'); using 'onnxruntime'")


def test_chain_reaches_torch_when_nothing_else(monkeypatch) -> None:
    monkeypatch.setattr(backends, "_has_module", lambda name: False)
    choice = choose_backend("tensorrt", "cuda:0")
    assert choice.chosen == "torch"
    assert choice.reasons == ("tensorrt: the tensorrt Python package is not installed",
                              "onnxruntime: onnxruntime is not installed")


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        choose_backend("tvm", "cpu")


def test_cpu_onnxruntime_is_not_used_on_a_cuda_device(monkeypatch) -> None:
    """onnxruntime's CPU build on a GPU would copy device<->host every frame: torch instead."""
    monkeypatch.setattr(backends, "_has_module", lambda name: name == "onnxruntime")
    monkeypatch.setattr(backends, "_ort_providers", lambda: ["CPUExecutionProvider"])
    choice = choose_backend("tensorrt", "cuda:1")
    assert choice.chosen == "torch"
    assert "CUDAExecutionProvider" in choice.reasons[1] and "cuda:1" in choice.reasons[1]
    assert choose_backend("onnxruntime", "cuda:0").chosen == "torch"
    assert choose_backend("onnxruntime", "cpu").chosen == "onnxruntime"  # host is fine on CPU


def test_cuda_onnxruntime_is_used_on_a_cuda_device(monkeypatch) -> None:
    monkeypatch.setattr(backends, "_has_module", lambda name: name == "onnxruntime")
    monkeypatch.setattr(backends, "_ort_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    choice = choose_backend("tensorrt", "cuda:0")
    assert choice.chosen == "onnxruntime" and "tensorrt" in choice.reasons[0]

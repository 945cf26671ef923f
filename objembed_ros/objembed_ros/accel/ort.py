"""The one way this package opens an onnxruntime session.

Why shared: the settings matter for the robot, not the graph. CUDA when the device is CUDA
and the provider exists, full graph optimisation, and no busy-waiting thread pool: a spinning
pool steals the cores torch needs for the other stages on small CPUs (2-core CI, Jetson).
"""
from __future__ import annotations

import os
from typing import Any

import torch


def ort_providers(device: torch.device) -> list:
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: str | os.PathLike, device: torch.device | str = "cpu",
                threads: int = 0) -> Any:
    """An onnxruntime InferenceSession for `path` on `device` (threads 0: ORT's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=ort_providers(torch.device(device)))

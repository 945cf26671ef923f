"""ONNX export of WeDetect-Uni's dense part (backbone + neck + head + DFL decoding).

Why this cut: everything up to the dense boxes and scores is fixed-shape tensor math that
TensorRT compiles well; top-k and the per-prompt NMS stay in torch
(:mod:`objembed_ros.proposals.select`), where they are exact and cheap. The graph:

* input ``images``: [B, 3, S, S] float32 (or the model's compute dtype), the letterboxed
  RGB image divided by 255 (exactly what ``WeDetectProposer.preprocess`` produces);
* output ``boxes``: [B, A, 4] float32 xyxy in letterbox pixels (anchors P3, P4, P5,
  row-major; A = 8400 at 640), not clipped;
* output ``scores``: [B, A, P] float32 sigmoid scores (P = 256 prompts).

The legacy TorchScript exporter is used (``dynamo=False``): it needs no ``onnxscript`` and
gives plain opset-17 graphs (Einsum, Softmax, Conv, ConvTranspose) that TensorRT parses.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from objembed_ros.accel.ort import ort_session

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")


def _model_and_size(proposer_or_model: object, size: int | None) -> tuple[nn.Module, int]:
    model = getattr(proposer_or_model, "model", proposer_or_model)
    if not isinstance(model, nn.Module):
        raise TypeError("expected a WeDetectProposer or a WeDetectModel, got "
                        f"{type(proposer_or_model).__name__}")
    if size is None:
        size = getattr(proposer_or_model, "input_size", None) or model.config.input_size
    if int(size) % 32:
        raise ValueError(f"size must be a multiple of 32, got {size}")
    return model, int(size)


def export_wedetect_onnx(proposer_or_model: object, path: str | os.PathLike,
                         size: int | None = None, *, batch: int = 1,
                         dynamic_batch: bool = False, opset: int = OPSET) -> Path:
    """Export the dense WeDetect graph for an S x S input (S = ``size``, default the
    proposer's input size: 640 base, 1280 large) and return the ``.onnx`` path.

    The export runs on the model's own device and dtype; it does not modify the model.
    """
    model, size = _model_and_size(proposer_or_model, size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    dtype = model.compute_dtype if hasattr(model, "compute_dtype") else param.dtype
    dummy = torch.rand(batch, 3, size, size, device=param.device, dtype=dtype)
    dynamic_axes = ({INPUT_NAME: {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
                    if dynamic_batch else None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
            torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), opset_version=opset,
                              dynamic_axes=dynamic_axes, do_constant_folding=True,
                              dynamo=False)
    finally:
        model.train(was_training)
    return path


class OnnxWeDetectDense:
    """Run an exported graph with onnxruntime: letterboxed [B, 3, S, S] -> (boxes, scores).

    A drop-in for ``WeDetectProposer.dense`` (assign ``proposer.dense = runner``) so the
    exact selection code runs on onnxruntime outputs.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        self.session = ort_session(path, device)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.session.run(list(OUTPUT_NAMES),
                                         {INPUT_NAME: x.detach().cpu().numpy()})
        return torch.from_numpy(boxes), torch.from_numpy(scores)

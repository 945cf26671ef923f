"""Export the ObjEmbed object projector and IoU head to ONNX (dynamic number of boxes).

Two graphs per checkpoint:

``projector`` (one per merged grid H' x W', i.e. one camera resolution)
    inputs  ``image_embeds``        (H'W', D) float32  merged visual tokens E (raster order)
            ``deepstack_second_last`` (H'W', D) float32  deepstack[-2]
            ``deepstack_last``      (H'W', D) float32  deepstack[-1]
            ``boxes``               (N, 4)   float32  xyxy in resized pixels ([0,32W']x[0,32H'])
    outputs ``object_tokens``       (N, D)   R_i + P_i (first ``<object>`` of pair i)
            ``second_tokens``       (N, D)   logit_pos_embedding[0] + P_i
            ``image_pos``           (H'W', D) image_pos_projector(sine(y, x)) (a constant)
    Everything :meth:`ObjectProjector.forward` does: pyramid upsampling, float32 RoIAlign at
    1/8, 1/16, 1/32, merge, object_vision_projector, object_pos_projector, the logit_pos add
    and the image position addend.

``iou_head`` (grid independent)
    input ``hidden`` (N, D) -> output ``iou_logits`` (N,): logit_iou_proj.

Why one projector graph per grid: the pyramid's reshape to H' x W', the transposed-conv map
sizes, the RoIAlign sample bounds (ceil(map/7)+1) and the image position table all depend
on H', W'; Qwen3-VL's own position interpolation is also resolution dependent. A robot
camera has a fixed resolution, so a graph specialised to its grid is the natural unit
(fully static except N, which is what TensorRT optimises best). File names and metadata
record the grid; the runtime keeps one session/engine per grid.

N = 0: the graph does NOT take zero boxes. onnxruntime 1.32 dies with SIGFPE (an integer
division by the empty box axis inside a shape computation) and TensorRT profiles start at
N = 1 anyway. So every runtime in :mod:`objembed_ros.accel.projector_runtime` feeds one
dummy whole-image box ``[0, 0, 32W', 32H']`` when N = 0 and returns empty outputs -- the
same policy as the encoder and the official code (which never calls the projector with
zero boxes either). The parity tests cover N = 0 through the runtimes.

Exported with the TorchScript exporter (``dynamo=False``: no onnxscript needed) at opset 17
in float32 from a float32 CPU copy of the weights; TensorRT builds fp16/int8 from it.
Metadata (``metadata_props``): graph, hidden_size, merged_h, merged_w, wide,
checkpoint, weights_sha256 (of the exported module's state dict), objembed_ros version,
torch version, opset, input/output names.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from objembed_ros import __version__
from objembed_ros.encoder.projector import ObjectProjector

OPSET = 17
PROJECTOR_INPUTS = ("image_embeds", "deepstack_second_last", "deepstack_last", "boxes")
PROJECTOR_OUTPUTS = ("object_tokens", "second_tokens", "image_pos")
IOU_INPUTS = ("hidden",)
IOU_OUTPUTS = ("iou_logits",)
TRACE_BOXES = 5  # any N > 1 works for tracing; the box axis is dynamic in the graph


class ProjectorGraph(nn.Module):
    """ObjectProjector.forward with the merged grid baked in (what gets exported)."""

    def __init__(self, projector: ObjectProjector, merged_hw: tuple[int, int]) -> None:
        super().__init__()
        self.projector = projector
        self.merged_hw = (int(merged_hw[0]), int(merged_hw[1]))

    def forward(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                ds_last: torch.Tensor, boxes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.projector(image_embeds, ds_second_last, ds_last, boxes, self.merged_hw)


class IouHeadGraph(nn.Module):
    """logit_iou_proj: (N, D) hidden states at the second ``<object>`` tokens -> (N,)."""

    def __init__(self, projector: ObjectProjector) -> None:
        super().__init__()
        self.head = projector.logit_iou_proj

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).squeeze(-1)


def weights_sha256(module: nn.Module) -> str:
    """Content hash of a module's weights as float32 (names, shapes, values).

    Why: the ONNX file name carries it, so changed weights never reuse an old export; and
    a bf16 GPU load and a float32 CPU load of the same checkpoint (bf16 -> fp32 is exact)
    hash alike, so engines built offline are found by the runtime.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu")
        t = (t.float() if t.is_floating_point() else t).contiguous()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def float32_cpu_copy(projector: ObjectProjector) -> ObjectProjector:
    """A float32 CPU copy for export (bf16 weights upcast exactly)."""
    if (projector.logit_pos_embedding.weight.dtype == torch.float32
            and projector.logit_pos_embedding.weight.device.type == "cpu"):
        return projector.eval()
    return copy.deepcopy(projector).to(device="cpu", dtype=torch.float32).eval()


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    graph: str  # "projector" | "iou_head"
    merged_hw: tuple[int, int] | None
    metadata: dict[str, str]


def projector_onnx_name(model: str, hidden: int, merged_hw: tuple[int, int], wsha: str) -> str:
    return f"projector-{model}-d{hidden}-{merged_hw[0]}x{merged_hw[1]}-{wsha[:12]}.onnx"


def iou_onnx_name(model: str, hidden: int, wsha: str) -> str:
    return f"iou_head-{model}-d{hidden}-{wsha[:12]}.onnx"


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            inputs: tuple[str, ...], outputs: tuple[str, ...],
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints are expected
        torch.onnx.export(module, args, str(tmp), input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=dynamic_axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    tmp.replace(path)


def _common_metadata(projector: ObjectProjector, checkpoint: str, wsha: str) -> dict[str, str]:
    return {"hidden_size": str(projector.hidden_size), "wide": str(projector.wide).lower(),
            "checkpoint": checkpoint, "weights_sha256": wsha,
            "objembed_ros_version": __version__, "torch_version": torch.__version__,
            "opset": str(OPSET), "dtype": "float32"}


@torch.no_grad()
def export_projector(projector: ObjectProjector, merged_hw: tuple[int, int], out_dir: str | Path,
                     model: str = "objembed", checkpoint: str = "", wsha: str | None = None,
                     force: bool = False) -> ExportedGraph:
    """Export the projector graph for one merged grid; reuse an existing identical export.

    model: a short name used in file names and engine keys (e.g. "objembed-2b").
    checkpoint: recorded in the metadata (directory name or path). wsha: precomputed
    :func:`weights_sha256` of ``projector`` (computed when None).
    """
    mh, mw = int(merged_hw[0]), int(merged_hw[1])
    if mh < 1 or mw < 1:
        raise ValueError(f"merged grid must be positive, got {mh}x{mw}")
    wsha = wsha or weights_sha256(projector)
    path = Path(out_dir) / projector_onnx_name(model, projector.hidden_size, (mh, mw), wsha)
    meta = _common_metadata(projector, checkpoint, wsha)
    meta.update(graph="projector", merged_h=str(mh), merged_w=str(mw), model=model,
                inputs=json.dumps(PROJECTOR_INPUTS), outputs=json.dumps(PROJECTOR_OUTPUTS))
    if path.exists() and not force:
        return ExportedGraph(path, "projector", (mh, mw), read_metadata(path))
    proj = float32_cpu_copy(projector)
    d = proj.hidden_size
    gen = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(mh * mw, d, generator=gen) for _ in range(3))
    xy = torch.rand(TRACE_BOXES, 2, generator=gen) * torch.tensor([16.0 * mw, 16.0 * mh])
    boxes = torch.cat((xy, xy + torch.tensor([16.0 * mw, 16.0 * mh])), dim=1)
    axes = {"boxes": {0: "num_boxes"}, "object_tokens": {0: "num_boxes"},
            "second_tokens": {0: "num_boxes"}}
    _export(ProjectorGraph(proj, (mh, mw)).eval(), (*feats, boxes), path, PROJECTOR_INPUTS,
            PROJECTOR_OUTPUTS, axes)
    _set_metadata(path, meta)
    return ExportedGraph(path, "projector", (mh, mw), meta)


@torch.no_grad()
def export_iou_head(projector: ObjectProjector, out_dir: str | Path, model: str = "objembed",
                    checkpoint: str = "", wsha: str | None = None,
                    force: bool = False) -> ExportedGraph:
    """Export logit_iou_proj with a dynamic number of rows."""
    wsha = wsha or weights_sha256(projector)
    path = Path(out_dir) / iou_onnx_name(model, projector.hidden_size, wsha)
    meta = _common_metadata(projector, checkpoint, wsha)
    meta.update(graph="iou_head", model=model, inputs=json.dumps(IOU_INPUTS),
                outputs=json.dumps(IOU_OUTPUTS))
    if path.exists() and not force:
        return ExportedGraph(path, "iou_head", None, read_metadata(path))
    proj = float32_cpu_copy(projector)
    hidden = torch.randn(TRACE_BOXES, proj.hidden_size, generator=torch.Generator().manual_seed(1))
    _export(IouHeadGraph(proj).eval(), (hidden,), path, IOU_INPUTS, IOU_OUTPUTS,
            {"hidden": {0: "num_boxes"}, "iou_logits": {0: "num_boxes"}})
    _set_metadata(path, meta)
    return ExportedGraph(path, "iou_head", None, meta)

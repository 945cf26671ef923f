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
from a CPU copy of the weights in the target precision (``precision``):

``fp32``  the reference graph (onnxruntime runs this one; TensorRT fp32 engines too).
``fp16`` / ``bf16``  a *typed* graph for TensorRT's strongly typed networks: the module is
    traced in that dtype, so every tensor carries the type the official bf16 code gives it,
    and the RoIAlign sampling (box math, bilinear weights) and its contractions (``Einsum``)
    are float32 because :meth:`ObjectProjector.roi_features` computes them in float32.
    :func:`keep_float32` then lifts to float32 what must not run in low precision:
    ``LayerNormalization`` and ``Softmax`` (:data:`FLOAT32_OPS`) and every node whose ONNX
    schema has no variant in that type (``Range``; for bf16 also ``ConvTranspose``,
    ``Sin``, ``Cos``), each wrapped in Casts. IO stays float32 in every precision.

Metadata (``metadata_props``): graph, hidden_size, merged_h, merged_w, wide,
checkpoint, weights_sha256 (of the exported module's state dict), objembed_ros version,
torch version, opset, precision, dtype, input/output names.
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
PRECISIONS = ("fp32", "fp16", "bf16")
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# ONNX TensorProto element types (onnx is imported lazily): FLOAT, FLOAT16, BFLOAT16
_ONNX_TYPES = {"fp32": 1, "fp16": 10, "bf16": 16}
_COMPLEX = (14, 15)  # COMPLEX64, COMPLEX128
FLOAT32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax"})


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


class TypedIO(nn.Module):
    """Float32 IO around ``inner`` run in ``dtype``: what a typed export traces.

    cast: per input, whether it is cast to ``dtype`` (the projector's boxes are not: the
    projector decides their precision itself, float32 for RoIAlign).
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype, cast: tuple[bool, ...]) -> None:
        super().__init__()
        self.inner, self.dtype, self.cast = inner, dtype, cast

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outs = self.inner(*(a.to(self.dtype) if c else a
                            for a, c in zip(args, self.cast, strict=True)))
        if isinstance(outs, torch.Tensor):
            return outs.float()
        return tuple(o.float() for o in outs)


def _schema_accepts(node, elem_type: int, input_index: int, opset: int) -> bool:
    """Whether ``node``'s ONNX schema allows ``elem_type`` at that input."""
    import onnx

    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    formal = schema.inputs[min(input_index, len(schema.inputs) - 1)]
    wanted = {10: "tensor(float16)", 16: "tensor(bfloat16)"}[elem_type]
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    return wanted in allowed.get(formal.type_str, {formal.type_str})


def keep_float32(model, low: int):
    """Lift to float32 every node of ``model`` that reads a ``low``-typed tensor and either
    is in :data:`FLOAT32_OPS` or has no ``low`` variant in its schema: Casts to float32 in
    front of those inputs, Casts back to ``low`` behind the outputs typed like them.
    Returns the checked model (``onnx.checker`` full check, types re-inferred)."""
    import onnx
    from onnx import helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (
        *inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    nodes = []
    for node in model.graph.node:
        to = next((a for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to is not None and to.i in _COMPLEX:
            # The TorchScript exporter promotes a Python number against a bf16 tensor to
            # Cast(to=COMPLEX128) (torch 2.13, ``x / int`` in sine_embedding); it means the
            # tensor's own type, and a complex tensor is never valid here.
            to.i = low
        low_in = [i for i, name in enumerate(node.input) if name and types.get(name) == low]
        if not low_in or (node.op_type not in FLOAT32_OPS
                          and all(_schema_accepts(node, low, i, opset) for i in low_in)):
            nodes.append(node)
            continue
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        formal_in = [schema.inputs[min(i, len(schema.inputs) - 1)].type_str for i in low_in]
        for i in low_in:
            lifted = f"{node.input[i]}__f32__{node.name}"
            nodes.append(helper.make_node("Cast", [node.input[i]], [lifted], to=1,
                                          name=f"{node.name}/cast_in{i}"))
            node.input[i] = lifted
        outs = []
        for j, name in enumerate(node.output):
            formal = schema.outputs[min(j, len(schema.outputs) - 1)].type_str
            if name and (types.get(name) == low or formal in formal_in):
                node.output[j] = f"{name}__f32"
                outs.append(helper.make_node("Cast", [node.output[j]], [name], to=low,
                                             name=f"{node.name}/cast_out{j}"))
        nodes.extend((node, *outs))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


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


def cpu_copy(projector: ObjectProjector, precision: str = "fp32") -> ObjectProjector:
    """A CPU copy in the export precision (bf16 weights upcast to float32 exactly)."""
    dtype = _TORCH_DTYPES[precision]
    if (projector.logit_pos_embedding.weight.dtype == dtype
            and projector.logit_pos_embedding.weight.device.type == "cpu"):
        return projector.eval()
    return copy.deepcopy(projector).to(device="cpu", dtype=dtype).eval()


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    graph: str  # "projector" | "iou_head"
    merged_hw: tuple[int, int] | None
    metadata: dict[str, str]


def _suffix(precision: str) -> str:
    return "" if precision == "fp32" else f"-{precision}"


def projector_onnx_name(model: str, hidden: int, merged_hw: tuple[int, int], wsha: str,
                        precision: str = "fp32") -> str:
    return (f"projector-{model}-d{hidden}-{merged_hw[0]}x{merged_hw[1]}-{wsha[:12]}"
            f"{_suffix(precision)}.onnx")


def iou_onnx_name(model: str, hidden: int, wsha: str, precision: str = "fp32") -> str:
    return f"iou_head-{model}-d{hidden}-{wsha[:12]}{_suffix(precision)}.onnx"


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
            dynamic_axes: dict[str, dict[int, str]], precision: str,
            cast: tuple[bool, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    if precision != "fp32":
        module = TypedIO(module, _TORCH_DTYPES[precision], cast).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints are expected
        torch.onnx.export(module, args, str(tmp), input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes=dynamic_axes,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    if precision != "fp32":
        import onnx

        onnx.save(keep_float32(onnx.load(str(tmp)), _ONNX_TYPES[precision]), str(tmp))
    tmp.replace(path)


def _common_metadata(projector: ObjectProjector, checkpoint: str, wsha: str,
                     precision: str) -> dict[str, str]:
    return {"hidden_size": str(projector.hidden_size), "wide": str(projector.wide).lower(),
            "checkpoint": checkpoint, "weights_sha256": wsha,
            "objembed_ros_version": __version__, "torch_version": torch.__version__,
            "opset": str(OPSET), "precision": precision,
            "dtype": str(_TORCH_DTYPES[precision]).removeprefix("torch.")}


@torch.no_grad()
def export_projector(projector: ObjectProjector, merged_hw: tuple[int, int], out_dir: str | Path,
                     model: str = "objembed", checkpoint: str = "", wsha: str | None = None,
                     force: bool = False, precision: str = "fp32") -> ExportedGraph:
    """Export the projector graph for one merged grid; reuse an existing identical export.

    model: a short name used in file names and engine keys (e.g. "objembed-2b").
    checkpoint: recorded in the metadata (directory name or path). wsha: precomputed
    :func:`weights_sha256` of ``projector`` (computed when None). precision: "fp32" or a
    typed "fp16" / "bf16" graph for TensorRT (see the module docstring).
    """
    _check_precision(precision)
    mh, mw = int(merged_hw[0]), int(merged_hw[1])
    if mh < 1 or mw < 1:
        raise ValueError(f"merged grid must be positive, got {mh}x{mw}")
    wsha = wsha or weights_sha256(projector)
    path = Path(out_dir) / projector_onnx_name(model, projector.hidden_size, (mh, mw), wsha,
                                               precision)
    meta = _common_metadata(projector, checkpoint, wsha, precision)
    meta.update(graph="projector", merged_h=str(mh), merged_w=str(mw), model=model,
                inputs=json.dumps(PROJECTOR_INPUTS), outputs=json.dumps(PROJECTOR_OUTPUTS))
    if path.exists() and not force:
        return ExportedGraph(path, "projector", (mh, mw), read_metadata(path))
    proj = cpu_copy(projector, precision)
    d = proj.hidden_size
    gen = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(mh * mw, d, generator=gen) for _ in range(3))
    xy = torch.rand(TRACE_BOXES, 2, generator=gen) * torch.tensor([16.0 * mw, 16.0 * mh])
    boxes = torch.cat((xy, xy + torch.tensor([16.0 * mw, 16.0 * mh])), dim=1)
    axes = {"boxes": {0: "num_boxes"}, "object_tokens": {0: "num_boxes"},
            "second_tokens": {0: "num_boxes"}}
    _export(ProjectorGraph(proj, (mh, mw)).eval(), (*feats, boxes), path, PROJECTOR_INPUTS,
            PROJECTOR_OUTPUTS, axes, precision, (True, True, True, False))
    _set_metadata(path, meta)
    return ExportedGraph(path, "projector", (mh, mw), meta)


@torch.no_grad()
def export_iou_head(projector: ObjectProjector, out_dir: str | Path, model: str = "objembed",
                    checkpoint: str = "", wsha: str | None = None,
                    force: bool = False, precision: str = "fp32") -> ExportedGraph:
    """Export logit_iou_proj with a dynamic number of rows (precision as the projector)."""
    _check_precision(precision)
    wsha = wsha or weights_sha256(projector)
    path = Path(out_dir) / iou_onnx_name(model, projector.hidden_size, wsha, precision)
    meta = _common_metadata(projector, checkpoint, wsha, precision)
    meta.update(graph="iou_head", model=model, inputs=json.dumps(IOU_INPUTS),
                outputs=json.dumps(IOU_OUTPUTS))
    if path.exists() and not force:
        return ExportedGraph(path, "iou_head", None, read_metadata(path))
    proj = cpu_copy(projector, precision)
    hidden = torch.randn(TRACE_BOXES, proj.hidden_size, generator=torch.Generator().manual_seed(1))
    _export(IouHeadGraph(proj).eval(), (hidden,), path, IOU_INPUTS, IOU_OUTPUTS,
            {"hidden": {0: "num_boxes"}, "iou_logits": {0: "num_boxes"}}, precision, (True,))
    _set_metadata(path, meta)
    return ExportedGraph(path, "iou_head", None, meta)

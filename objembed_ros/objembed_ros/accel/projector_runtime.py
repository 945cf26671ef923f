"""Runtimes that execute the object projector and IoU head: torch, onnxruntime or TensorRT.

Every runtime is specialised to one merged grid (H', W') and is called like
``ObjectProjector.forward`` without the grid: ``rt(E, ds[-2], ds[-1], boxes) ->
(object_tokens, second_tokens, image_pos)``; IoU runtimes: ``iou(hidden) -> (N,)``.
:class:`ProjectorBackend` picks the backend (falling back with a logged reason via
:func:`objembed_ros.accel.backends.choose_backend`), exports/looks up one graph or engine
per declared grid in :meth:`ProjectorBackend.prepare` and caches the runtimes by (H', W').
:func:`install_projector_backend` puts one into the encoder's ``projector_backend`` hook
(the grounder's build step calls it; the encoder never imports this module).

N = 0: the ONNX/TensorRT graphs need at least one box (see onnx_export), so the runtimes
run the encoder's dummy whole-image box (``encoder.projector.dummy_box``) and return empty
outputs. (The encoder itself already passes that box when a frame has none.)

Dtypes: ONNX/TensorRT graphs take and return float32; outputs are cast back to the
dtype of ``image_embeds`` (bf16 on GPU). Their internal precision is float32 (ORT) or the
typed graph's (TensorRT fp16/bf16: RoIAlign sampling, LayerNorm and softmax in float32), so
on a bf16 encoder they are at least as precise as the official bf16 projector, not
bit-identical to it.

Stale engines are never used: a TensorRT engine is looked up by its full
:class:`EngineKey` (ONNX hash, GPU, TensorRT version, precision, box profile); a missing or
stale one is built when ``allow_build`` is set, otherwise :class:`EngineError` says which
command builds it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from objembed_ros.accel.backends import BackendChoice, choose_backend
from objembed_ros.accel.engine_cache import lookup_engine, model_name
from objembed_ros.accel.onnx_export import (
    PROJECTOR_INPUTS,
    export_iou_head,
    export_projector,
    read_metadata,
    weights_sha256,
)
from objembed_ros.accel.ort import ort_session
from objembed_ros.encoder.model import ObjEmbedEncoder
from objembed_ros.encoder.projector import ObjectProjector, dummy_box

log = logging.getLogger(__name__)

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class ProjectorRuntime(Protocol):
    name: str
    merged_hw: tuple[int, int]

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor) -> Outputs: ...


def _with_dummy(run, merged_hw: tuple[int, int], image_embeds: torch.Tensor,
                ds2: torch.Tensor, ds1: torch.Tensor, boxes: torch.Tensor) -> Outputs:
    if boxes.shape[0] > 0:
        return run(image_embeds, ds2, ds1, boxes)
    obj, second, pos = run(image_embeds, ds2, ds1, dummy_box(merged_hw, boxes.dtype,
                                                             boxes.device))
    return obj[:0], second[:0], pos


class TorchProjectorRuntime:
    """The module itself (the reference; official numerics in the module's dtype)."""

    name = "torch"

    def __init__(self, projector: ObjectProjector, merged_hw: tuple[int, int]) -> None:
        self.projector = projector
        self.merged_hw = (int(merged_hw[0]), int(merged_hw[1]))

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor) -> Outputs:
        return self.projector(image_embeds, ds_second_last, ds_last, boxes, self.merged_hw)


class _OrtSession:
    """An InferenceSession fed from / returning torch tensors; IO binding on CUDA."""

    def __init__(self, onnx_path: str | Path, device: torch.device, threads: int = 0) -> None:
        self.device = device
        self.session = ort_session(onnx_path, device, threads)
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, torch.Tensor], out_dtype: torch.dtype,
            out_shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        if self.on_cuda and all(t.is_cuda for t in feeds.values()):
            return self._run_bound(feeds, out_dtype, out_shapes)
        arrays = {k: v.detach().to("cpu", torch.float32).contiguous().numpy()
                  for k, v in feeds.items()}
        outs = self.session.run(self.outputs, arrays)
        return [torch.from_numpy(np.ascontiguousarray(o)).to(self.device, out_dtype)
                for o in outs]

    def _run_bound(self, feeds: dict[str, torch.Tensor], out_dtype: torch.dtype,
                   out_shapes: list[tuple[int, ...]]
                   ) -> list[torch.Tensor]:  # pragma: no cover - needs CUDA onnxruntime
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        keep = []
        for name, t in feeds.items():
            t = t.detach().to(torch.float32).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", dev_id, np.float32, tuple(t.shape), t.data_ptr())
        outs = [torch.empty(shape, dtype=torch.float32, device=self.device)
                for shape in out_shapes]
        for name, out in zip(self.outputs, outs, strict=True):
            binding.bind_output(name, "cuda", dev_id, np.float32, tuple(out.shape),
                                out.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)  # returns after ORT's stream finished
        return [o.to(out_dtype) for o in outs]


class OrtProjectorRuntime:
    """onnxruntime session of an exported projector graph (CUDA EP when available)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, merged_hw: tuple[int, int],
                 device: torch.device | str = "cpu", threads: int = 0) -> None:
        self.merged_hw = (int(merged_hw[0]), int(merged_hw[1]))
        meta = read_metadata(onnx_path)
        grid = (int(meta.get("merged_h", -1)), int(meta.get("merged_w", -1)))
        if meta.get("graph") != "projector" or grid != self.merged_hw:
            raise ValueError(f"{onnx_path} is a {meta.get('graph')} graph for grid {grid}, "
                             f"not the projector for {self.merged_hw}")
        self._sess = _OrtSession(onnx_path, torch.device(device), threads)

    def _run(self, image_embeds: torch.Tensor, ds2: torch.Tensor, ds1: torch.Tensor,
             boxes: torch.Tensor) -> Outputs:
        feeds = dict(zip(PROJECTOR_INPUTS, (image_embeds, ds2, ds1, boxes), strict=True))
        n, d = boxes.shape[0], image_embeds.shape[1]
        obj, second, pos = self._sess.run(feeds, image_embeds.dtype,
                                          [(n, d), (n, d), tuple(image_embeds.shape)])
        return obj, second, pos

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor) -> Outputs:
        return _with_dummy(self._run, self.merged_hw, image_embeds, ds_second_last, ds_last,
                           boxes)


class OrtIouRuntime:
    """onnxruntime session of the exported IoU head."""

    def __init__(self, onnx_path: str | Path, device: torch.device | str = "cpu",
                 threads: int = 0) -> None:
        self._sess = _OrtSession(onnx_path, torch.device(device), threads)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] == 0:
            return hidden.new_zeros((0,))
        return self._sess.run({"hidden": hidden}, hidden.dtype, [(hidden.shape[0],)])[0]


class TrtProjectorRuntime:
    """A deserialised TensorRT projector engine (found and checked by the caller)."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, merged_hw: tuple[int, int],
                 device: torch.device | str) -> None:
        from objembed_ros.accel.trt import TrtRunner

        self.merged_hw = (int(merged_hw[0]), int(merged_hw[1]))
        self._runner = TrtRunner(engine_path, device)

    def _run(self, image_embeds: torch.Tensor, ds2: torch.Tensor, ds1: torch.Tensor,
             boxes: torch.Tensor) -> Outputs:
        outs = self._runner(image_embeds=image_embeds, deepstack_second_last=ds2,
                            deepstack_last=ds1, boxes=boxes)
        dt = image_embeds.dtype
        return (outs["object_tokens"].to(dt), outs["second_tokens"].to(dt),
                outs["image_pos"].to(dt))

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor) -> Outputs:
        return _with_dummy(self._run, self.merged_hw, image_embeds, ds_second_last, ds_last,
                           boxes)


class TrtIouRuntime:
    def __init__(self, engine_path: str | Path, device: torch.device | str) -> None:
        from objembed_ros.accel.trt import TrtRunner

        self._runner = TrtRunner(engine_path, device)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[0] == 0:
            return hidden.new_zeros((0,))
        return self._runner(hidden=hidden)["iou_logits"].to(hidden.dtype)


class ProjectorBackend:
    """Backend selection + per-grid runtime cache; callable like ``ObjectProjector``.

    backend: "torch" | "onnxruntime" | "tensorrt" (the request; ``choice`` says what runs).
    cache_dir: where ONNX exports (``onnx/``) and engines (``engines/``) live; required for
    onnxruntime/tensorrt. model: short name for files and engine keys ("objembed-2b").
    allow_build: export ONNX / build missing or stale TensorRT engines in :meth:`prepare`
    (a TensorRT build takes minutes: do it ahead with model/build_engines.py and leave this
    off on robots). precision: TensorRT engine precision ("fp16" default; "bf16",
    "fp32"), built from an ONNX graph exported in that precision. max_boxes: the largest
    box count the engines' optimisation profile accepts (the encoder's max_boxes).
    """

    def __init__(self, projector: ObjectProjector, backend: str = "torch",
                 device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
                 model: str = "objembed", checkpoint: str = "", allow_build: bool = False,
                 precision: str = "fp16", ort_threads: int = 0, max_boxes: int = 300) -> None:
        self.projector = projector
        self.device = torch.device(device)
        self.choice: BackendChoice = choose_backend(backend, str(self.device))
        (log.warning if self.choice.fell_back else log.info)(self.choice.describe())
        if self.choice.chosen != "torch" and cache_dir is None:
            raise ValueError(f"the {self.choice.chosen} projector backend needs a cache_dir "
                             "for its ONNX exports / engines")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model, self.checkpoint = model, checkpoint
        self.allow_build, self.precision, self.ort_threads = allow_build, precision, ort_threads
        self.max_boxes = int(max_boxes)
        self._runtimes: dict[tuple[int, int], ProjectorRuntime] = {}
        self.prepared = False  # set by prepare(): no exports/builds after it
        self.unprepared_grids: list[tuple[int, int]] = []  # met on frames, run in torch
        self._iou = None
        self._wsha: str | None = None

    @property
    def name(self) -> str:
        return self.choice.chosen

    def _weights_sha(self) -> str:
        if self._wsha is None:
            self._wsha = weights_sha256(self.projector)
        return self._wsha

    def _onnx_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "onnx"

    def _export(self, merged_hw: tuple[int, int] | None, precision: str = "fp32") -> Path:
        kw = dict(model=self.model, checkpoint=self.checkpoint, wsha=self._weights_sha(),
                  precision=precision)
        if merged_hw is None:
            return export_iou_head(self.projector, self._onnx_dir(), **kw).path
        return export_projector(self.projector, merged_hw, self._onnx_dir(), **kw).path

    def _engine(self, graph: str, merged_hw: tuple[int, int] | None) -> Path:
        """The engine for ``graph`` (typed ONNX exported first), looked up by its full key."""
        from objembed_ros.accel import trt

        onnx_path = self._export(merged_hw, self.precision)
        profile = trt.Profile.for_graph(graph, self.projector.hidden_size, self.max_boxes)
        gpu, cc = trt.gpu_identity(self.device)
        key = trt.make_engine_key(graph, self.model, onnx_path, self.precision, gpu, cc,
                                  trt.tensorrt_version(), profile)
        assert self.cache_dir is not None
        found = lookup_engine(self.cache_dir / "engines", key)
        if found.status == "ok":
            return found.path
        if not self.allow_build:
            grid = "" if merged_hw is None else f" --grid {merged_hw[0]}x{merged_hw[1]}"
            raise trt.EngineError(
                f"TensorRT {graph} engine {found.status}: {found.reason}. Build it with: "
                f"python model/build_engines.py --checkpoint DIR --precision {self.precision}"
                f"{grid} --max-boxes {self.max_boxes} --cache-dir {self.cache_dir}")
        log.warning("building TensorRT %s engine (%s): %s", graph, found.reason, found.path)
        return trt.build_engine(onnx_path, found.path, key, profile)

    def for_grid(self, merged_hw: tuple[int, int]) -> ProjectorRuntime:
        """The runtime for one merged grid: exported or loaded on first use until
        :meth:`prepare` ran; after it, a grid it did not prepare runs in torch (a frame
        never waits for an export or an engine build) and is logged once."""
        grid = (int(merged_hw[0]), int(merged_hw[1]))
        rt = self._runtimes.get(grid)
        if rt is not None:
            return rt
        name = self.choice.chosen
        if name == "torch":
            rt = TorchProjectorRuntime(self.projector, grid)
        elif self.prepared:
            log.warning("camera grid %dx%d (merged tokens) was not prepared at configure: its "
                        "object projector runs in torch, not %s. Add the camera's resolution "
                        "to engine_resolutions and configure again.", grid[0], grid[1], name)
            self.unprepared_grids.append(grid)
            rt = TorchProjectorRuntime(self.projector, grid)
        elif name == "onnxruntime":
            rt = OrtProjectorRuntime(self._export(grid), grid, self.device, self.ort_threads)
        else:
            rt = TrtProjectorRuntime(self._engine("projector", grid), grid, self.device)
        self._runtimes[grid] = rt
        return rt

    def prepare(self, grids: Iterable[tuple[int, int]]) -> None:
        """Create the runtimes for the declared camera grids and the IoU head now (exports,
        engine builds and their failures happen here, at configure, never on a frame)."""
        for grid in grids:
            self.for_grid(grid)
        self.iou_runtime()
        self.prepared = True

    def iou_runtime(self):
        if self._iou is None:
            name = self.choice.chosen
            if name == "torch":
                self._iou = self.projector.iou_logits
            elif name == "onnxruntime":
                self._iou = OrtIouRuntime(self._export(None), self.device, self.ort_threads)
            else:
                self._iou = TrtIouRuntime(self._engine("iou_head", None), self.device)
        return self._iou

    def __call__(self, image_embeds: torch.Tensor, ds_second_last: torch.Tensor,
                 ds_last: torch.Tensor, boxes: torch.Tensor, merged_hw: tuple[int, int]
                 ) -> Outputs:
        return self.for_grid(merged_hw)(image_embeds, ds_second_last, ds_last, boxes)

    def iou_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.iou_runtime()(hidden)


def install_projector_backend(encoder: ObjEmbedEncoder, name: str = "torch",
                              cache_dir: str | Path | None = None, allow_build: bool = False,
                              model: str | None = None, precision: str = "fp16",
                              grids: Iterable[tuple[int, int]] = ()) -> BackendChoice:
    """Run the encoder's object projector and IoU head on "torch", "onnxruntime" or
    "tensorrt" (installed into its ``projector_backend`` hook).

    An unavailable backend falls back (tensorrt -> onnxruntime -> torch) with a logged
    reason; the returned ``BackendChoice`` says what runs. cache_dir holds the ONNX exports
    and engines (required unless torch runs); model names them (default: the checkpoint
    directory name, lower-cased); grids (H', W') are prepared now, exporting/building
    missing or stale graphs when allow_build is set, so failures surface at configure time;
    a grid met later runs in torch (see :meth:`ProjectorBackend.for_grid`).
    """
    backend = ProjectorBackend(encoder.projector, name, encoder.device, cache_dir,
                               model=model or model_name(encoder.ckpt.path),
                               checkpoint=str(encoder.ckpt.path), allow_build=allow_build,
                               precision=precision, max_boxes=encoder.max_boxes)
    backend.prepare(grids)
    encoder.projector_backend = None if backend.choice.chosen == "torch" else backend
    return backend.choice

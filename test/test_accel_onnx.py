"""ONNX/onnxruntime projector and IoU head equal the torch modules; backend hook and fallback.

Tolerance 1e-4 absolute on CPU float32 (the tiny checkpoint's projector outputs are O(1-10);
observed differences are ~1e-5, from onnxruntime's different matmul/einsum summation order).
GPU-only tests (TensorRT parity, CUDA-graph text pass) skip unless CUDA (+ tensorrt).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from objembed_ros.accel.cuda_graphs import install_text_graphs
from objembed_ros.accel.onnx_export import (
    IOU_INPUTS,
    PROJECTOR_INPUTS,
    PROJECTOR_OUTPUTS,
    export_iou_head,
    export_projector,
    read_metadata,
)
from objembed_ros.accel.projector_runtime import (
    OrtIouRuntime,
    OrtProjectorRuntime,
    ProjectorBackend,
    TorchProjectorRuntime,
    install_projector_backend,
)
from objembed_ros.core.resize import smart_resize
from objembed_ros.encoder.model import ObjEmbedEncoder

TOL = 1e-4
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def encoder(tiny_objembed_dir: Path) -> ObjEmbedEncoder:
    return ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, dtype=torch.float32)


def _odd_photo_grid() -> tuple[int, int]:
    """The merged grid of an odd-sized photo (331 x 517) under small pixel limits."""
    h, w = smart_resize(331, 517, 32, min_pixels=60 * 32 * 32, max_pixels=120 * 32 * 32)
    return h // 32, w // 32


GRIDS = [(7, 11), (13, 9), _odd_photo_grid()]


def _boxes(n: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """Boxes in resized pixels: random, plus border-touching, tiny and zero-width ones."""
    mh, mw = grid
    w, h = 32.0 * mw, 32.0 * mh
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.6
    b = torch.cat((xy, torch.minimum(xy + wh, torch.tensor([w, h]))), dim=1)
    special = torch.tensor([[0.0, 0.0, w, h], [w - 3, h - 2, w, h], [5.0, 5.0, 5.0, 40.0],
                            [10.0, 10.0, 10.5, 10.25]])
    k = min(n, len(special))
    b[:k] = special[:k]
    return b


def _features(encoder: ObjEmbedEncoder, grid: tuple[int, int], seed: int
              ) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(grid[0] * grid[1], encoder.hidden_size, generator=g)
                 for _ in range(3))


@pytest.fixture(scope="module")
def exports(encoder: ObjEmbedEncoder, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("onnx")
    graphs = {grid: export_projector(encoder.projector, grid, out, model="tiny",
                                     checkpoint="tiny-test") for grid in GRIDS}
    graphs["iou"] = export_iou_head(encoder.projector, out, model="tiny", checkpoint="tiny-test")
    return graphs


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_projector_onnx_matches_torch(encoder: ObjEmbedEncoder, exports: dict,
                                      grid: tuple[int, int]) -> None:
    ort_rt = OrtProjectorRuntime(exports[grid].path, grid)
    torch_rt = TorchProjectorRuntime(encoder.projector, grid)
    worst = 0.0
    for n in (0, 1, 100, 300):
        feats = _features(encoder, grid, seed=n)
        boxes = _boxes(n, grid, seed=n)
        with torch.no_grad():
            ref = torch_rt(*feats, boxes)
        got = ort_rt(*feats, boxes)
        for name, r, o in zip(PROJECTOR_OUTPUTS, ref, got, strict=True):
            assert o.shape == r.shape, (name, n)
            assert o.dtype == r.dtype
            if r.numel():
                diff = float((o - r).abs().max())
                worst = max(worst, diff)
                assert diff < TOL, f"{name} N={n} grid={grid}: max |diff| {diff:.2e}"
    assert ref[0].abs().max() > 1.0  # non-trivial values, so the tolerance means something
    print(f"projector {grid}: max |onnx - torch| = {worst:.2e}")


def test_iou_head_onnx_matches_torch(encoder: ObjEmbedEncoder, exports: dict) -> None:
    rt = OrtIouRuntime(exports["iou"].path)
    for n in (0, 1, 100, 300):
        hidden = torch.randn(n, encoder.hidden_size, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = encoder.projector.iou_logits(hidden)
        got = rt(hidden)
        assert got.shape == ref.shape == (n,)
        if n:
            assert float((got - ref).abs().max()) < TOL


def test_metadata_records_grid_and_checkpoint(encoder: ObjEmbedEncoder, exports: dict) -> None:
    meta = read_metadata(exports[(13, 9)].path)
    assert (meta["graph"], meta["merged_h"], meta["merged_w"]) == ("projector", "13", "9")
    assert meta["hidden_size"] == str(encoder.hidden_size)
    assert meta["checkpoint"] == "tiny-test" and len(meta["weights_sha256"]) == 64
    assert meta["objembed_ros_version"] and int(meta["opset"]) >= 17
    assert "13x9" in exports[(13, 9)].path.name
    import onnx

    model = onnx.load(str(exports[(13, 9)].path))
    assert [i.name for i in model.graph.input] == list(PROJECTOR_INPUTS)
    boxes = model.graph.input[3].type.tensor_type.shape.dim
    assert boxes[0].dim_param == "num_boxes" and boxes[1].dim_value == 4
    iou = onnx.load(str(exports["iou"].path))
    assert [i.name for i in iou.graph.input] == list(IOU_INPUTS)
    assert read_metadata(exports["iou"].path)["graph"] == "iou_head"


def test_runtime_rejects_wrong_grid(exports: dict) -> None:
    with pytest.raises(ValueError, match="not the projector for"):
        OrtProjectorRuntime(exports[(7, 11)].path, (11, 7))


def test_encode_image_onnxruntime_equals_torch(tiny_objembed_dir: Path, tmp_path: Path,
                                               photo_wide: np.ndarray, caplog) -> None:
    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, dtype=torch.float32)
    # small pixel limits keep the test fast and give an odd merged grid
    enc.image_config = dataclasses.replace(enc.image_config, min_pixels=60 * 32 * 32,
                                           max_pixels=90 * 32 * 32)
    rgb = np.ascontiguousarray(photo_wide[:331, :517])
    boxes = np.array([[10.0, 20.0, 200.0, 300.0], [0.0, 0.0, 517.0, 331.0],
                      [400.5, 100.25, 410.0, 330.0]])
    ref = [enc.encode_image(rgb, b) for b in (boxes, np.zeros((0, 4)))]
    grid = (ref[0].resized_size[1] // 32, ref[0].resized_size[0] // 32)
    assert grid[0] != grid[1]
    with caplog.at_level(logging.INFO, logger="objembed_ros.accel.projector_runtime"):
        choice = install_projector_backend(enc, "onnxruntime", cache_dir=tmp_path, model="tiny",
                                           grids=[grid])
    assert choice.chosen == "onnxruntime" and enc.projector_backend is not None
    # exported at install (configure), not on the first frame
    assert list((tmp_path / "onnx").glob(f"projector-tiny-*-{grid[0]}x{grid[1]}-*.onnx"))
    got = [enc.encode_image(rgb, b) for b in (boxes, np.zeros((0, 4)))]
    assert enc.projector_backend.for_grid(grid).name == "onnxruntime"
    assert enc.projector_backend.unprepared_grids == []
    for r, g in zip(ref, got, strict=True):
        for name in ("object_embeddings", "iou_logits", "global_embeddings"):
            a, b = getattr(r, name), getattr(g, name)
            assert a.shape == b.shape
            if a.numel():
                assert float((a - b).abs().max()) < TOL, name
    assert got[1].object_embeddings.shape[0] == 0
    assert install_projector_backend(enc, "torch").chosen == "torch"
    assert enc.projector_backend is None


def test_undeclared_grid_runs_in_torch_and_exports_nothing(tiny_objembed_dir: Path,
                                                           tmp_path: Path, photo: np.ndarray,
                                                           caplog) -> None:
    """A frame of a resolution not prepared at install never exports or builds: torch runs
    its projector (the same numbers as no backend at all) and the grid is logged once."""
    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, dtype=torch.float32)
    boxes = np.array([[10.0, 20.0, 200.0, 300.0], [100.0, 50.0, 480.0, 500.0]])
    ref = enc.encode_image(photo, boxes)
    install_projector_backend(enc, "onnxruntime", cache_dir=tmp_path, model="tiny",
                              grids=[(7, 11)])
    exported = sorted(p.name for p in (tmp_path / "onnx").glob("projector-*.onnx"))
    assert len(exported) == 1 and "-7x11-" in exported[0]
    with caplog.at_level(logging.WARNING, logger="objembed_ros.accel.projector_runtime"):
        got = [enc.encode_image(photo, boxes) for _ in range(2)]
    assert sorted(p.name for p in (tmp_path / "onnx").glob("projector-*.onnx")) == exported
    assert enc.projector_backend.unprepared_grids == [(30, 30)]  # 512x512 -> 960x960 px
    assert sum("was not prepared" in r.getMessage() for r in caplog.records) == 1
    for g in got:
        assert torch.equal(g.object_embeddings, ref.object_embeddings)


def test_tensorrt_on_cpu_falls_back_to_onnxruntime_with_log(encoder: ObjEmbedEncoder,
                                                            tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="objembed_ros.accel.projector_runtime"):
        backend = ProjectorBackend(encoder.projector, "tensorrt", "cpu", tmp_path)
    assert backend.name == "onnxruntime"
    assert "'tensorrt' unavailable" in caplog.text and "CUDA device" in caplog.text


def test_missing_engine_raises_with_build_command(encoder: ObjEmbedEncoder, tmp_path: Path,
                                                  monkeypatch) -> None:
    """No stale or missing engine is ever used silently (TensorRT parts faked on CPU)."""
    from objembed_ros.accel import backends, trt
    from objembed_ros.accel.engine_cache import engine_path, record_engine

    monkeypatch.setattr(backends, "backend_unavailable_reason", lambda name, device: None)
    monkeypatch.setattr(trt, "gpu_identity", lambda device: ("Fake GPU", "8.7"))
    monkeypatch.setattr(trt, "tensorrt_version", lambda: "10.3.0")
    backend = ProjectorBackend(encoder.projector, "tensorrt", "cpu", tmp_path, model="tiny")
    assert backend.name == "tensorrt"
    with pytest.raises(trt.EngineError, match="engine missing.*build_engines.py.*--grid 7x11"):
        backend.for_grid((7, 11))
    # an engine whose sidecar records another TensorRT is reported stale, not loaded
    onnx_path = next((tmp_path / "onnx").glob("projector-*7x11*-fp16.onnx"))
    key = trt.make_engine_key("projector", "tiny", onnx_path, "fp16", "Fake GPU", "8.7",
                              "10.3.0", trt.Profile.for_graph("projector", 64, 300))
    path = engine_path(tmp_path / "engines", key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an engine")
    record_engine(path, dataclasses.replace(key, tensorrt="8.6.1"))
    with pytest.raises(trt.EngineError, match="engine stale.*tensorrt"):
        backend.for_grid((7, 11))


def test_text_bucketed_static_pass_equals_eager(encoder: ObjEmbedEncoder) -> None:
    """The CUDA-graph runner's padding + 4-D mask logic, run eagerly on CPU."""
    from objembed_ros.accel.cuda_graphs import TextGraphRunner

    texts = ["the red cup", "a person in a white space suit on the left of the flag"]
    encoder.text_cache.clear()
    ref = encoder.encode_text(texts)
    encoder.text_cache.clear()
    encoder.text_runner = TextGraphRunner(encoder.qwen.language_model, "cpu", use_graphs=False,
                                          length_buckets=(48, 96), batch_buckets=(4,))
    try:
        got = encoder.encode_text(texts)
    finally:
        encoder.text_runner = None
        encoder.text_cache.clear()
    assert float((got - ref).abs().max()) < 1e-5


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs a CUDA GPU and tensorrt")
def test_tensorrt_projector_matches_torch(encoder: ObjEmbedEncoder, tmp_path: Path
                                          ) -> None:  # pragma: no cover - GPU only
    """fp16 engine vs the float32 torch projector on the GPU.

    Tolerance: fp16 has a 2^-11 ~ 5e-4 relative step; the 49*D -> D projector sums ~3000
    products for the tiny model, so accumulated error grows ~sqrt(K) * eps * |w||x|. We
    bound the error relative to the output scale: max |diff| <= 2e-2 * max |ref| (2 % of
    the feature scale), and the mean relative error <= 5e-3. RoIAlign stays float32.
    """
    dev = torch.device("cuda")
    proj = encoder.projector.to(dev)
    try:
        backend = ProjectorBackend(proj, "tensorrt", dev, tmp_path, model="tiny",
                                   allow_build=True, precision="fp16")
        for grid in GRIDS[:2]:
            for n in (0, 1, 100, 300):
                feats = tuple(f.to(dev) for f in _features(encoder, grid, seed=n))
                boxes = _boxes(n, grid, seed=n).to(dev)
                with torch.no_grad():
                    ref = proj(*feats, boxes, grid)
                got = backend(*feats, boxes, grid)
                for r, o in zip(ref, got, strict=True):
                    assert o.shape == r.shape
                    if r.numel():
                        scale = float(r.abs().max())
                        assert float((o - r).abs().max()) <= 2e-2 * scale
                        assert float((o - r).abs().mean() / r.abs().mean()) <= 5e-3
        hidden = torch.randn(300, encoder.hidden_size, device=dev)
        with torch.no_grad():
            ref_iou = proj.iou_logits(hidden)
        got_iou = backend.iou_logits(hidden)
        assert float((got_iou - ref_iou).abs().max()) <= 2e-2 * float(ref_iou.abs().max())
    finally:
        encoder.projector.to("cpu")


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA GPU")
def test_text_cuda_graphs_match_eager(tiny_objembed_dir: Path) -> None:  # pragma: no cover
    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, device="cuda",
                                          dtype=torch.float32, attn="sdpa")
    texts = ["the red cup", "a black dog", "the man wearing a hat"]
    ref = enc.encode_text(texts)
    enc.text_cache.clear()
    assert install_text_graphs(enc, True)
    got = enc.encode_text(texts)
    enc.text_cache.clear()
    again = enc.encode_text(texts[:1])  # replay of another bucket, then the same again
    assert not enc.text_runner.disabled, "capture failed; see the warning log"
    assert float((got - ref).abs().max()) < 1e-3
    assert float((again[0] - ref[0]).abs().max()) < 1e-3

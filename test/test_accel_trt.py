"""TensorRT 10.x / 11.x on CPU: typed ONNX exports, engine keys and profiles, version dispatch.

The fake ``tensorrt`` modules below expose only the Python API surface this project may use,
as NVIDIA documents it for each major version (TensorRT 10 Python API; the TensorRT 11
"Removed Python APIs and Replacements" migration page): TensorRT 11 has no
``BuilderFlag.FP16/INT8/BF16/PREFER_PRECISION_CONSTRAINTS/OBEY_PRECISION_CONSTRAINTS``, no
``IBuilderConfig.int8_calibrator`` / ``set_calibration_profile`` and no ``IInt8*Calibrator``
classes; its ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is kept but ignored. A strongly
typed network (both) refuses per-layer precision. Calling a removed API raises
AttributeError, so the test fails.
"""
from __future__ import annotations

import collections
import contextlib
import enum
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from objembed_ros.accel import trt
from objembed_ros.accel.engine_cache import lookup_engine, model_name
from objembed_ros.accel.onnx_export import export_iou_head, export_projector
from objembed_ros.accel.projector_runtime import install_projector_backend
from objembed_ros.encoder.projector import ObjectProjector

D = 64
GRID = (4, 5)
FLOAT, FLOAT16, BFLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, \
    onnx.TensorProto.BFLOAT16


# ---------------------------------------------------------------------- fake TensorRT
class _Strict:
    """An object with exactly the given attributes: anything else raises AttributeError."""

    def __init__(self, **attrs) -> None:
        self.__dict__.update(attrs)


def fake_tensorrt(major: int, calls: list) -> types.ModuleType:
    """A ``tensorrt`` module with the documented 10.x or 11.x builder/runtime surface."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = f"{major}.3.0"
    flags = ["TF32", "REFIT", "STRIP_PLAN", "SPARSE_WEIGHTS"]  # present in both
    if major == 10:
        flags += ["FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS",
                  "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"]
        mod.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {})
    mod.BuilderFlag = enum.Enum("BuilderFlag", flags)
    mod.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     {"STRONGLY_TYPED": 0})
    mod.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    mod.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    mod.DataType = enum.Enum("DataType", ["FLOAT", "HALF", "BF16", "INT32", "INT64", "BOOL"])

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    def make_config():
        config = _Strict(set_memory_pool_limit=lambda pool, size: calls.append(("pool", size)),
                         add_optimization_profile=lambda p: calls.append(("profile", p.shapes)),
                         set_flag=lambda flag: calls.append(("flag", flag.name)),
                         clear_flag=lambda flag: calls.append(("clear", flag.name)))
        if major == 10:
            config.int8_calibrator = None
            config.set_calibration_profile = lambda p: calls.append(("calib_profile",))
        return config

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.strongly_typed = major == 11 or bool(flags & 1)

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return make_config()

        def create_optimization_profile(self):
            profile = _Strict(shapes={})
            profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(
                name, (lo, opt, hi))
            return profile

        def build_serialized_network(self, network: Network, config) -> bytes:
            if not network.strongly_typed:
                raise AssertionError("a weakly typed network was built")
            calls.append(("build",))
            return b"serialized-engine"

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse", Path(path).name))
            onnx.checker.check_model(onnx.load(path), full_check=True)
            return True

    class Engine:
        names = ("hidden", "iou_logits")
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str):
            return mod.TensorIOMode.INPUT if name == "hidden" else mod.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return mod.DataType.FLOAT

        def create_execution_context(self):
            calls.append(("context", _current_device(calls)))
            shapes = {}
            context = _Strict(set_input_shape=lambda n, s: shapes.__setitem__(n, s) or True,
                              set_tensor_address=lambda n, ptr: None,
                              get_tensor_shape=lambda n: (shapes["hidden"][0],))
            context.execute_async_v3 = lambda stream: calls.append(
                ("execute", stream, _current_device(calls))) or True
            return context

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> Engine:
            calls.append(("deserialize", _current_device(calls)))
            return Engine()

    mod.Logger, mod.Builder, mod.OnnxParser, mod.Runtime = Logger, Builder, OnnxParser, Runtime
    return mod


def _current_device(calls: list) -> int | None:
    """The device index the (recorded) device guards have made current, if any."""
    depth: list[int] = []
    for c in calls:
        if c[0] == "enter":
            depth.append(c[1])
        elif c[0] == "exit":
            depth.pop()
    return depth[-1] if depth else None


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def projector() -> ObjectProjector:
    torch.manual_seed(0)
    proj = ObjectProjector(D).eval()
    with torch.no_grad():
        for p in proj.parameters():
            p.normal_(0.0, 0.05)
    return proj


@pytest.fixture(scope="module")
def exports(projector: ObjectProjector, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    graphs = {p: export_projector(projector, GRID, out, model="t", precision=p).path
              for p in ("fp32", "fp16", "bf16")}
    graphs.update({f"iou-{p}": export_iou_head(projector, out, model="t", precision=p).path
                   for p in ("fp16", "bf16")})
    return graphs


def _typed(path: Path) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    types_ = {v.name: v.type.tensor_type.elem_type
              for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    types_.update({t.name: t.data_type for t in model.graph.initializer})
    return model, types_


def _float_inputs(node: onnx.NodeProto, types_: dict[str, int]) -> set[int]:
    return {types_[i] for i in node.input if i and types_.get(i) in (FLOAT, FLOAT16, BFLOAT16)}


def _box_sampling_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes on a path from the ``boxes`` input to an Einsum (the RoIAlign sampling)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    from_boxes: set[str] = {"boxes"}
    for node in model.graph.node:  # topological order
        if any(i in from_boxes for i in node.input):
            from_boxes.update(node.output)
    keep, stack = {}, [n for n in model.graph.node if n.op_type == "Einsum"]
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep[id(node)] = node
        stack += [producers[i] for i in node.input if i in producers and i in from_boxes]
    return [n for n in keep.values() if n.op_type != "Einsum"]


# ---------------------------------------------------------------------- typed export
@pytest.mark.parametrize("precision,low", [("fp16", FLOAT16), ("bf16", BFLOAT16)])
def test_typed_export_keeps_roialign_layernorm_softmax_in_float32(exports, precision: str,
                                                                  low: int) -> None:
    model, types_ = _typed(exports[precision])
    onnx.checker.check_model(model, full_check=True)
    ops = collections.defaultdict(set)
    for node in model.graph.node:
        ops[node.op_type] |= _float_inputs(node, types_)
    # the heavy layers run in the target precision
    assert ops["Gemm"] == {low} and ops["MatMul"] == {low}
    assert ops["ConvTranspose"] == ({low} if precision == "fp16" else {FLOAT})  # no bf16 schema
    # RoIAlign contractions, LayerNorm (and softmax, if any) in float32
    assert ops["Einsum"] == {FLOAT} and ops["LayerNormalization"] == {FLOAT}
    assert ops.get("Softmax", {FLOAT}) == {FLOAT}
    sampling = _box_sampling_nodes(model)
    assert len(sampling) > 20
    assert all(_float_inputs(n, types_) <= {FLOAT} for n in sampling), "sampling not float32"
    # float32 IO in every precision
    assert {types_[v.name] for v in (*model.graph.input, *model.graph.output)} == {FLOAT}


def test_fp32_export_has_no_low_precision(exports) -> None:
    model, types_ = _typed(exports["fp32"])
    assert {t for t in types_.values() if t in (FLOAT16, BFLOAT16)} == set()


@pytest.mark.parametrize("precision,low", [("fp16", FLOAT16), ("bf16", BFLOAT16)])
def test_typed_iou_head(exports, precision: str, low: int) -> None:
    model, types_ = _typed(exports[f"iou-{precision}"])
    assert {op for n in model.graph.node if n.op_type == "Gemm"
            for op in _float_inputs(n, types_)} == {low}


def test_fp16_graph_matches_float64_torch(projector: ObjectProjector, exports) -> None:
    """The typed fp16 graph (onnxruntime CPU) against the module in float64."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exports["fp16"]), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(GRID[0] * GRID[1], D, generator=g) for _ in range(3)]
    boxes = torch.tensor([[1.0, 2.0, 50.0, 60.0], [3.0, 4.0, 100.0, 90.0],
                          [0.0, 0.0, 160.0, 128.0], [80.0, 64.0, 80.5, 70.0]])
    got = sess.run(None, {"image_embeds": feats[0].numpy(),
                          "deepstack_second_last": feats[1].numpy(),
                          "deepstack_last": feats[2].numpy(), "boxes": boxes.numpy()})
    p64 = ObjectProjector(D).double()
    p64.load_state_dict(projector.state_dict())
    with torch.no_grad():
        ref = p64(*(f.double() for f in feats), boxes.double(), GRID)
    for out, want in zip(got, ref, strict=True):
        scale = float(want.abs().max())
        # fp16 has a 2^-11 relative step; ~10 roundings along the chain
        np.testing.assert_allclose(out, want.numpy(), atol=5e-3 * scale, rtol=0)


# ---------------------------------------------------------------------- keys and profiles
def test_box_profile_follows_max_boxes_and_is_in_the_key(exports, tmp_path: Path) -> None:
    assert trt.box_profile(2000) == (1, 100, 2000)
    assert trt.box_profile(40) == (1, 40, 40)
    with pytest.raises(ValueError):
        trt.box_profile(0)
    p300 = trt.Profile.for_graph("projector", D, 300)
    p2000 = trt.Profile.for_graph("projector", D, 2000)
    assert p2000.inputs == {"boxes": (4,)} and p2000.boxes == (1, 100, 2000)
    assert trt.Profile.for_graph("iou_head", D, 300).inputs == {"hidden": (D,)}
    args = ("projector", "t", exports["fp16"], "fp16", "GPU", "8.7", "10.3.0")
    k300, k2000 = trt.make_engine_key(*args, p300), trt.make_engine_key(*args, p2000)
    assert (k300.box_profile, k2000.box_profile) == ("1/100/300", "1/100/2000")
    assert k300.filename() != k2000.filename()
    # an engine built for 300 boxes is stale for max_boxes 2000
    path = lookup_engine(tmp_path, k300).path
    path.write_bytes(b"engine")
    from objembed_ros.accel.engine_cache import record_engine

    record_engine(path, k300)
    assert lookup_engine(tmp_path, k300).status == "ok"
    engine_2000 = lookup_engine(tmp_path, k2000)
    assert engine_2000.status == "missing"
    with pytest.raises(ValueError, match="precision"):
        trt.make_engine_key("projector", "t", exports["fp16"], "int8", "GPU", "8.7", "10.3.0",
                            p300)


def test_one_naming_rule_for_symlinked_checkpoints(tmp_path: Path, monkeypatch) -> None:
    real = tmp_path / "hub" / "snapshots" / "3f9c0a"
    real.mkdir(parents=True)
    link = tmp_path / "ObjEmbed-2B"
    link.symlink_to(real)
    assert model_name(link) == "objembed-2b"  # the name the user gave, not the target's
    assert model_name(str(link) + "/") == "objembed-2b"
    assert model_name(link / "sub" / "..") == "objembed-2b"  # lexical, as the user wrote it
    monkeypatch.chdir(real)
    assert model_name(".") == "3f9c0a"  # "." is the working directory (the OS resolves it)


def test_engines_built_by_the_recipe_are_found_by_the_node(tiny_objembed_dir: Path,
                                                           tmp_path: Path, monkeypatch) -> None:
    """model/build_engines.py on a symlinked checkpoint, then the encoder loaded through the
    same link: the runtime finds (and loads) exactly the engines the recipe built."""
    import importlib.util as iu

    from objembed_ros.accel import backends
    from objembed_ros.encoder.model import ObjEmbedEncoder

    calls: list = []
    fake = fake_tensorrt(11, calls)
    monkeypatch.setattr(trt, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt, "gpu_identity", lambda device: ("Fake GPU", "8.7"))
    monkeypatch.setattr(trt, "device_guard", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(backends, "backend_unavailable_reason", lambda name, device: None)
    link = tmp_path / "ObjEmbed-Tiny"
    link.symlink_to(tiny_objembed_dir)
    spec = iu.spec_from_file_location(
        "build_engines", Path(__file__).parents[1] / "model" / "build_engines.py")
    recipe = iu.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cache = tmp_path / "cache"
    assert recipe.main(["--checkpoint", str(link), "--grid", "4x5", "--max-boxes", "500",
                        "--cache-dir", str(cache)]) == 0
    built = sorted(p.name for p in (cache / "engines").glob("*.engine"))
    assert len(built) == 2 and all("-objembed-tiny-fp16-" in name for name in built)

    enc = ObjEmbedEncoder.from_pretrained(link, max_boxes=500)
    choice = install_projector_backend(enc, "tensorrt", cache_dir=cache, grids=[(4, 5)])
    assert choice.chosen == "tensorrt"
    assert sorted(p.name for p in (cache / "engines").glob("*.engine")) == built  # no rebuild
    loaded = [c for c in calls if c[0] == "deserialize"]
    assert len(loaded) == 2 and calls.count(("build",)) == 2
    # another max_boxes is another profile: the recipe's engines are not used for it
    enc.max_boxes = 2000
    with pytest.raises(trt.EngineError, match="engine missing.*--max-boxes 2000"):
        install_projector_backend(enc, "tensorrt", cache_dir=cache, grids=[(4, 5)])


# ---------------------------------------------------------------------- version dispatch
@pytest.mark.parametrize("major,flags", [(10, 1), (11, 0)])
def test_build_uses_strong_typing_and_no_removed_api(exports, tmp_path: Path, major: int,
                                                     flags: int) -> None:
    calls: list = []
    fake = fake_tensorrt(major, calls)
    profile = trt.Profile.for_graph("projector", D, 500)
    key = trt.make_engine_key("projector", "t", exports["fp16"], "fp16", "GPU", "8.7",
                              fake.__version__, profile)
    out = trt.build_engine(exports["fp16"], tmp_path / key.filename(), key, profile, trt=fake)
    assert ("create_network", flags) in calls
    assert ("profile", {"boxes": ((1, 4), (100, 4), (500, 4))}) in calls
    assert not [c for c in calls if c[0] in ("flag", "calib_profile")], "builder flags set"
    assert out.read_bytes() == b"serialized-engine"
    assert lookup_engine(tmp_path, key).status == "ok"


def test_fake_tensorrt_11_lacks_the_removed_api() -> None:
    """The fake must fail on what TensorRT 11 removed (else the dispatch test proves little)."""
    fake = fake_tensorrt(11, [])
    for flag in ("FP16", "INT8", "BF16", "PREFER_PRECISION_CONSTRAINTS"):
        with pytest.raises(KeyError):
            fake.BuilderFlag[flag]
    assert not hasattr(fake, "IInt8EntropyCalibrator2")
    config = fake.Builder(None).create_builder_config()
    assert not hasattr(config, "int8_calibrator")
    assert not hasattr(config, "set_calibration_profile")


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0", "x.y"])
def test_unsupported_tensorrt_versions_are_refused(version: str) -> None:
    fake = fake_tensorrt(10, [])
    fake.__version__ = version
    with pytest.raises(trt.EngineError, match="TensorRT|version"):
        trt.tensorrt_api(fake)


# ---------------------------------------------------------------------- device guard
class _CpuRunner(trt.TrtRunner):
    """Tensors on the host (this machine has no CUDA); everything else as on cuda:N."""

    def _place(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return tensor.to(dtype).contiguous()

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)


@pytest.mark.parametrize("major", [10, 11])
def test_runner_calls_tensorrt_with_its_device_current(tmp_path: Path, monkeypatch,
                                                       major: int) -> None:
    calls: list = []

    @contextlib.contextmanager
    def guard(device: torch.device):
        calls.append(("enter", device.index))
        try:
            yield
        finally:
            calls.append(("exit", device.index))

    monkeypatch.setattr(trt, "device_guard", guard)
    monkeypatch.setattr(trt, "stream_handle", lambda device: 1000 + device.index)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"blob")
    runner = _CpuRunner(engine, "cuda:1", trt=fake_tensorrt(major, calls))
    out = runner(hidden=torch.ones(3, D))
    assert out["iou_logits"].shape == (3,)
    assert ("deserialize", 1) in calls and ("context", 1) in calls
    assert ("execute", 1001, 1) in calls  # device 1's stream, with device 1 current

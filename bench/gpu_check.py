"""GPU proof of life: parity and latency on an NVIDIA GPU, one command, no network.

    bash scripts/gpu_check.sh                 # on a machine with a GPU and a CUDA torch
    bash scripts/gpu_check.sh --dry-run       # the same steps on the CPU, tiny shapes (CI)

Steps (each reports ok / failed / skipped with a reason; a failing step never stops the rest):

parity_fp32        tiny checkpoint, float32: device vs CPU, max |diff| <= 1e-4 (TF32 off)
parity_bf16        tiny checkpoint: device bf16 vs CPU float32, cosine >= 0.99 per embedding
                   and max |diff| <= 0.15 x max |ref| (bf16 keeps 8 mantissa bits; see BF16_*)
sdpa_vs_eager      tiny, float32 on the device: attn sdpa vs eager, max |diff| <= 1e-4
cuda_graph_text    tiny, float32: text pass replayed from CUDA graphs vs eager, <= 1e-4
projector_onnxruntime / projector_tensorrt
                   tiny: the projector on onnxruntime (CUDA EP on a GPU) / a TensorRT fp16
                   engine vs torch; <= 1e-4 (onnxruntime fp32), FP16_TOL x max |ref| (TRT)
latency_2b / latency_4b
                   random weights in the real Qwen3-VL-2B/4B sizes (a checkpoint written on
                   the fly, loaded with ObjEmbedEncoder.from_pretrained through Grounder.load),
                   bf16: frame latency per stage for 100 boxes at 640x480 and 1280x720, then
                   a new (uncached) query and a cached query.

Writes ``--out/gpu_check.json`` (every step with its status) and ``--out/gpu_check.md``.
Only the public API is used: Grounder / GrounderConfig (encode_frame, text_embeddings,
ground) and ObjEmbedEncoder.from_pretrained.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objembed_ros"))

from bench_encoder import SHAPES
from timing import cuda_sync, summarize

from objembed_ros.grounder import Grounder, GrounderConfig
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

FP32_TOL = 1e-4
BF16_MIN_COSINE = 0.99
BF16_REL_TOL = 0.15  # the dry run (CPU bf16) measures cosine 0.997, rel 0.06 on the tiny model
FP16_TOL = 5e-3  # x max |ref|: fp16 step 2^-11, ~10 roundings along the projector
RESOLUTIONS = ((640, 480), (1280, 720))
# seconds a step needs at least on a GPU machine (write + load + runs for the latency steps);
# a step is skipped with that reason when less of --budget-s is left
MIN_SECONDS = {"latency_2b": 60, "latency_4b": 100}
QUERIES = ("the red cup on the table", "a person on the left")


class Skip(Exception):
    """A step's requirement is missing; the message says which."""


def _cuda_free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _image(width: int, height: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((width, height)))


def _boxes(width: int, height: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.8, size=(n, 2)) * [width, height]
    wh = rng.uniform(0.05, 0.5, size=(n, 2)) * [width, height]
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1)


class Check:
    """Runs the steps; keeps their results in order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else args.device)
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.tiny = make_tiny_objembed_checkpoint(self.tmp / "tiny", dtype="float32")
        self.steps: dict[str, dict] = {}
        self.start = time.perf_counter()

    # ------------------------------------------------------------------ helpers
    def grounder(self, checkpoint: Path, device: torch.device, dtype: str, **kw) -> Grounder:
        cfg = GrounderConfig(checkpoint=str(checkpoint), proposer="external",
                             device=str(device), dtype=dtype, **kw)
        return Grounder.load(cfg)

    def outputs(self, g: Grounder) -> dict[str, np.ndarray]:
        """Object / IoU / global / text embeddings for a fixed image, boxes and queries."""
        rgb = _image(320, 240)
        frame = g.encode_frame(rgb, boxes=_boxes(320, 240, 7), cache=False)
        return {"object": frame.object_embeddings, "iou": frame.iou_logits,
                "global": frame.global_embeddings,
                "text": g.text_embeddings(list(QUERIES))}

    def need_cuda(self) -> None:
        if self.device.type != "cuda":
            raise Skip("needs a CUDA device" + (" (dry run on the CPU)" if self.dry else ""))
        if not torch.cuda.is_available():
            raise Skip("torch.cuda.is_available() is False")

    @staticmethod
    def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
        return {k: float(np.abs(a[k].astype(np.float64) - b[k]).max()) if a[k].size else 0.0
                for k in a}

    def compare(self, got: dict, ref: dict, tol: float) -> dict:
        diffs = self.max_diff(got, ref)
        worst = max(diffs.values())
        if not worst <= tol:
            raise AssertionError(f"max |diff| {worst:.3g} > {tol:g}: {diffs}")
        return {"max_abs_diff": diffs, "tolerance": tol}

    def reference(self) -> dict[str, np.ndarray]:
        if "_ref" not in self.__dict__:
            g = self.grounder(self.tiny, torch.device("cpu"), "float32", attn="sdpa")
            self._ref = self.outputs(g)
            del g
        return self._ref

    # ------------------------------------------------------------------ steps
    def env(self) -> dict:
        def version(name: str) -> str | None:
            if importlib.util.find_spec(name) is None:
                return None
            return str(getattr(importlib.import_module(name), "__version__", "?"))

        info = {"python": platform.python_version(), "host": platform.node(),
                "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                "device": str(self.device), "dry_run": self.dry,
                **{name: version(name) for name in
                   ("transformers", "onnx", "onnxruntime", "tensorrt", "flash_attn")}}
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            info["onnxruntime_providers"] = onnxruntime.get_available_providers()
        if self.device.type == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(self.device)
            info["compute_capability"] = ".".join(
                map(str, torch.cuda.get_device_capability(self.device)))
        return info

    def parity_fp32(self) -> dict:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        g = self.grounder(self.tiny, self.device, "float32", attn="sdpa")
        return self.compare(self.outputs(g), self.reference(), FP32_TOL)

    def parity_bf16(self) -> dict:
        g = self.grounder(self.tiny, self.device, "bfloat16", attn="sdpa")
        got, ref = self.outputs(g), self.reference()
        result = {"min_cosine": {}, "rel_max_abs_diff": {},
                  "tolerance": {"min_cosine": BF16_MIN_COSINE, "rel": BF16_REL_TOL}}
        for k in ("object", "global", "text"):
            a, b = got[k].astype(np.float64), ref[k].astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            result["min_cosine"][k] = float(cos.min())
            result["rel_max_abs_diff"][k] = float(np.abs(a - b).max() / np.abs(b).max())
        bad = {k: v for k, v in result["min_cosine"].items() if not v >= BF16_MIN_COSINE}
        bad.update({k: v for k, v in result["rel_max_abs_diff"].items()
                    if not v <= BF16_REL_TOL})
        if bad:
            raise AssertionError(f"bf16 outside tolerance: {bad}")
        return result

    def sdpa_vs_eager(self) -> dict:
        sdpa = self.outputs(self.grounder(self.tiny, self.device, "float32", attn="sdpa"))
        eager = self.outputs(self.grounder(self.tiny, self.device, "float32", attn="eager"))
        return self.compare(sdpa, eager, FP32_TOL)

    def cuda_graph_text(self) -> dict:
        self.need_cuda()
        eager = self.grounder(self.tiny, self.device, "float32", attn="sdpa")
        graphs = self.grounder(self.tiny, self.device, "float32", attn="sdpa",
                               text_cuda_graphs=True)
        texts = [*QUERIES, "a third, somewhat longer query about a blue mug near the sink"]
        ref = {"text": eager.text_embeddings(texts)}
        got = {"text": graphs.text_embeddings(texts)}
        runner = graphs.encoder.text_runner
        if runner is None or runner.disabled:
            raise AssertionError("CUDA graphs were not used (capture failed or disabled)")
        return self.compare(got, ref, FP32_TOL)

    def _projector(self, backend: str, rel_tol: float | None) -> dict:
        """The projector on ``backend`` vs torch (absolute FP32_TOL, or rel_tol x max |ref|)."""
        g = self.grounder(self.tiny, self.device, "float32", attn="sdpa",
                          projector_backend=backend,
                          engine_cache_dir=str(self.tmp / f"engines-{backend}"),
                          allow_engine_build=True, engine_resolutions=((320, 240),))
        if not g.backend.endswith(f": {backend}"):
            raise Skip(g.backend)
        keys = ("object", "iou")
        ref = self.outputs(self.grounder(self.tiny, self.device, "float32", attn="sdpa"))
        got = self.outputs(g)
        unprepared = g.encoder.projector_backend.unprepared_grids
        if unprepared:
            raise AssertionError(f"the {backend} runtime was not used for grid(s) {unprepared}")
        tol = FP32_TOL if rel_tol is None else rel_tol * float(np.abs(ref["object"]).max())
        return {"backend": g.backend,
                **self.compare({k: got[k] for k in keys}, {k: ref[k] for k in keys}, tol)}

    def projector_onnxruntime(self) -> dict:
        if importlib.util.find_spec("onnxruntime") is None:
            raise Skip("onnxruntime is not installed")
        return self._projector("onnxruntime", None)

    def projector_tensorrt(self) -> dict:
        self.need_cuda()
        if importlib.util.find_spec("tensorrt") is None:
            raise Skip("tensorrt is not installed")
        return self._projector("tensorrt", FP16_TOL)

    def latency(self, size: str) -> dict:
        """Random weights in the real sizes; per-stage frame latency and query latency."""
        write_s = 0.0
        if self.dry:
            ckpt, dtype = self.tiny, "float32"  # tiny shapes: the same code path, quickly
        else:
            self.need_cuda()
            t0 = time.perf_counter()
            ckpt, dtype = self.real_checkpoint(size), "bfloat16"
            write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = self.grounder(ckpt, self.device, dtype)
        load_s = time.perf_counter() - t0
        g.encoder.sync_timings = True
        runs, warmup = (1, 0) if self.dry else (self.args.runs, 2)
        result: dict = {"checkpoint": "tiny" if self.dry else f"random-{size}", "dtype": dtype,
                        "attn": g.encoder.ckpt.attn_implementation, "write_s": round(write_s, 2),
                        "load_s": round(load_s, 2),
                        "boxes": 100, "frames": {}}
        frame = None
        for width, height in RESOLUTIONS:
            rgb, boxes = _image(width, height), _boxes(width, height, 100)
            totals: list[float] = []
            stages: dict[str, list[float]] = {}
            for i in range(warmup + runs):
                cuda_sync(self.device)
                t = time.perf_counter()
                frame = g.encode_frame(rgb, boxes=boxes, cache=False)
                cuda_sync(self.device)
                if i >= warmup:
                    totals.append(time.perf_counter() - t)
                    for k, v in frame.timings.items():
                        stages.setdefault(k, []).append(v)
            result["frames"][f"{width}x{height}"] = {
                "frame": summarize(totals),
                "stages_median_ms": {k: round(1000 * statistics.median(v), 2)
                                     for k, v in stages.items()}}
        assert frame is not None
        new_t, cached_t = [], []
        for i in range(warmup + runs):
            text = f"the object number {i} on the left"
            cuda_sync(self.device)
            t = time.perf_counter()
            g.ground([text], frame, top_k=5)
            cuda_sync(self.device)
            t1 = time.perf_counter()
            g.ground([text], frame, top_k=5)
            cuda_sync(self.device)
            if i >= warmup:
                new_t.append(t1 - t)
                cached_t.append(time.perf_counter() - t1)
        result["new_query"], result["cached_query"] = summarize(new_t), summarize(cached_t)
        result.update(self._query_during_frames(g, frame, rgb, boxes, runs))
        if self.device.type == "cuda":
            result["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device)
                                              / 2**30, 2)
        del g, frame
        _cuda_free(self.device)
        if ckpt != self.tiny:
            shutil.rmtree(ckpt, ignore_errors=True)  # 4-9 GB each
        return result

    @staticmethod
    def _query_during_frames(g: Grounder, frame: Any, rgb: np.ndarray, boxes: np.ndarray,
                             runs: int) -> dict:
        """New-query latency while a worker encodes frames back to back (on CUDA the text
        pass runs on its own stream beside the frame pass; elsewhere it waits for at most
        the pass in progress)."""
        g.encoder.sync_timings = False  # a device-wide sync per stage is not the node's path
        stop = threading.Event()
        started = threading.Event()

        def frames() -> None:
            while not stop.is_set():
                started.set()
                g.encode_frame(rgb, boxes=boxes, cache=False)

        worker = threading.Thread(target=frames, daemon=True)
        worker.start()
        during: list[float] = []
        try:
            started.wait(60)
            for i in range(runs):
                t = time.perf_counter()
                g.ground([f"a new thing number {i} near the door"], frame, top_k=5)
                during.append(time.perf_counter() - t)
        finally:
            stop.set()
            worker.join(600)
        return {"new_query_during_frames": summarize(during),
                "text_beside_frames": bool(getattr(g.encoder, "text_beside_frames", False))}

    def real_checkpoint(self, size: str) -> Path:
        """A random-weight checkpoint with the real 2B/4B layer sizes (tiny tokenizer)."""
        spec = SHAPES[size]
        text = dict(spec["text"], head_dim=128, rope_scaling={
            "rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True})
        hidden = text.pop("hidden_size")
        vision = dict(spec["vision"], num_position_embeddings=2304)
        return make_tiny_objembed_checkpoint(self.tmp / f"random-{size}", hidden_size=hidden,
                                             text_config=text, vision_config=vision)

    # ------------------------------------------------------------------ driver
    def run(self, name: str, fn: Callable[[], dict]) -> None:
        t0 = time.perf_counter()
        try:
            entry = {"status": "ok", **fn()}
        except Skip as exc:
            entry = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # a failing step must not stop the others
            entry = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=6)}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        self.steps[name] = entry
        print(f"[gpu_check] {name:22s} {entry['status']:8s} {entry['seconds']:7.1f} s  "
              f"{entry.get('reason', '')[:150]}", flush=True)
        _cuda_free(self.device)

    def all(self) -> dict[str, dict]:
        steps: list[tuple[str, Callable[[], dict]]] = [
            ("env", self.env), ("parity_fp32", self.parity_fp32),
            ("parity_bf16", self.parity_bf16), ("sdpa_vs_eager", self.sdpa_vs_eager),
            ("cuda_graph_text", self.cuda_graph_text),
            ("projector_onnxruntime", self.projector_onnxruntime),
            ("projector_tensorrt", self.projector_tensorrt),
            ("latency_2b", lambda: self.latency("2b")),
            ("latency_4b", lambda: self.latency("4b"))]
        for name, fn in steps:
            left = self.args.budget_s - (time.perf_counter() - self.start)
            if self.args.only and name not in self.args.only and name != "env":
                self.steps[name] = {"status": "skipped", "reason": "not selected (--only)"}
            elif not self.dry and left < MIN_SECONDS.get(name, 10):
                self.steps[name] = {"status": "skipped", "reason": f"time budget: {left:.0f} s "
                                    f"of --budget-s {self.args.budget_s} left"}
            else:
                self.run(name, fn)
            self.write()  # after every step: a killed run still leaves its results
        return self.steps

    def write(self) -> None:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        command = "bash scripts/gpu_check.sh" + (" --dry-run" if self.dry else "")
        (out / "gpu_check.json").write_text(json.dumps(
            {"command": command, "steps": self.steps}, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(self.steps, command))


STEP_NAMES = ("env", "parity_fp32", "parity_bf16", "sdpa_vs_eager", "cuda_graph_text",
              "projector_onnxruntime", "projector_tensorrt", "latency_2b", "latency_4b")


def markdown(steps: dict[str, dict], command: str) -> str:
    lines = [f"GPU check: `{command}`", "", "| step | status | detail |", "| --- | --- | --- |"]
    for name in STEP_NAMES:
        s = steps.get(name, {"status": "missing"})
        detail = s.get("reason", "")
        if s["status"] == "ok" and "max_abs_diff" in s:
            detail = f"max abs diff {max(s['max_abs_diff'].values()):.2e} (tol {s['tolerance']})"
        elif s["status"] == "ok" and "min_cosine" in s:
            detail = (f"min cosine {min(s['min_cosine'].values()):.4f}, rel max diff "
                      f"{max(s['rel_max_abs_diff'].values()):.3f}")
        elif name == "env":
            detail = (f"torch {s.get('torch')}, transformers {s.get('transformers')}, "
                      f"gpu {s.get('gpu', '-')}, tensorrt {s.get('tensorrt')}")
        lines.append(f"| {name} | {s['status']} | {detail.replace('|', '/')[:200]} |")
    lat = [(n, steps[n]) for n in ("latency_2b", "latency_4b")
           if steps.get(n, {}).get("status") == "ok"]
    if lat:
        lines += ["", "| model | resolution | frame median ms | p90 ms | stages (median ms) |",
                  "| --- | --- | --- | --- | --- |"]
        for _, s in lat:
            for res, f in s["frames"].items():
                stages = ", ".join(f"{k} {v}" for k, v in f["stages_median_ms"].items())
                lines.append(f"| {s['checkpoint']} {s['dtype']} | {res} | "
                             f"{f['frame']['median_ms']:.1f} | {f['frame']['p90_ms']:.1f} | "
                             f"{stages} |")
        lines += ["", "| model | new query median ms | cached query median ms | new query "
                  "during frames median ms (text beside frames) | peak GPU GB |",
                  "| --- | --- | --- | --- | --- |"]
        for _, s in lat:
            during = s["new_query_during_frames"]["median_ms"]
            lines.append(f"| {s['checkpoint']} | {s['new_query']['median_ms']:.1f} | "
                         f"{s['cached_query']['median_ms']:.1f} | {during:.1f} "
                         f"({'yes' if s['text_beside_frames'] else 'no'}) | "
                         f"{s.get('peak_gpu_mem_gb', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="the same steps on the CPU with tiny shapes (no GPU needed)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--runs", type=int, default=10, help="timed runs per latency figure")
    p.add_argument("--only", nargs="*", choices=STEP_NAMES, help="run only these steps")
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="skip steps that no longer fit (the shell script kills at 480 s)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    check = Check(args)
    try:
        with torch.inference_mode():
            steps = check.all()
    finally:
        shutil.rmtree(check.tmp, ignore_errors=True)
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    failed = [n for n, s in steps.items() if s.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

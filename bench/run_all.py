"""One command, every stage: per-stage median/p90 latency tables (+ JSON) for our pipeline
with each projector backend and for the official-style control flow.

    python bench/run_all.py                       # CPU, tiny checkpoint (< 3 min on 2 cores)
    python bench/run_all.py --gpu --json gpu.json # CUDA bf16, random weights, real 2B + 4B shapes

Stages: preprocess, proposals (WeDetect-Uni, random weights; base widths, reduced depth on
CPU, released depth on GPU), vision tower, LLM prefill, projector, readout, text pass (one
new query, uncached), scoring (1 query x N boxes), frame (encode_image end to end) and
node overhead (bench/bench_node.py --json when present). Each stage is timed with device
syncs (encoder ``sync_timings``), warm runs only. "official" = bench/official_style.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "objembed_ros"))
sys.path.insert(0, str(BENCH))

from bench_encoder import build_real_shapes  # noqa: E402  (reuse the 2B/4B shapes)
from official_style import OfficialStylePath  # noqa: E402
from timing import cuda_sync, summarize  # noqa: E402

from objembed_ros.accel.cuda_graphs import install_text_graphs  # noqa: E402
from objembed_ros.accel.projector_runtime import install_projector_backend  # noqa: E402
from objembed_ros.encoder.model import ObjEmbedEncoder  # noqa: E402
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint  # noqa: E402

STAGES = ("preprocess", "proposals", "vision", "llm", "projector", "readout", "text",
          "scoring", "frame", "node")
LABELS = {"vision": "vision tower", "llm": "LLM prefill", "text": "text pass (1 new query)",
          "frame": "frame total (encode_image)", "node": "node overhead"}




def make_proposer(device: torch.device, tmp: Path, full_depth: bool) -> Any:
    try:
        from objembed_ros.proposals.wedetect import WeDetectProposer
        from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint
    except ImportError:
        return None
    path = make_wedetect_checkpoint(tmp / "wedetect.pth",
                                    stage_depths=None if full_depth else (1, 1, 1, 1))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return WeDetectProposer.from_checkpoint(path, device=device, dtype=dtype, num_proposals=100)


def _time_proposals(proposer: Any, rgb: np.ndarray, dev: torch.device,
                    record: list[float] | None) -> None:
    """One proposer run, timed into `record` (None: a warm-up run)."""
    if proposer is None:
        return
    cuda_sync(dev)
    t = time.perf_counter()
    proposer.propose(rgb)
    cuda_sync(dev)
    if record is not None:
        record.append(time.perf_counter() - t)


def time_ours(enc: ObjEmbedEncoder, rgb: np.ndarray, boxes: np.ndarray, proposer: Any,
              warmup: int, runs: int) -> dict[str, list[float]]:
    dev = enc.device
    enc.sync_timings = True
    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for i in range(warmup + runs):
        rec = i >= warmup
        _time_proposals(proposer, rgb, dev, out["proposals"] if rec else None)
        cuda_sync(dev)
        t = time.perf_counter()
        frame = enc.encode_image(rgb, boxes)
        cuda_sync(dev)
        if rec:
            out["frame"].append(time.perf_counter() - t)
            for k in ("preprocess", "vision", "projector", "llm", "readout"):
                out[k].append(frame.timings[k])
        enc.text_cache.clear()
        cuda_sync(dev)
        t = time.perf_counter()
        q = enc.encode_text(f"the red cup number {i}")
        cuda_sync(dev)
        t1 = time.perf_counter()
        enc.score_objects(q, frame)
        cuda_sync(dev)
        if rec:
            out["text"].append(t1 - t)
            out["scoring"].append(time.perf_counter() - t1)
    return out


def time_official(path: OfficialStylePath, rgb: np.ndarray, boxes: np.ndarray, proposer: Any,
                  warmup: int, runs: int) -> dict[str, list[float]]:
    dev = path.enc.device
    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for i in range(warmup + runs):
        rec = i >= warmup
        _time_proposals(proposer, rgb, dev, out["proposals"] if rec else None)
        t = time.perf_counter()
        res, stages = path.encode_image(rgb, boxes)
        cuda_sync(dev)
        if rec:
            out["frame"].append(time.perf_counter() - t)
            for k, v in stages.items():
                out[k].append(v)
        t = time.perf_counter()
        q = path.encode_text(f"the red cup number {i}")
        cuda_sync(dev)
        t1 = time.perf_counter()
        path.score(q, res)
        if rec:
            out["text"].append(t1 - t)
            out["scoring"].append(time.perf_counter() - t1)
    return out


def node_overhead(timeout: float) -> dict[str, Any] | str:
    script = BENCH / "bench_node.py"
    if not script.exists():
        return "n/a (bench/bench_node.py not present)"
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        try:
            subprocess.run([sys.executable, str(script), "--frames", "10", "--json", f.name],
                           check=True,
                           timeout=timeout, capture_output=True)
            return json.loads(Path(f.name).read_text())
        except (subprocess.SubprocessError, json.JSONDecodeError, OSError) as exc:
            return f"n/a ({type(exc).__name__}: {str(exc)[:120]})"


def _node_ms(node: Any, size: str = "640x480") -> dict[str, float] | None:
    """bench_node's end-to-end overhead (image published -> groundings received, minus the
    model time the node reports) at one image size, as this table's median/p90 cells."""
    if not isinstance(node, dict):
        return None
    stats = node.get("sizes", {}).get(size, {}).get("overhead_ms")
    if not isinstance(stats, dict):
        return None
    return {"median_ms": stats["median"], "p90_ms": stats["p90"]}


def print_table(title: str, columns: dict[str, dict[str, Any]]) -> None:
    names = list(columns)
    print(f"\n{title}")
    head = f"{'stage':30s}" + "".join(f"{n:>26s}" for n in names)
    print(head)
    print(" " * 30 + "".join(f"{'median / p90 ms':>26s}" for _ in names))
    for stage in STAGES:
        cells = []
        for n in names:
            s = columns[n].get(stage)
            cells.append(f"{s['median_ms']:11.2f} / {s['p90_ms']:9.2f}" if s else "n/a")
        print(f"{LABELS.get(stage, stage):30s}" + "".join(f"{c:>26s}" for c in cells))


def run_config(label: str, enc: ObjEmbedEncoder, rgb: np.ndarray, boxes: np.ndarray,
               proposer: Any, backends: list[str], cache: Path, args: argparse.Namespace,
               node: Any) -> dict[str, Any]:
    columns: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for name in backends:
        try:
            choice = install_projector_backend(enc, name, cache_dir=cache, allow_build=True,
                                               model=label, grids=[enc.preprocess(rgb).merged_hw])
        except Exception as exc:  # an unavailable engine is reported, not fatal
            notes[name] = f"unavailable: {exc}"
            continue
        if choice.fell_back:
            notes[name] = choice.describe()
            continue
        if args.cuda_graphs and enc.device.type == "cuda":
            install_text_graphs(enc, True)
        raw = time_ours(enc, rgb, boxes, proposer, args.warmup, args.runs)
        install_text_graphs(enc, False)
        columns[f"ours/{name}"] = {k: summarize(v) for k, v in raw.items()}
    install_projector_backend(enc, "torch")
    if not args.skip_official:
        raw = time_official(OfficialStylePath(enc), rgb, boxes, proposer, args.warmup, args.runs)
        columns["official-style"] = {k: summarize(v) for k, v in raw.items()}
    for col in columns.values():
        col["node"] = _node_ms(node)
    mh, mw = (enc.preprocess(rgb).merged_hw)
    title = (f"{label}: {enc.device} {str(enc.dtype).replace('torch.', '')} "
             f"attn={enc.ckpt.attn_implementation}, image {rgb.shape[1]}x{rgb.shape[0]} -> "
             f"{mh}x{mw}={mh * mw} visual tokens, {len(boxes)} boxes, "
             f"{args.runs} warm runs")
    print_table(title, columns)
    for k, v in notes.items():
        print(f"  {k}: {v}")
    if "official-style" in columns and columns["official-style"]["frame"]:
        for name, col in columns.items():
            if name != "official-style" and col["frame"]:
                ratio = columns["official-style"]["frame"]["median_ms"] / col["frame"]["median_ms"]
                print(f"  speed-up {name} vs official-style (frame median): {ratio:.2f}x")
    return {"label": label, "device": str(enc.device), "dtype": str(enc.dtype),
            "attn": enc.ckpt.attn_implementation, "visual_tokens": mh * mw,
            "boxes": len(boxes), "columns": columns, "notes": notes}


def test_inputs(side_w: int, side_h: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from skimage import data

    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((side_w, side_h)))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 0.8, size=(n, 2)) * [side_w, side_h]
    wh = rng.uniform(0.03, 0.5, size=(n, 2)) * [side_w, side_h]
    return rgb, np.concatenate([xy, np.minimum(xy + wh, [side_w, side_h])], axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="CUDA, random weights, 2B and 4B shapes")
    p.add_argument("--shapes", nargs="+", default=None, help="with --gpu: 2b 4b (default both)")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "tensorrt"])
    p.add_argument("--boxes", type=int, default=100)
    p.add_argument("--image", default=None, help="WxH of the test image (default 1056x1056 "
                   "GPU = 1089 tokens; 640x480 CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--no-proposals", action="store_true")
    p.add_argument("--node-timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        p.error("--gpu needs CUDA")
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 2)
    args.runs = args.runs if args.runs is not None else (20 if gpu else 6)
    w, h = (int(v) for v in (args.image or ("1056x1056" if gpu else "640x480")).split("x"))
    rgb, boxes = test_inputs(w, h, args.boxes)
    device = torch.device("cuda" if gpu else "cpu")
    backends = [b for b in args.backends if gpu or b != "tensorrt"]
    t_start = time.perf_counter()
    results: dict[str, Any] = {"host": platform.node(), "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name(0) if gpu else None,
                               "tensorrt": importlib.util.find_spec("tensorrt") is not None,
                               "configs": []}
    node = node_overhead(args.node_timeout)
    if isinstance(node, str):
        print(f"node overhead: {node}")
    results["node"] = node
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp_name:
        tmp = Path(tmp_name)
        tiny = make_tiny_objembed_checkpoint(tmp / "tiny")
        proposer = None if args.no_proposals else make_proposer(device, tmp, full_depth=gpu)
        if proposer is None and not args.no_proposals:
            print("proposals: n/a (objembed_ros.proposals.wedetect not importable)")
        if not gpu:
            torch.set_num_threads(max(1, torch.get_num_threads()))
            enc = ObjEmbedEncoder.from_pretrained(tiny, device="cpu", dtype=torch.float32,
                                                  text_cache_size=0)
            results["configs"].append(run_config("tiny", enc, rgb, boxes, proposer, backends,
                                                 tmp / "cache", args, node))
        else:
            for shapes in args.shapes or ["2b", "4b"]:
                enc = build_real_shapes(tiny, shapes, device, torch.bfloat16, "auto")
                results["configs"].append(run_config(f"random-{shapes}", enc, rgb, boxes,
                                                     proposer, backends, tmp / "cache", args,
                                                     node))
                del enc
                torch.cuda.empty_cache()
    results["wall_s"] = time.perf_counter() - t_start
    print(f"\ntotal wall time {results['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

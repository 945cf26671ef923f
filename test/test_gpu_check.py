"""scripts/gpu_check.sh --dry-run: every step runs (or says why not) and lands in the JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "parity_fp32", "parity_bf16", "sdpa_vs_eager", "cuda_graph_text",
         "projector_onnxruntime", "projector_tensorrt", "latency_2b", "latency_4b")


def test_gpu_check_dry_run_reports_every_step(tmp_path: Path) -> None:
    env = dict(os.environ, OBJEMBED_WHEELS=str(tmp_path / "no-wheels"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == set(STEPS)
    for name, step in steps.items():
        assert step["status"] in ("ok", "skipped"), (name, step)
        if step["status"] == "skipped":
            assert step["reason"], name
    # on the CPU the CUDA-only steps are skipped, with the reason; the rest ran
    assert steps["cuda_graph_text"]["status"] == "skipped"
    assert "CUDA" in steps["projector_tensorrt"]["reason"]
    for name in ("parity_fp32", "parity_bf16", "sdpa_vs_eager", "latency_2b", "latency_4b"):
        assert steps[name]["status"] == "ok", name
    assert steps["parity_fp32"]["max_abs_diff"]["object"] <= 1e-4
    lat = steps["latency_2b"]
    assert set(lat["frames"]) == {"640x480", "1280x720"} and lat["boxes"] == 100
    assert lat["frames"]["640x480"]["stages_median_ms"]["encoder.projector"] > 0
    assert lat["new_query"]["median_ms"] > 0 and lat["cached_query"]["median_ms"] > 0
    assert lat["new_query_during_frames"]["median_ms"] > 0
    assert lat["text_beside_frames"] is False  # CPU: text passes share the model lock
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in STEPS)


def test_a_failing_step_is_recorded_and_the_next_still_runs() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    check = object.__new__(gpu_check.Check)  # no tiny checkpoint needed for the driver
    check.steps, check.device = {}, __import__("torch").device("cpu")

    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def missing() -> dict:
        raise gpu_check.Skip("tensorrt is not installed")

    check.run("first", broken)
    check.run("second", missing)
    check.run("third", lambda: {"value": 1})
    assert check.steps["first"]["status"] == "failed"
    assert "illegal memory access" in check.steps["first"]["reason"]
    assert check.steps["second"] == {"status": "skipped", "reason": "tensorrt is not installed",
                                     "seconds": check.steps["second"]["seconds"]}
    assert check.steps["third"]["status"] == "ok" and check.steps["third"]["value"] == 1

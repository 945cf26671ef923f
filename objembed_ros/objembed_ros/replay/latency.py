"""Per-stage latency over a replay, and the machine it ran on (no ROS).

Stages (seconds per frame, reported in ms):
  decode      CDR deserialisation + pixel conversion (replay)
  proposals   the proposer (Grounder.encode_frame: WeDetect, grid or whole image)
  encode      the ObjEmbed image pass (Grounder.encode_frame), made of the encoder's own
              stages encoder.preprocess / vision / projector / llm / readout (ObjEmbedEncoder
              timings; whatever keys it reports are kept)
  scoring     Grounder.ground for the standing queries (cached text + scoring)
  positions   depth -> 3D for the results
  frame       decode + proposals + encode + scoring + positions
  output      building and writing the output messages and overlay (replay only)
"""
from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from typing import Any

from objembed_ros.core.stats import LatencyWindow

ORDER = ("decode", "proposals", "encoder.preprocess", "encoder.vision", "encoder.projector",
         "encoder.llm", "encoder.readout", "encoder.total", "encode", "scoring", "positions",
         "frame", "output")
PERCENTILES = (50.0, 90.0, 99.0)


class StageTimes:
    """Durations per stage over all processed frames."""

    def __init__(self) -> None:
        self._stages: dict[str, LatencyWindow] = {}

    def add(self, timings: dict[str, float]) -> None:
        for key, seconds in timings.items():
            self._stages.setdefault(key, LatencyWindow(size=10**7)).add(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {count, p50_ms, p90_ms, p99_ms}} in pipeline order."""
        keys = [k for k in ORDER if k in self._stages]
        keys += sorted(k for k in self._stages if k not in ORDER)
        out = {}
        for key in keys:
            window = self._stages[key]
            pct = window.percentiles_ms(PERCENTILES)
            out[key] = {"count": len(window), **{f"{k}_ms": round(v, 3) for k, v in pct.items()}}
        return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """CPU model, cores, Python/torch versions, torch threads and the device used."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def format_table(stages: dict[str, dict[str, float]], rows: Iterable[tuple[str, str]] = ()) -> str:
    """A plain-text table: stage, frames, median, p90, p99 (ms)."""
    lines = [f"{'stage':20s} {'frames':>6s} {'median':>10s} {'p90':>10s} {'p99':>10s}  (ms)"]
    for key, s in stages.items():
        lines.append(f"{key:20s} {s['count']:6d} {s.get('p50_ms', 0):10.2f} "
                     f"{s.get('p90_ms', 0):10.2f} {s.get('p99_ms', 0):10.2f}")
    lines += [f"{k}: {v}" for k, v in rows]
    return "\n".join(lines)

"""What every bench times with: a device barrier and one median/p90 summary, so all tables
and JSON files mean the same thing by "p90"."""
from __future__ import annotations

import statistics

import torch


def cuda_sync(device: torch.device | str) -> None:
    """Wait for queued GPU work so a wall-clock stop covers it (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(seconds: list[float]) -> dict[str, float] | None:
    """Median and p90 (nearest rank) in milliseconds over warm runs; None when empty."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": 1000 * statistics.median(ordered), "p90_ms": 1000 * p90,
            "runs": len(ordered)}

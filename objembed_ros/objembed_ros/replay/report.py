"""What a replay leaves behind besides the recording: CSV rows streamed frame by frame, the
printed summary (latency table, accuracy), and the progress bar."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from objembed_ros.replay.latency import format_table


def progress_bar(total: int | None, enabled: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="replay", disable=None if enabled is None
                else not enabled, dynamic_ncols=True)


class CsvStream:
    """Rows written as they come (a long recording must not pile them up in memory); the
    columns are the first row's keys. No path: nothing is written."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: Any = None
        self._writer: csv.DictWriter | None = None
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), restval="",
                                          extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(row)
        self.rows += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def summary_text(report: dict[str, Any]) -> str:
    """What the CLI prints: frames, the latency table, accuracy, and any error."""
    lat = report["latency"]
    fr = report["frames"]
    mach = report["machine"]
    lines = [f"frames: {fr['processed']} processed of {fr['seen']} seen, {fr['dropped']} "
             f"dropped, rejected {fr['rejected'] or 'none'}",
             f"machine: {mach['cpu']}, {mach['cores_available']} cores, torch {mach['torch']} "
             f"({mach['torch_threads']} threads), device {mach['device']}",
             format_table(lat["stages"], [("throughput_fps", str(lat["throughput_fps"])),
                                          ("model_fps", str(lat["model_fps"]))])]
    acc = report.get("accuracy")
    if acc:
        if "referring" in acc:
            r = acc["referring"]
            lines.append(f"referring Acc@0.5: {r['acc@0.5']:.4f} ({r['hits']}/"
                         f"{r['expressions']} expressions)")
        if "detection" in acc:
            lines += acc["detection"].get("summary", [])
    if report["error"]:
        lines.append(f"STOPPED EARLY: {report['error']} (report covers the frames processed)")
    return "\n".join(lines)

"""The README's main job (`make demo`) works end to end: offline CLI, then the real node."""
from __future__ import annotations

import json
from pathlib import Path

from objembed_ros.cli import UNTRAINED_BANNER
from objembed_ros.demo import QUERIES, main


def test_demo_runs_offline_and_through_the_node(tmp_path: Path, capsys) -> None:
    assert main(["--out-dir", str(tmp_path), "--timeout", "180"]) == 0
    out = capsys.readouterr().out
    assert f"!! {UNTRAINED_BANNER}" in out.splitlines()
    assert "~/ground answered" in out and "demo_camera_optical_frame" in out
    result = json.loads((tmp_path / "demo_results.json").read_text())
    assert result["proposals"] == "wedetect" and result["images"][0]["num_boxes"] > 0
    assert result["untrained"] is True and result["warning"] == UNTRAINED_BANNER
    assert [r["query"] for r in result["images"][0]["results"]] == list(QUERIES)
    assert (tmp_path / "demo_overlay.png").stat().st_size > 0
    # the node's best box for the first query is the offline CLI's best box: one core
    best = result["images"][0]["results"][0]["top"][0]
    assert f"score {best['score']:.4f}" in out.split("~/ground answered")[1]

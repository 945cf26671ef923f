"""The README's "Replay a recording" commands, run as written (console scripts of this .venv,
in a scratch folder). The own-recording command runs with the generated recording and the tiny
checkpoints in place of `robot_run` and the model files; `ros2 bag play` is replaced by
reading the output back with rosbags."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from rosbags.rosbag2 import Reader

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUBSTITUTE = {"model/ObjEmbed-2B": "tiny/objembed",
              "model/wedetect_base_uni.pth": "tiny/wedetect.pth", "robot_run": "demo_run"}


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Replay a recording")
    end = text.index("\n#", start + 10)
    return text[start:end]


def _commands(block: str) -> list[list[str]]:
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(".venv/bin/"):
            argv = [SUBSTITUTE.get(tok, tok) for tok in shlex.split(line)]
            argv[0] = str(BIN / argv[0].removeprefix(".venv/bin/"))
            out.append(argv)
    return out


def _counts(bag: Path) -> dict[str, int]:
    with Reader(bag) as reader:
        return {c.topic: c.msgcount for c in reader.connections}


def test_readme_replay_commands(tmp_path: Path) -> None:
    section = _section()
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    queries = re.search(r"`queries.yaml` holding `([^`]+)`", section).group(1)
    (tmp_path / "queries.yaml").write_text(queries + "\n")
    demo, own = (_commands(b) for b in blocks)
    assert [c[0].rsplit("/", 1)[1] for c in demo] == ["python", "objembed-replay"]
    assert [c[0].rsplit("/", 1)[1] for c in own] == ["objembed-replay"]
    for argv in demo + own:
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"

    report = json.loads((tmp_path / "demo_out_report.json").read_text())
    assert report["complete"] and report["frames"]["processed"] == 2
    assert report["config"]["proposer"].startswith("grid")
    acc = report["accuracy"]
    assert acc["gt_images_evaluated"] == 2 and acc["referring"]["expressions"] == 7
    assert set(acc["detection"]["stats"]) >= {"AP", "AP50", "AR100"}
    counts = _counts(tmp_path / "demo_out")
    assert counts["/objembed/groundings"] == 2 * 2 and counts["/objembed/debug_image"] == 2

    own_report = json.loads((tmp_path / "robot_run_grounded_report.json").read_text())
    assert own_report["config"]["queries"] == ["the red handle", "a mug"]
    assert own_report["config"]["rate"] == 1.0
    assert own_report["config"]["proposer"] == "wedetect"
    processed = own_report["frames"]["processed"]
    assert processed + own_report["frames"]["dropped"] == 2
    assert _counts(tmp_path / "robot_run_grounded")["/objembed/groundings"] == 2 * processed

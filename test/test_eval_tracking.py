"""bench/eval_tracking.py, small: lock-on keeps the target where per-frame ranking jumps."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from objembed_ros.grounder import Grounder, GrounderConfig

BENCH = Path(__file__).resolve().parents[1] / "bench" / "eval_tracking.py"


@pytest.fixture(scope="module")
def eval_tracking():
    spec = importlib.util.spec_from_file_location("eval_tracking", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_lock_on_switches_less_than_top1(eval_tracking, tiny_objembed_dir: Path) -> None:
    ev = eval_tracking
    grounder = Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir),
                                            proposer="external"))
    cfg = ev.SequenceConfig(frames=16, window=(160, 160), start=(170, 40), pan=(0.8, 0.3),
                            distractor_at=(265, 65), occluded=(7, 10), clutter_boxes=8)
    frames = ev.make_sequence(cfg)
    assert [f.target_visible for f in frames].count(False) == 3
    report = ev.evaluate(grounder, cfg)
    lock, top1 = report["lock"], report["top1"]
    first = lock["first_frame"]
    assert first == 2  # confirm_hits 3: the target's track is confirmed in frame 2
    assert lock["id_switches"] < top1["id_switches"]
    assert lock["id_switches"] < report["top1_cosine"]["id_switches"]
    assert ev.DISTRACTOR not in lock["claims"]  # the twin is never taken for the target
    assert lock["recovery_frames"] == 0  # back on the target as soon as it is visible
    visible = sum(f.target_visible for f in frames[first:])
    assert lock["frames_on_target"] == visible
    assert lock["frames_on_target"] > top1["frames_on_target"]

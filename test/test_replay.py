"""objembed-replay end to end: real rosbag2 recordings (sqlite3 and MCAP, written with rosbags)
of scikit-image photos with depth and camera_info, replayed with the tiny checkpoints; the
output recording is read back (rosbags, and rclpy for the message contents) and compared
with the node's own path for the same frames."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from objembed_ros.replay.cli import main
from objembed_ros.testing import recording as rec

COLOUR, DEPTH, INFO = rec.IMAGE_TOPIC, rec.DEPTH_TOPIC, rec.INFO_TOPIC
QUERIES = ["a person", "a cup of coffee"]


def _read(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time, raw)] of a recording, read independently of the replay."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        for conn in reader.connections:
            out.setdefault(conn.topic, [])
        for conn, t, raw in reader.messages():
            out[conn.topic].append((t, bytes(raw)))
    return out


def _report(out: Path) -> dict:
    return json.loads(out.with_name(f"{out.name}_report.json").read_text())


@pytest.fixture(scope="module")
def frames() -> list[rec.Frame]:
    return rec.skimage_frames(3)


@pytest.fixture(scope="module")
def mcap_bag(tmp_path_factory: pytest.TempPathFactory, frames: list[rec.Frame]) -> Path:
    return rec.write_recording(tmp_path_factory.mktemp("rec") / "run_mcap", frames, "mcap")


def _args(bag: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [str(bag), "--checkpoint", str(ckpt), "-o", str(out), "--no-progress", *extra]


def _check_mcap_for_foxglove(path: Path, counts: dict[str, int]) -> None:
    """Read the file with Foxglove's own mcap library: ros2msg schemas (what Foxglove decodes
    with) and cdr channels, a summary whose statistics match what rosbags reads."""
    from mcap.reader import make_reader

    with path.open("rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None
    assert {s.encoding for s in summary.schemas.values()} == {"ros2msg"}
    assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    by_channel = summary.statistics.channel_message_counts
    assert {c.topic: by_channel.get(i, 0) for i, c in summary.channels.items()} == counts
    names = {s.name for s in summary.schemas.values()}
    assert "objembed_msgs/msg/GroundedObjectArray" in names


def test_mcap_with_depth_matches_the_node_path(tmp_path: Path, mcap_bag: Path,
                                               tiny_objembed_dir: Path,
                                               frames: list[rec.Frame]) -> None:
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from test_replay_messages import assert_same_msg, ros_round_trip

    from objembed_msgs.msg import GroundedObjectArray
    from objembed_ros.core.boxes import grid_boxes
    from objembed_ros.core.depth import Intrinsics, depth_to_metres
    from objembed_ros.grounder import Grounder, GrounderConfig, add_positions
    from objembed_ros.ros import convert, viz

    out = tmp_path / "out"
    rc = main(_args(mcap_bag, tiny_objembed_dir, out, "--proposer", "grid", "--image-topic",
                    COLOUR, "--depth-topic", DEPTH, "--camera-info-topic", INFO,
                    "--query", QUERIES[0], "--query", QUERIES[1], "--top-k", "4"))
    assert rc == 0
    src, got = _read(mcap_bag), _read(out)
    # every recorded topic carried over byte for byte, plus the three outputs
    for topic, msgs in src.items():
        assert got[topic] == msgs, topic
    assert {t: len(v) for t, v in got.items() if t.startswith("/objembed")} == {
        "/objembed/groundings": 3 * len(QUERIES), "/objembed/markers": 3,
        "/objembed/debug_image": 3}
    with Reader(out) as reader:
        assert reader.storage.storages[0].__class__.__name__ == "McapReader"
        types = {c.topic: c.msgtype for c in reader.connections}
    assert types["/objembed/groundings"] == "objembed_msgs/msg/GroundedObjectArray"
    assert types["/objembed/markers"] == "visualization_msgs/msg/MarkerArray"
    _check_mcap_for_foxglove(out / "out.mcap", {t: len(v) for t, v in got.items()})

    # the reference: the node's conversions on a Grounder fed the same pixels and depth
    grounder = Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir),
                                            proposer="external"))
    groundings = [deserialize_message(raw, GroundedObjectArray)
                  for _, raw in got["/objembed/groundings"]]
    overlays = [deserialize_message(raw, Image) for _, raw in got["/objembed/debug_image"]]
    for i, ((t_img, raw_img), frame) in enumerate(zip(src[COLOUR], frames, strict=True)):
        source = deserialize_message(raw_img, Image)
        h, w = frame.rgb.shape[:2]
        cached = grounder.encode_frame(frame.rgb, convert.header_stamp_ns(source.header),
                                       COLOUR, boxes=grid_boxes(w, h), cache=False)
        k = Intrinsics.from_k(rec.camera_k(w, h), w, h)
        want = [ros_round_trip(convert.result_to_msg(
            add_positions(r, depth_to_metres(frame.depth_mm), k), source.header))
            for r in grounder.ground(QUERIES, cached, top_k=4)]
        mine = groundings[i * 2:(i + 1) * 2]
        assert [g.header for g in mine] == [source.header] * 2  # the source header, unchanged
        assert [t for t, _ in got["/objembed/groundings"][i * 2:(i + 1) * 2]] == [t_img] * 2
        for ours, theirs in zip(mine, want, strict=True):
            assert len(ours.objects) == 4
            assert all(o.position_valid and o.position_status == "ok" for o in ours.objects)
            assert_same_msg(ours, theirs)
        np.testing.assert_array_equal(
            np.frombuffer(bytes(overlays[i].data), np.uint8).reshape(h, w, 3),
            viz.draw_overlay(frame.rgb, want, 5))
        assert overlays[i].header == source.header

    report = _report(out)
    assert report["complete"] and report["frames"] == {"seen": 3, "processed": 3,
                                                       "dropped": 0, "rejected": {}}
    stages = report["latency"]["stages"]
    for stage in ("decode", "proposals", "encode", "encoder.vision", "encoder.llm",
                  "encoder.projector", "scoring", "positions", "frame"):
        assert stages[stage]["count"] == 3
        assert stages[stage]["p50_ms"] <= stages[stage]["p90_ms"] <= stages[stage]["p99_ms"]
    assert report["machine"]["torch"] and report["machine"]["logical_cores"] >= 1
    with out.with_name("out_report_frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    assert {r["depth_status"] for r in rows} == {"ok"}
    with out.with_name("out_report_groundings.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3 * len(QUERIES) * 4


def test_sqlite3_compressed_in_sqlite3_out(tmp_path: Path, tiny_objembed_dir: Path,
                                           frames: list[rec.Frame]) -> None:
    """PNG CompressedImage frames from a sqlite3 recording; no depth topic -> no 3D."""
    from rclpy.serialization import deserialize_message

    from objembed_msgs.msg import GroundedObjectArray

    bag = rec.write_recording(tmp_path / "run_db3", frames[:2], "sqlite3", compressed=True)
    out = tmp_path / "out"
    rc = main(_args(bag, tiny_objembed_dir, out, "--proposer", "whole-image", "--query",
                    "a person", "--output-storage", "sqlite3"))  # the only colour topic
    assert rc == 0
    assert (out / "out.db3").is_file() and not list(out.glob("*.mcap"))
    got = _read(out)
    assert got[rec.COMPRESSED_TOPIC] == _read(bag)[rec.COMPRESSED_TOPIC]
    arrays = [deserialize_message(raw, GroundedObjectArray)
              for _, raw in got["/objembed/groundings"]]
    assert [(a.image_width, a.image_height) for a in arrays] == [(512, 512), (600, 400)]
    assert [a.header.stamp.nanosec for a in arrays] == [0, rec.PERIOD_NS]
    for a in arrays:
        assert [(o.x1, o.y1, o.x2, o.y2) for o in a.objects] == [
            (0.0, 0.0, a.image_width, a.image_height)]
        assert a.objects[0].position_status == "not_computed"
        assert a.camera == rec.COMPRESSED_TOPIC and a.num_candidates == 1


def test_accuracy_against_hand_computed_ground_truth(tmp_path: Path, mcap_bag: Path,
                                                     tiny_objembed_dir: Path) -> None:
    """Whole-image proposer: each frame's only box is the whole image. GT frame 0 (by
    stamp): a person box covering the image (IoU 1); frame 1 (by topic + index): a quarter
    box (IoU 0.25 with the whole image). Acc@0.5 = 1/2; AR = 1/2; AP = 51/101 when frame 0
    scores higher (TP ranked first), 51/101 * 1/2 otherwise (COCO 101-point)."""
    from rclpy.serialization import deserialize_message

    from objembed_msgs.msg import GroundedObjectArray

    gt = {
        "images": [{"id": 10, "topic": COLOUR, "stamp_ns": rec.START_NS},
                   {"id": 11, "topic": COLOUR, "index": 1}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [0, 0, 512, 512],
             "expressions": ["the astronaut"]},
            {"id": 2, "image_id": 11, "category_id": 1, "bbox": [0, 0, 300, 200],
             "sentences": [{"sent": "the cup"}]}]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    out = tmp_path / "out"
    rc = main(_args(mcap_bag, tiny_objembed_dir, out, "--proposer", "whole-image",
                    "--image-topic", COLOUR, "--query", "person", "--ground-truth",
                    str(gt_path), "--max-frames", "2"))
    assert rc == 0
    report = _report(out)
    assert report["frames"]["processed"] == 2
    acc = report["accuracy"]
    assert acc["gt_images_evaluated"] == 2
    assert acc["referring"] == {"expressions": 2, "hits": 1, "acc@0.5": 0.5}
    scores = [deserialize_message(raw, GroundedObjectArray).objects[0].score
              for _, raw in _read(out)["/objembed/groundings"]]
    assert len(scores) == 2 and scores[0] != scores[1]
    stats = acc["detection"]["stats"]
    assert stats["AP50"] == pytest.approx(51 / 101 * (1.0 if scores[0] > scores[1] else 0.5))
    assert stats["AR100"] == pytest.approx(0.5) and stats["AR1"] == pytest.approx(0.5)


def test_recorded_timing_drops_frames_that_arrive_while_busy(tmp_path: Path,
                                                             tiny_objembed_dir: Path) -> None:
    """At 1000x the recorded pace frames come 0.1 ms apart, far less than one model pass:
    frame 0 is encoded; frames 1..3 arrive meanwhile; 1 and 2 are superseded (newest wins)
    and frame 3 is encoded."""
    bag = rec.write_recording(tmp_path / "run", rec.skimage_frames(4), "mcap")
    report_path = tmp_path / "r.json"
    rc = main([str(bag), "--checkpoint", str(tiny_objembed_dir), "--proposer", "whole-image",
               "--query", "a person", "--rate", "1000", "--report", str(report_path),
               "--no-progress"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["frames"]["processed"] == 2 and report["frames"]["dropped"] == 2
    with (tmp_path / "r_frames.csv").open() as f:
        assert [int(r["index"]) for r in csv.DictReader(f)] == [0, 3]


def test_unsupported_encoding_is_counted_and_the_rest_processed(
        tmp_path: Path, tiny_objembed_dir: Path, frames: list[rec.Frame]) -> None:
    bad = [frames[0], rec.Frame(frames[1].rgb, frames[1].depth_mm, "yuv422"), frames[2]]
    bag = rec.write_recording(tmp_path / "run", bad, "mcap")
    out = tmp_path / "out"
    assert main(_args(bag, tiny_objembed_dir, out, "--proposer", "whole-image", "--query",
                      "a cup")) == 0
    report = _report(out)
    assert report["frames"]["processed"] == 2
    assert report["frames"]["rejected"] == {"image:bad_encoding": 1}
    assert any("yuv422" in w for w in report["warnings"])
    got = _read(out)
    assert len(got[COLOUR]) == 3 and len(got["/objembed/groundings"]) == 2


def test_truncated_mcap_keeps_the_frames_before_the_cut(tmp_path: Path,
                                                        tiny_objembed_dir: Path) -> None:
    """A recorder that died: the MCAP file has no summary and ends mid-chunk. The frames in
    complete chunks are replayed; the run says it stopped early (exit 1) and the report and
    output recording hold what was processed."""
    bag = rec.write_recording(tmp_path / "run", rec.skimage_frames(4), "mcap")
    data = (bag / "run.mcap").read_bytes()
    (bag / "run.mcap").write_bytes(data[:int(len(data) * 0.7)])
    out = tmp_path / "out"
    rc = main(_args(bag, tiny_objembed_dir, out, "--proposer", "whole-image", "--query",
                    "a person"))
    assert rc == 1
    report = _report(out)
    assert not report["complete"] and "truncated" in report["error"]
    processed = report["frames"]["processed"]
    assert 1 <= processed < 4
    got = _read(out)
    assert len(got["/objembed/groundings"]) == processed
    assert len(got[COLOUR]) >= processed


@pytest.mark.parametrize("case", ["unknown_topic", "wrong_type", "storage_plugin",
                                  "unknown_format", "truncated_sqlite", "missing"])
def test_bad_recordings_fail_clearly_before_the_model_loads(
        tmp_path: Path, mcap_bag: Path, frames: list[rec.Frame], case: str,
        capsys: pytest.CaptureFixture) -> None:
    bag, extra, want = mcap_bag, ["--image-topic", COLOUR], ""
    if case == "unknown_topic":
        extra, want = ["--image-topic", "/nope"], f"'/nope' is not in {mcap_bag}; it has: "
    elif case == "wrong_type":
        extra, want = ["--image-topic", rec.NOTE_TOPIC], "is std_msgs/msg/String, expected"
    elif case == "storage_plugin":
        bag = rec.write_recording(tmp_path / "run", frames[:1], "mcap")
        meta = bag / "metadata.yaml"
        meta.write_text(meta.read_text().replace("storage_identifier: mcap",
                                                 "storage_identifier: rosbag_v2"))
        want = "'rosbag_v2' not supported"
    elif case == "unknown_format":
        bag = tmp_path / "run.bag"
        bag.write_bytes(b"#ROSBAG V2.0\n")
        want = "Unrecognized storage format '.bag'"
    elif case == "truncated_sqlite":
        bag = rec.write_recording(tmp_path / "run", frames[:1], "sqlite3")
        db = bag / "run.db3"
        db.write_bytes(db.read_bytes()[:30000])
        want = "cannot open recording"
    elif case == "missing":
        bag, want = tmp_path / "nothing_here", "recording not found"
    # a checkpoint that does not exist: the recording must be rejected before it is needed
    rc = main([str(bag), "--checkpoint", str(tmp_path / "no_model"), "-o",
               str(tmp_path / "out"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and want in err, err
    if case == "unknown_topic":
        assert f"{COLOUR} [sensor_msgs/msg/Image]" in err
    assert not (tmp_path / "out").exists()


NO_ROS = """
import importlib.abc, sys
BLOCKED = {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "visualization_msgs",
           "builtin_interfaces", "objembed_msgs", "rosidl_runtime_py", "rpyutils"}
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: no ROS install)")
sys.meta_path.insert(0, NoRos())
from objembed_ros.replay.cli import main
rc = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
sys.exit(rc)
"""


def test_runs_without_ros(tmp_path: Path, mcap_bag: Path, tiny_objembed_dir: Path) -> None:
    """With every ROS Python package unimportable, the replay still reads, grounds and
    writes everything, the debug overlay included (the one renderer needs no ROS)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", NO_ROS, *_args(
        mcap_bag, tiny_objembed_dir, out, "--proposer", "whole-image", "--image-topic", COLOUR,
        "--depth-topic", DEPTH, "--camera-info-topic", INFO, "--query", "a person",
        "--max-frames", "1")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    counts = {t: len(v) for t, v in _read(out).items()}
    assert counts["/objembed/groundings"] == 1 and counts["/objembed/markers"] == 1
    assert counts["/objembed/debug_image"] == 1
    assert not _report(out)["warnings"]

"""The node's side of the GPU path, checked where CPU can check it, on real nodes.

- Engines are prepared in on_configure for ``engine_resolutions`` (onnxruntime is the
  CPU-checkable backend: the same prepare path as TensorRT, with exports instead of builds);
  a frame of another resolution runs its projector in torch and exports nothing.
- Frames that keep failing (here: the grounder's encode raising a CUDA out-of-memory
  RuntimeError, injected into a real in-process node) drive /diagnostics to ERROR with the
  count and the last error; one good frame brings it back.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from node_helpers import header, in_process_node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from objembed_msgs.srv import Ground
from objembed_ros.core.resize import ImageProcessorConfig, smart_resize
from objembed_ros.ros.convert import rgb_to_image
from objembed_ros.ros.launcher import default_params_file
from objembed_ros.ros.node import PROCESSING_ERRORS_IN_A_ROW


def _exports(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "onnx").glob("projector-*.onnx"))


def test_engines_are_prepared_on_configure_never_on_a_frame(
        launch_node, ros_client, tiny_objembed_dir: Path, photo: np.ndarray,
        tmp_path: Path) -> None:
    cache = tmp_path / "engines"
    proc = launch_node(params_file=default_params_file(), namespace="engines", parameters={
        "checkpoint": str(tiny_objembed_dir), "proposer": "whole_image",
        "projector_backend": "onnxruntime", "engine_cache_dir": str(cache),
        "engine_resolutions": ["320x240"]})
    node = ros_client.node
    ground = node.create_client(Ground, "/engines/grounding_node/ground")
    pub = node.create_publisher(Image, "/engines/image", qos_profile_sensor_data)
    # the grid of a 320x240 camera, by hand from the official resize (spec section 3)
    cfg = ImageProcessorConfig()
    rh, rw = smart_resize(240, 320, 32, cfg.min_pixels, cfg.max_pixels)
    grid = f"-{rh // 32}x{rw // 32}-"
    ros_client.wait_for(lambda: bool(_exports(cache)), 120, "configure-time export")
    assert len(_exports(cache)) == 1 and grid in _exports(cache)[0], _exports(cache)
    # a 512x512 frame (not declared): answered, projector in torch, nothing exported
    rgb = np.ascontiguousarray(photo)
    resp = None
    deadline = time.monotonic() + 120
    while resp is None or not resp.success:
        assert time.monotonic() < deadline, resp
        pub.publish(rgb_to_image(rgb, header(1_000_000_000)))
        resp = ros_client.call(ground, Ground.Request(queries=["a face"], timeout=2.0))
    assert len(_exports(cache)) == 1
    assert "was not prepared at configure" in proc.log()


def test_frames_that_keep_failing_drive_diagnostics_to_error(
        tiny_objembed_dir: Path, photo: np.ndarray, ros_client) -> None:
    statuses: list[DiagnosticStatus] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        statuses.extend(s for s in msg.status if s.name.endswith("grounding_node"))

    ros_client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    pub = ros_client.node.create_publisher(Image, "/failing/image", qos_profile_sensor_data)
    rgb = np.ascontiguousarray(photo[:64, :96])
    with in_process_node("/failing", {"checkpoint": str(tiny_objembed_dir),
                                       "proposer": "whole_image",
                                       "diagnostics_period": 0.2}) as node:
        node.autostart()
        assert node.state == "active", node.model_error
        fail = threading.Event()
        fail.set()
        real_encode = node.grounder.encode_frame

        def encode(*args, **kwargs):
            if fail.is_set():
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real_encode(*args, **kwargs)

        node.grounder.encode_frame = encode
        stamp = 1_000_000_000

        def publish_until(done, what: str) -> None:
            nonlocal stamp
            deadline = time.monotonic() + 60
            while not done():
                assert time.monotonic() < deadline, what
                stamp += 1_000_000
                pub.publish(rgb_to_image(rgb, header(stamp)))
                time.sleep(0.1)

        def level_seen(level: bytes, text: str) -> bool:
            return any(s.level == level and text in s.message for s in statuses)

        publish_until(lambda: node.processing_errors.state().in_a_row >= 1, "first failure")
        assert not level_seen(DiagnosticStatus.ERROR, "")  # one failure is not an alarm
        publish_until(lambda: level_seen(DiagnosticStatus.ERROR, "frames keep failing"),
                      "ERROR on /diagnostics")
        error = next(s for s in statuses if s.level == DiagnosticStatus.ERROR)
        values = {kv.key: kv.value for kv in error.values}
        assert int(values["processing_errors_in_a_row"]) >= PROCESSING_ERRORS_IN_A_ROW
        assert "CUDA out of memory" in values["last_processing_error"]
        assert "CUDA out of memory" in error.message
        assert values["rejected_inputs"] == "0"  # a model failure is not a bad input
        assert node.state == "active"
        fail.clear()
        statuses.clear()
        publish_until(lambda: any(s.level == DiagnosticStatus.OK for s in statuses),
                      "OK after a good frame")
        ok = next(s for s in statuses if s.level == DiagnosticStatus.OK)
        values = {kv.key: kv.value for kv in ok.values}
        assert values["processing_errors_in_a_row"] == "0"
        assert int(values["processing_errors"]) >= PROCESSING_ERRORS_IN_A_ROW

"""A node whose checkpoint is missing: configure fails with a clear log, the process keeps
running unconfigured, and every service answers "model not ready"."""
from __future__ import annotations

import time

from lifecycle_msgs.srv import GetState

from objembed_msgs.srv import FindImage, Ground, SetQueries
from objembed_ros.ros.launcher import default_params_file


def test_missing_checkpoint_leaves_node_unconfigured(launch_node, ros_client, tmp_path) -> None:
    proc = launch_node(params_file=default_params_file(), namespace="broken",
                       parameters={"checkpoint": str(tmp_path / "no_such_model"),
                                   "proposer": "whole_image"})
    node = ros_client.node
    ground = node.create_client(Ground, "/broken/grounding_node/ground")
    resp = ros_client.call(ground, Ground.Request(queries=["cup"]), timeout=60)
    deadline = time.monotonic() + 60
    while "no_such_model" not in resp.message:  # until autostart's configure has failed
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.2)
        resp = ros_client.call(ground, Ground.Request(queries=["cup"]))
    assert not resp.success and resp.message.startswith("model not ready"), resp.message
    assert "no_such_model" in resp.message
    state = ros_client.call(node.create_client(GetState, "/broken/grounding_node/get_state"),
                            GetState.Request())
    assert state.current_state.label == "unconfigured"
    find = ros_client.call(node.create_client(FindImage, "/broken/grounding_node/find_image"),
                           FindImage.Request(text="kitchen"))
    assert not find.success and find.message.startswith("model not ready")
    setq = ros_client.call(node.create_client(SetQueries, "/broken/grounding_node/set_queries"),
                           SetQueries.Request(queries=["person"]))
    assert setq.success  # standing queries are kept for when the model is ready
    assert proc.alive()
    assert "configure failed" in proc.log() and "no_such_model" in proc.log()


def test_parameter_choices_are_validated() -> None:
    from objembed_ros.ros.node import PARAMETERS, validate_settings

    values = {p.name: p.default for p in PARAMETERS}
    assert validate_settings(values) is None
    for name, bad in (("projector_backend", "tvm"), ("dtype", "int4"), ("device", "gpu0"),
                      ("proposer", "yolo"), ("image_topics", [])):
        reason = validate_settings({**values, name: bad})
        assert reason is not None and name in reason, (name, reason)


def test_grounder_errors_map_to_service_failures() -> None:
    from types import SimpleNamespace

    from objembed_ros.core.errors import InputError
    from objembed_ros.grounder import GrounderBusy
    from objembed_ros.ros.node import GroundingNode

    recorder = SimpleNamespace(_fail=lambda response, kind, message: (kind, message))
    cases = {GrounderBusy("timeout: the model is busy"): ("timeout", "timeout: the model is busy"),
             InputError("empty query"): ("bad_request", "empty query"),
             RuntimeError("model not loaded"): ("model_not_ready",
                                                "model not ready: model not loaded")}
    for err, expected in cases.items():
        assert isinstance(err, GroundingNode._GROUNDER_ERRORS)
        assert GroundingNode._fail_from(recorder, None, err) == expected

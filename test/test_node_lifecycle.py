"""Lifecycle semantics of the real node: a missing checkpoint leaves it unconfigured (every
functional service refuses); inactive refuses and encodes nothing; deactivate drops the cache
and answers pending calls; activate resumes; cleanup releases the model. Also the parameter
checks and the one error mapping."""
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
    assert not setq.success and setq.message.startswith("model not ready (node unconfigured")
    assert proc.alive()
    assert "configure failed" in proc.log() and "no_such_model" in proc.log()


def test_parameter_choices_are_validated() -> None:
    from objembed_ros.ros.params import PARAMETERS, validate_settings

    values = {p.name: p.default for p in PARAMETERS}
    assert validate_settings(values) is None
    for name, bad in (("projector_backend", "tvm"), ("dtype", "int4"), ("device", "gpu0"),
                      ("proposer", "yolo"), ("image_topics", []),
                      ("engine_resolutions", ["1280"]), ("engine_resolutions", ["0x480"]),
                      ("engine_resolutions", ["640x480", "wide"])):
        reason = validate_settings({**values, name: bad})
        assert reason is not None and name in reason, (name, reason)
    assert validate_settings({**values, "engine_resolutions": ["640x480", " 1280X720 "]}) is None
    from objembed_ros.ros.params import grounder_config

    config = grounder_config({**values, "engine_resolutions": ["640x480", "1280X720"]})
    assert config.engine_resolutions == ((640, 480), (1280, 720))
    assert config.allow_engine_build is False
    names = {p.name for p in PARAMETERS}
    assert "max_wait" in names and not any(n.startswith("qos_") for n in names)


def test_grounder_errors_map_to_service_failures() -> None:
    from objembed_ros.core.errors import InputError, ModelBusy, ModelFailure, ModelNotReady
    from objembed_ros.grounder import GrounderBusy
    from objembed_ros.ros.services import NoFrame, failure_for

    cases = [
        (InputError("empty query"), ("bad_request", "empty query")),
        (NoFrame("no frame yet"), ("no_frame", "no frame yet")),
        (ModelBusy("the model is busy"), ("timeout", "timeout: the model is busy")),
        (GrounderBusy("timeout: the model is busy encoding a frame"),
         ("timeout", "timeout: the model is busy encoding a frame")),
        (ModelNotReady("released"), ("model_not_ready", "model not ready: released")),
        (ModelFailure("CUDA out of memory"), ("model_failure",
                                              "model failure: CUDA out of memory")),
        # any other RuntimeError is a bug or a runtime failure, never "not ready"
        (RuntimeError("index out of range"), ("internal_error",
                                              "internal error: RuntimeError: index out of range")),
    ]
    for err, expected in cases:
        assert failure_for(err) == expected, err


def test_lifecycle_states_are_enforced(launch_node, ros_client, tiny_objembed_dir,
                                       photo) -> None:
    import numpy as np
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from node_helpers import header
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from objembed_ros.ros.convert import rgb_to_image

    proc = launch_node(params_file=default_params_file(), namespace="life",
                       parameters={"checkpoint": str(tiny_objembed_dir),
                                   "proposer": "whole_image", "diagnostics_period": 0.3})
    node = ros_client.node
    base = "/life/grounding_node"
    ground = node.create_client(Ground, f"{base}/ground")
    find = node.create_client(FindImage, f"{base}/find_image")
    setq = node.create_client(SetQueries, f"{base}/set_queries")
    change = node.create_client(ChangeState, f"{base}/change_state")
    get_state = node.create_client(GetState, f"{base}/get_state")
    pub = node.create_publisher(Image, "/life/image", qos_profile_sensor_data)
    diags: list[DiagnosticArray] = []
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    rgb = np.ascontiguousarray(photo[:64, :96])

    def state() -> str:
        return ros_client.call(get_state, GetState.Request(), 60).current_state.label

    def transition(tid: int) -> None:
        assert ros_client.call(change, ChangeState.Request(
            transition=Transition(id=tid)), 60).success

    def diag(key: str) -> str:
        seen = len(diags)
        ros_client.wait_for(lambda: len(diags) > seen, 30, "diagnostics")
        return {kv.key: kv.value for kv in diags[-1].status[0].values}[key]

    def serve(stamp: int) -> Ground.Response:
        deadline = time.monotonic() + 60
        while True:
            pub.publish(rgb_to_image(rgb, header(stamp)))
            resp = ros_client.call(ground, Ground.Request(queries=["a face"]), 60)
            if resp.success:
                return resp
            assert time.monotonic() < deadline, resp.message
            time.sleep(0.1)

    deadline = time.monotonic() + 120
    while state() != "active":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    serve(1_000_000_000)
    pending = ground.call_async(Ground.Request(queries=["a face"], wait_for_fresh_frame=True,
                                               timeout=20.0))
    time.sleep(0.5)
    transition(Transition.TRANSITION_DEACTIVATE)
    assert state() == "inactive"
    ros_client.wait_for(pending.done, 30, "the pending call's answer")
    assert not pending.result().success and pending.result().message == "node deactivated"
    for client, request in ((ground, Ground.Request(queries=["a face"])),
                            (find, FindImage.Request(text="a face")),
                            (setq, SetQueries.Request(queries=["a face"]))):
        resp = ros_client.call(client, request, 60)
        assert not resp.success and resp.message.startswith("node inactive"), resp.message
    assert diag("frames_cached") == "0"  # deactivate dropped the cache
    encoded = diag("/life/image: frames_encoded")
    for i in range(10):  # frames arrive while inactive: counted, not encoded
        pub.publish(rgb_to_image(rgb, header(2_000_000_000 + i)))
        time.sleep(0.05)
    assert diag("/life/image: frames_encoded") == encoded
    assert diag("frames_cached") == "0"
    transition(Transition.TRANSITION_ACTIVATE)
    resp = ros_client.call(ground, Ground.Request(queries=["a face"]), 60)
    assert not resp.success and resp.message == "no frame yet"  # resumed with an empty cache
    assert serve(3_000_000_000).success
    transition(Transition.TRANSITION_DEACTIVATE)
    transition(Transition.TRANSITION_CLEANUP)
    assert state() == "unconfigured" and diag("state") == "unconfigured"
    resp = ros_client.call(ground, Ground.Request(queries=["a face"]), 60)
    assert not resp.success and resp.message == "model not ready (node unconfigured)"
    assert proc.alive()


def test_params_yaml_matches_the_parameter_table() -> None:
    """Every parameter in the shipped YAML, with the table's default (and nothing else)."""
    import yaml

    from objembed_ros.ros.params import PARAMETERS

    shipped = yaml.safe_load(default_params_file().read_text())
    (section,) = shipped.values()  # one node section, whatever its key
    assert section["ros__parameters"] == {p.name: p.default for p in PARAMETERS}

"""config/params.yaml applies under any namespace and node name (it is keyed /**), proven on
a real node read back through its parameter service."""
from __future__ import annotations

from pathlib import Path

import yaml
from rcl_interfaces.srv import GetParameters

from objembed_ros.ros.launcher import default_params_file


def _shipped() -> dict:
    return yaml.safe_load(default_params_file().read_text())


def test_shipped_file_is_keyed_for_any_node_and_documents_every_parameter() -> None:
    """Keyed /**; one entry per declared parameter, at its declared default (the file is the
    parameters' documentation, and applying it changes nothing)."""
    from objembed_ros.ros.params import PARAMETERS

    data = _shipped()
    assert list(data) == ["/**"]
    assert data["/**"]["ros__parameters"] == {p.name: p.default for p in PARAMETERS}


def test_params_file_applies_to_a_namespaced_renamed_node(launch_node, ros_client,
                                                          tmp_path: Path) -> None:
    """The shipped file with two values changed, given to /robot1/arm_grounder."""
    data = _shipped()
    params = data["/**"]["ros__parameters"]
    params.update(top_k=7, min_score=0.125, autostart=False)  # not the declared defaults
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    launch_node(params_file=path, namespace="robot1", name="arm_grounder")
    client = ros_client.node.create_client(GetParameters,
                                           "/robot1/arm_grounder/get_parameters")
    resp = ros_client.call(client, GetParameters.Request(names=["top_k", "min_score"]),
                           timeout=60)
    assert [v.integer_value for v in resp.values[:1]] == [7]
    assert [v.double_value for v in resp.values[1:]] == [0.125]

"""launch/objembed.launch.py: its arguments and the lifecycle node it builds.

Where `launch`/`launch_ros` are importable (a ROS install) the description is evaluated for
real: every argument's default, then the LifecycleNode for a namespaced run. PyPI has no
launch/launch_ros wheels, so on the pip path that test is skipped and what can be checked
without them is checked from the syntax tree: every LaunchConfiguration names a declared
argument and every argument is used. That the file is installed where `ros2 launch` looks
(share/objembed_ros/launch) is checked on a real colcon install (test_colcon_workspace.py).
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

LAUNCH = Path(__file__).resolve().parents[1] / "objembed_ros" / "launch" / "objembed.launch.py"
ARGUMENTS = {"params_file", "image", "checkpoint", "namespace", "autostart"}
HAVE_LAUNCH = (importlib.util.find_spec("launch") is not None
               and importlib.util.find_spec("launch_ros") is not None)


def _tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _first_str_args(call_name: str) -> set[str]:
    return {node.args[0].value for node in ast.walk(_tree())
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == call_name
            and node.args and isinstance(node.args[0], ast.Constant)}


def test_only_launch_and_stdlib_at_module_level() -> None:
    """launch_ros is imported where the node is built, so the file loads with launch alone."""
    top = [n for n in _tree().body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0]
               for n in top}
    assert modules <= {"os", "launch"}, modules


def test_every_configuration_is_a_declared_argument_and_every_argument_is_used() -> None:
    declared = _first_str_args("DeclareLaunchArgument")
    used = _first_str_args("LaunchConfiguration")
    assert declared == ARGUMENTS
    assert used == declared, (used ^ declared)


def _load() -> object:
    spec = importlib.util.spec_from_file_location("objembed_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAVE_LAUNCH,
                    reason="launch/launch_ros not importable (no PyPI wheels; ROS installs "
                           "have them)")
def test_launch_description_for_real(tmp_path: Path) -> None:
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import perform_substitutions
    from launch_ros.actions import LifecycleNode

    module = _load()
    ld = module.generate_launch_description()
    args = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(args) == ARGUMENTS
    context = LaunchContext()
    defaults = {name: perform_substitutions(context, a.default_value)
                for name, a in args.items()}
    assert Path(defaults["params_file"]).name == "params.yaml"
    assert Path(defaults["params_file"]).is_file(), defaults["params_file"]
    assert defaults["image"] == "image" and defaults["checkpoint"] == ""
    assert defaults["namespace"] == "" and defaults["autostart"] == "true"

    context.launch_configurations.update(defaults)
    context.launch_configurations.update(namespace="robot1", checkpoint=str(tmp_path),
                                         image="/camera/color/image_raw", autostart="false")
    (opaque,) = [e for e in ld.entities if isinstance(e, OpaqueFunction)]
    (node,) = opaque.execute(context)
    assert isinstance(node, LifecycleNode)
    node._perform_substitutions(context)  # what launch does before starting the process
    assert node.node_package == "objembed_ros" and node.node_executable == "grounding_node"
    assert node.node_name == "/robot1/grounding_node"
    assert node.expanded_node_namespace == "/robot1"
    # the command line launch will run (parts filled only at execute time stay None)
    cmd: list[str | None] = []
    for part in node.cmd:
        try:
            cmd.append(perform_substitutions(context, part))
        except Exception:  # ros_specific_arguments locals; the executable's install path
            cmd.append(None)
    files = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--params-file"]
    assert files[0] == defaults["params_file"]  # the file first, the command line over it
    (overrides,) = yaml.safe_load(Path(files[1]).read_text()).values()
    assert overrides["ros__parameters"] == {"checkpoint": str(tmp_path), "autostart": False}
    assert "image:=/camera/color/image_raw" in [cmd[i + 1] for i, a in enumerate(cmd)
                                                 if a == "-r"]

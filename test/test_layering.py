"""Every dependency points down (ros -> grounder -> encoder/proposals/accel -> core): the
imports of every module of the package, read from its source (function-level imports
included), against the layering rules of the README's layout section."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "objembed_ros" / "objembed_ros"
ROS_MODULES = {
    "rclpy", "rosidl_runtime_py", "rosbag2_py", "launch", "launch_ros", "message_filters",
    "tf2_ros", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "lifecycle_msgs",
    "rcl_interfaces", "sensor_msgs", "std_msgs", "vision_msgs", "visualization_msgs",
    "objembed_msgs",
}
# package -> the objembed_ros packages it must not import
FORBIDDEN_INTERNAL = {
    "core": {"encoder", "proposals", "accel", "grounder", "ros", "testing", "cli", "demo"},
    "encoder": {"accel", "proposals", "grounder", "ros", "testing", "cli", "demo"},
    "proposals": {"encoder", "accel", "grounder", "ros", "testing", "cli", "demo"},
    "accel": {"grounder", "ros", "testing", "cli", "demo"},
    "grounder": {"ros", "testing", "cli", "demo"},
    "cli": {"ros", "testing", "demo"},
    # the node's and the replay's output messages, filled through a message factory
    "msgfill": {"encoder", "proposals", "accel", "grounder", "memory", "ros", "replay",
                "testing", "cli", "demo"},
}
# grounder: torch only in grounder.build, on use (see the test below)
NO_TORCH = {"core", "msgfill"}
NO_ROS = {"core", "encoder", "proposals", "accel", "grounder", "cli", "msgfill"}
# objembed_ros.ros is imported by ros itself and by demo (which starts the real node and
# talks to it: the one application module above the node); by nothing else.
MAY_IMPORT_ROS_PACKAGE = {"ros", "demo"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["objembed_ros", *parts])] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    """Imported names in `source`, relative imports resolved against `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str:
    """objembed_ros.encoder.model -> encoder; objembed_ros.cli -> cli; the root -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = _modules()


def violations(name: str, imports: set[str]) -> list[str]:
    layer = _layer(name)
    bad = []
    for imp in sorted(imports):
        top = imp.split(".")[0]
        if top == "objembed_ros" and imp.count("."):
            target = _layer(imp)
            if target in FORBIDDEN_INTERNAL.get(layer, ()):
                bad.append(f"{layer} -> {target} ({imp})")
            if target == "ros" and layer not in MAY_IMPORT_ROS_PACKAGE:
                bad.append(f"{layer} -> ros ({imp})")
        if layer in NO_TORCH and top in ("torch", "torchvision"):
            bad.append(f"{layer} -> torch ({imp})")
        if layer in NO_ROS and top in ROS_MODULES:
            bad.append(f"{layer} -> ROS ({imp})")
    return sorted(set(bad))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_point_down(name: str) -> None:
    assert violations(name, _imports(name, MODULES[name])) == []


def test_session_imports_no_torch() -> None:
    """The node imports the grounder at start-up; torch loads when the model is built."""
    import subprocess
    import sys

    code = ("import sys, objembed_ros.grounder, objembed_ros.core.overlay, objembed_ros.cli, "
            "objembed_ros.msgfill; "
            "print(sorted(m for m in ('torch', 'rclpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    session = imports_in((PACKAGE_DIR / "grounder" / "session.py").read_text(),
                         "objembed_ros.grounder")
    assert not {i for i in session if i.split(".")[0] == "torch"}


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        here = _layer(name)
        graph.setdefault(here, set()).update(
            _layer(i) for i in _imports(name, path)
            if i.startswith("objembed_ros.") and _layer(i) not in ("", here)
            and f"objembed_ros.{_layer(i)}" in MODULES)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"package cycle: {' -> '.join(trail + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_checker_sees_violations() -> None:
    """The rules catch each kind of wrong import (so an empty list above means something)."""
    source = ("def f():\n    from objembed_ros.accel.cuda_graphs import TextGraphRunner\n"
              "import torch\nimport rclpy\nfrom ..ros import viz\nfrom . import model\n")
    found = imports_in(source, "objembed_ros.encoder")
    assert violations("objembed_ros.encoder.model", found) == [
        "encoder -> ROS (rclpy)",
        "encoder -> accel (objembed_ros.accel.cuda_graphs)",
        "encoder -> accel (objembed_ros.accel.cuda_graphs.TextGraphRunner)",
        "encoder -> ros (objembed_ros.ros)", "encoder -> ros (objembed_ros.ros.viz)"]
    assert violations("objembed_ros.core.scoring", {"torch", "sensor_msgs.msg"}) == [
        "core -> ROS (sensor_msgs.msg)", "core -> torch (torch)"]
    assert violations("objembed_ros.cli", {"objembed_ros.testing.tiny_objembed"}) == [
        "cli -> testing (objembed_ros.testing.tiny_objembed)"]
    assert violations("objembed_ros.memory.store", {"objembed_ros.ros.convert"}) == [
        "memory -> ros (objembed_ros.ros.convert)"]
    assert violations("objembed_ros.msgfill", {"visualization_msgs.msg", "torch",
                                               "objembed_ros.replay.messages"}) == [
        "msgfill -> ROS (visualization_msgs.msg)",
        "msgfill -> replay (objembed_ros.replay.messages)", "msgfill -> torch (torch)"]

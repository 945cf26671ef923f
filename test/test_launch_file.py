"""launch/objembed.launch.py compiles, and names the right package, executable and files.

With `launch`/`launch_ros` installed (a ROS install) it is also executed; pip installs have
neither, so the structure is checked from the syntax tree."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "objembed_ros" / "launch" / "objembed.launch.py"


def _tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def test_compiles_and_imports_only_launch_at_module_level() -> None:
    tree = _tree()
    compile(tree, str(LAUNCH), "exec")
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0]
               for n in top}
    assert modules <= {"os", "launch"}, modules


def test_structure() -> None:
    tree = _tree()
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    consts = {n.targets[0].id: n.value.value for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)}
    assert consts["PACKAGE"] == "objembed_ros" and consts["EXECUTABLE"] == "grounding_node"
    text = LAUNCH.read_text()
    for needle in ("LifecycleNode", "params.yaml", "fastdds_shm.xml",
                   "FASTDDS_DEFAULT_PROFILES_FILE", '("image", '):
        assert needle in text, needle
    assert " eval(" not in text and "subprocess" not in text  # no installs, no eval
    setup = (LAUNCH.parents[1] / "setup.py").read_text()
    assert "grounding_node = objembed_ros.ros.node:main" in setup


@pytest.mark.skipif(importlib.util.find_spec("launch") is None
                    or importlib.util.find_spec("launch_ros") is None,
                    reason="launch/launch_ros not installed (pip install)")
def test_generate_launch_description() -> None:
    spec = importlib.util.spec_from_file_location("objembed_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    assert ld.entities

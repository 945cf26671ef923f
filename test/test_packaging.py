"""Package metadata: both package.xml files parse (catkin_pkg, what rosdep and bloom use) and
declare exactly the dependencies the sources use; every interface file is generated. What
colcon installs from them is checked on a real build in test_colcon_workspace.py."""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "objembed_ros"  # the ament_python package folder
MSGS = REPO / "msg" / "objembed_msgs"

# Non-ROS imports -> their rosdep keys (rosdistro rosdep/python.yaml).
PYTHON_KEYS = {
    "numpy": "python3-numpy", "PIL": "python3-pil", "yaml": "python3-yaml",
    "skimage": "python3-skimage", "torch": "python3-torch", "scipy": "python3-scipy",
    "tqdm": "python3-tqdm",
    "transformers": "python3-transformers-pip",
    # pip dependencies of transformers: no key of their own, installed with it
    "safetensors": "python3-transformers-pip", "tokenizers": "python3-transformers-pip",
}
# Imported only when chosen; the node falls back to torch and says why (package.xml comment).
OPTIONAL = {"onnx", "onnxruntime", "tensorrt", "flash_attn", "torchvision"}
# No rosdep keys: from requirements.txt with pip (package.xml comment says which and why).
PIP_ONLY = {"rosbags", "mcap", "pycocotools", "usearch"}


def _imported_top_level(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_files_parse_and_agree_with_setup() -> None:
    ros_pkg = parse_package(PKG / "package.xml")
    msgs_pkg = parse_package(MSGS / "package.xml")
    assert ros_pkg.name == "objembed_ros" and msgs_pkg.name == "objembed_msgs"
    assert ros_pkg.get_build_type() == "ament_python"
    assert msgs_pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in msgs_pkg.member_of_groups]
    setup = ast.parse((PKG / "setup.py").read_text())
    (call,) = [n for n in ast.walk(setup)
               if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    version = {k.arg: k.value for k in call.keywords}["version"]
    assert isinstance(version, ast.Constant) and version.value == ros_pkg.version
    assert not (REPO / "package.xml").exists(), "a root package.xml hides msg/ from colcon"


def test_node_package_declares_exactly_the_dependencies_it_imports() -> None:
    pkg = parse_package(PKG / "package.xml")
    assert not pkg.build_depends and not pkg.buildtool_depends  # pure Python: run time only
    declared = {d.name for d in pkg.exec_depends}
    sources = sorted((PKG / "objembed_ros").rglob("*.py")) + sorted((PKG / "launch").glob("*.py"))
    used = set()
    for name in _imported_top_level(sources) - set(sys.stdlib_module_names) - OPTIONAL - PIP_ONLY:
        if name != "objembed_ros":
            used.add(PYTHON_KEYS.get(name, name))  # else a ROS package: key = its name
    assert used - declared == set(), f"imported but not declared: {used - declared}"
    assert declared - used == set(), f"declared but not imported: {declared - used}"
    assert {d.name for d in pkg.test_depends} == {"python3-pytest"}


def _interface_files() -> list[Path]:
    return sorted(p for p in MSGS.glob("*/*.*") if p.suffix in (".msg", ".srv", ".action"))


def test_interfaces_package_declares_what_its_interfaces_use() -> None:
    pkg = parse_package(MSGS / "package.xml")
    used = set()
    for path in _interface_files():
        for line in path.read_text().splitlines():
            field_type = line.split("#", 1)[0].split()[:1]
            if field_type and "/" in field_type[0]:
                used.add(field_type[0].split("/")[0])
    if any(p.suffix == ".action" for p in _interface_files()):
        used.add("action_msgs")  # generated action types use action_msgs/GoalInfo etc.
    build = {d.name for d in pkg.build_depends}
    run = {d.name for d in pkg.exec_depends}
    assert build == used and run == used | {"rosidl_default_runtime"}, (used, build, run)
    cmake = (MSGS / "CMakeLists.txt").read_text()
    listed = set(re.search(r"DEPENDENCIES ([\w ]+)", cmake).group(1).split())
    found = set(re.findall(r"find_package\((\w+) REQUIRED\)", cmake))
    assert listed == used and found == used | {"ament_cmake", "rosidl_default_generators"}


def test_every_interface_file_is_generated() -> None:
    cmake = (MSGS / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv|action)/\w+\.(?:msg|srv|action))"', cmake))
    assert listed == {str(p.relative_to(MSGS)) for p in _interface_files()}


def test_fastdds_profile_fits_720p_frames() -> None:
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(PKG / "config" / "fastdds_shm.xml").getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns)
           if t.findtext("d:type", namespaces=ns) == "SHM"]
    assert shm, "no shared-memory transport"
    assert int(shm[0].findtext("d:segment_size", namespaces=ns)) >= 4 * 1280 * 720 * 3
    participant = root.find(".//d:participant", ns)
    assert participant.get("is_default_profile") == "true"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[-1] == "make test"


def test_installed_interfaces_came_from_this_tree() -> None:
    """The installed objembed_msgs was generated from msg/ as it is now (no stale build)."""
    import objembed_msgs.msg as m

    fields = set(m.GroundedObject.get_fields_and_field_types())
    declared = set()
    for line in (REPO / "msg/objembed_msgs/msg/GroundedObject.msg").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "=" not in line:
            declared.add(line.split()[1])
    assert fields == declared



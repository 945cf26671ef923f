"""The package metadata agrees with itself and builds with colcon on a ROS install."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from catkin_pkg.package import parse_package

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "objembed_ros"  # the ament_python package folder


def test_package_xml_files_are_valid_and_consistent() -> None:
    ros_pkg = parse_package(PKG / "package.xml")
    msgs_pkg = parse_package(REPO / "msg" / "objembed_msgs" / "package.xml")
    assert ros_pkg.name == "objembed_ros" and msgs_pkg.name == "objembed_msgs"
    assert ros_pkg.get_build_type() == "ament_python"
    assert msgs_pkg.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in msgs_pkg.member_of_groups]
    assert "objembed_msgs" in [d.name for d in ros_pkg.exec_depends + ros_pkg.build_depends]
    setup_py = (PKG / "setup.py").read_text()
    assert re.search(rf'version="{re.escape(ros_pkg.version)}"', setup_py)


def test_every_interface_file_is_generated() -> None:
    cmake = (REPO / "msg" / "objembed_msgs" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', cmake))
    on_disk = {str(p.relative_to(REPO / "msg" / "objembed_msgs"))
               for p in (REPO / "msg" / "objembed_msgs").glob("*/*.*")
               if p.suffix in (".msg", ".srv")}
    assert listed == on_disk


def test_setup_installs_launch_and_config_for_colcon() -> None:
    tree = ast.parse((PKG / "setup.py").read_text())
    text = ast.unparse(tree)
    for needle in ("share/ament_index/resource_index/packages", "launch/*.launch.py",
                   "config/*.yaml", "config/*.xml"):
        assert needle in text
    assert (PKG / "resource" / "objembed_ros").exists()
    assert list((PKG / "launch").glob("*.launch.py")), "no launch file"
    assert (PKG / "config" / "params.yaml").exists()


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



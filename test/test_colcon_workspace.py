"""The ROS-workspace path, as a user runs it: this repository under ws/src, a plain
`colcon build` (against the ROS 2 pip wheels in .venv), then the node started FROM install/
through its installed entry point with install/setup.sh's environment, answering ~/ground.

colcon itself comes from PyPI (requirements-ros.txt). What the pip path cannot check: rosdep
resolution (no ROS apt sources here) and `ros2 launch` (no launch/launch_ros wheels); see
test_launch_file.py and test_packaging.py for what is checked of those instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from node_helpers import NodeHandle

from objembed_ros.ros.launcher import NodeProcess, ros_arguments
from objembed_ros.testing.ros_harness import RosClient

REPO = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).with_name("colcon")
NS = "/colcon_ws"

pytestmark = pytest.mark.skipif(not COLCON.exists(), reason=f"colcon not installed ({COLCON})")


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked + untracked-not-ignored): no .venv,
    no build trees, no local models."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _build_env() -> dict[str, str]:
    """The pip-wheel ROS "underlay": the venv prefix, where the ROS 2 wheels put share/ + lib/."""
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = sys.prefix
    env["CMAKE_PREFIX_PATH"] = sys.prefix
    # colcon's ament_python build runs setup.py with this interpreter; its re-exec guard
    # would make the child skip the wheels' LD_LIBRARY_PATH set-up.
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def _sourced_env(ws: Path, base: dict[str, str]) -> dict[str, str]:
    """os.environ after `. install/setup.sh` (what `source install/setup.bash` gives a shell)."""
    out = subprocess.run(["bash", "-c", '. install/setup.sh && env -0'], cwd=ws, env=base,
                         check=True, capture_output=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    _copy_checkout(ws / "src" / "objembed_ros")
    listed = subprocess.run([str(COLCON), "list", "--names-only"], cwd=ws, env=_build_env(),
                            check=True, capture_output=True, text=True).stdout.split()
    assert sorted(listed) == ["objembed_msgs", "objembed_ros"]
    build = subprocess.run([str(COLCON), "build"], cwd=ws, env=_build_env(),
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]
    return ws


def test_colcon_installs_both_packages(workspace: Path) -> None:
    inst = workspace / "install"
    share = inst / "objembed_ros" / "share" / "objembed_ros"
    for rel in ("package.xml", "launch/objembed.launch.py", "config/params.yaml",
                "config/fastdds_shm.xml"):
        assert (share / rel).is_file(), rel
    assert (inst / "objembed_ros/share/ament_index/resource_index/packages/objembed_ros").is_file()
    assert os.access(inst / "objembed_ros/lib/objembed_ros/grounding_node", os.X_OK)
    msgs = inst / "objembed_msgs"
    assert (msgs / "share/objembed_msgs/action/LockOn.action").is_file()
    assert list((msgs / "lib").glob("libobjembed_msgs__rosidl_typesupport_fastrtps_c.so"))


@pytest.fixture
def installed_node(workspace: Path, tiny_objembed_dir: Path, tmp_path: Path) -> Iterator:
    # Keep the test process's re-exec guard: its LD_LIBRARY_PATH already holds the wheels'
    # libraries, and install/setup.sh has put install/*/lib in front of them, in that order
    # (the bootstrapper's re-exec would reorder the entries).
    env = _sourced_env(workspace, dict(os.environ))
    entry = workspace / "install/objembed_ros/lib/objembed_ros/grounding_node"
    log_path = tmp_path / "installed_node.log"
    log = open(log_path, "w")  # closed by NodeProcess.stop
    command = [str(entry), *ros_arguments(namespace=NS, parameters={
        "checkpoint": str(tiny_objembed_dir), "proposer": "whole_image"})]
    proc = NodeProcess(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True), command, log_path, log)
    try:
        yield proc.popen, env
    finally:
        if proc.stop() not in (0, -2, 130):
            print(proc.log()[-6000:])


def test_installed_node_answers_ground(installed_node, workspace: Path,
                                       photo: np.ndarray) -> None:
    proc, env = installed_node
    # The environment resolves the Python packages to install/, not the checkout.
    where = subprocess.run(
        [sys.executable, "-c", "import objembed_ros as r, objembed_msgs as m; "
                               "print(r.__file__, m.__file__)"],
        env=env, check=True, capture_output=True, text=True).stdout.split()
    inst = str(workspace / "install")
    assert all(p.startswith(inst) for p in where), where
    client = RosClient("colcon_test_client")
    try:
        handle = NodeHandle(client, ns=NS)
        assert handle.ground.wait_for_service(timeout_sec=120), "no ~/ground service"
        h = handle.publish_frame(np.ascontiguousarray(photo[:192, :256]), 1_000_000_000,
                                 np.zeros((0, 4), np.float32), timeout=180)
        resp = handle.call_ground(queries=["a person"], top_k=1, timeout=30.0)
    finally:
        client.close()
    assert resp.success, resp.message
    (result,) = resp.results
    assert result.header == h and result.query == "a person"
    assert [(o.x1, o.y1, o.x2, o.y2) for o in result.objects] == [(0, 0, 256, 192)]
    # the running node loaded the interfaces built in install/
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert f"{inst}/objembed_msgs/lib/libobjembed_msgs__rosidl_generator_c.so" in maps
    assert proc.poll() is None

"""Shared fixtures: an isolated ROS domain per test process, tiny official-format checkpoints,
real photos, and nodes started in subprocesses through the project's own launcher."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from objembed_ros.ros.launcher import NodeProcess, ros_environment, start_node

# Every test process gets its own DDS domain and stays on this machine; the test process uses
# the same Fast DDS profile as the nodes it starts.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.update({k: v for k, v in ros_environment().items()
                   if k.startswith(("FASTDDS_", "RMW_"))})

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent


@pytest.fixture(scope="session")
def tiny_objembed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised ObjEmbed checkpoint directory in the official format."""
    from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

    return make_tiny_objembed_checkpoint(tmp_path_factory.mktemp("objembed_tiny"))


@pytest.fixture(scope="session")
def tiny_wedetect_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random WeDetect-Uni checkpoint with the original key layout (base widths)."""
    from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint

    path = tmp_path_factory.mktemp("wedetect_tiny") / "wedetect_tiny.pth"
    return make_wedetect_checkpoint(path, stage_depths=(1, 1, 1, 1))


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (512x512x3 uint8) shipped with scikit-image."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def photo_wide() -> np.ndarray:
    """A real non-square RGB photo (400x600x3 uint8)."""
    from skimage import data

    return np.ascontiguousarray(data.coffee())


@pytest.fixture
def launch_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Start nodes in subprocesses; stopped (and their logs shown on failure) at teardown."""
    started: list[NodeProcess] = []

    def _launch(module: str = "objembed_ros.ros.node", **kwargs) -> NodeProcess:
        kwargs.setdefault("log_path", tmp_path / f"node{len(started)}.log")
        proc = start_node(module, **kwargs)
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        proc.stop()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"--- log of {' '.join(proc.command[:3])} ---\n{proc.log()[-6000:]}")


@pytest.fixture
def ros_client() -> Iterator:
    from objembed_ros.testing.ros_harness import RosClient

    client = RosClient()
    yield client
    client.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)

"""Clean shutdown of the real node and its launcher: SIGINT/SIGTERM to either ends both, a call
in flight is answered "shutting down", no traceback, no orphan; also when the launcher runs as
a background job of a non-interactive shell (SIGINT ignored) and when it is SIGKILLed.

Times are printed, not asserted tightly (2 shared cores); the bound below only catches a
hang (the old node outlived the launcher's grace period and was SIGKILLed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from objembed_msgs.srv import Ground
from objembed_ros.ros.launcher import start_node

HANG_BOUND_S = 15.0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_gone(pids: list[int], bound: float = HANG_BOUND_S) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids):
        assert time.monotonic() - t0 < bound, f"still alive after {bound} s: {pids}"
        time.sleep(0.02)
    return time.monotonic() - t0


def ready_call(ros_client, ns: str):
    """Wait until the node serves, then leave one call waiting for a frame that never comes."""
    ground = ros_client.node.create_client(Ground, f"/{ns}/grounding_node/ground")
    deadline = time.monotonic() + 120
    while True:
        resp = ros_client.call(ground, Ground.Request(queries=["cup"]), 60)
        if resp.message == "no frame yet":
            break
        assert time.monotonic() < deadline, resp.message
        time.sleep(0.2)
    pending = ground.call_async(Ground.Request(queries=["cup"], wait_for_fresh_frame=True,
                                               timeout=30.0))
    time.sleep(0.5)
    return pending


def launcher_command(ns: str, checkpoint: Path) -> list[str]:
    return [sys.executable, "-m", "objembed_ros.ros.launcher", "--namespace", ns,
            "-p", f"checkpoint:={checkpoint}", "-p", "proposer:=whole_image"]


@pytest.mark.parametrize("how", ["background_shell_sigint", "sigterm"])
def test_signal_to_launcher_ends_both(how: str, ros_client, tiny_objembed_dir: Path,
                                      tmp_path: Path) -> None:
    ns = f"stop_{how}"
    log = tmp_path / "launcher.log"
    cmd = " ".join(launcher_command(ns, tiny_objembed_dir))
    if how == "background_shell_sigint":  # SIGINT starts ignored for `&` jobs of `bash -c`
        shell = subprocess.Popen(["bash", "-c", f"{cmd} > {log} 2>&1 & echo $!; wait"],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
        launcher = int(shell.stdout.readline())
        sig = signal.SIGINT
    else:
        shell = subprocess.Popen(launcher_command(ns, tiny_objembed_dir), stdout=open(log, "w"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        launcher = shell.pid
        sig = signal.SIGTERM
    try:
        pending = ready_call(ros_client, ns)
        nodes = children(launcher)
        assert len(nodes) == 1
        os.kill(launcher, sig)
        took = wait_gone([launcher, nodes[0]])
        print(f"{how}: launcher and node gone {took:.2f} s after the signal")
        ros_client.wait_for(pending.done, 10, "the pending call's answer")
        assert not pending.result().success and pending.result().message == "shutting down"
        text = log.read_text()
        assert "Traceback" not in text and "shutting down" in text, text[-3000:]
    finally:
        for pid in [launcher, *children(launcher)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shell.wait(10)


def test_sigkilled_launcher_leaves_no_orphan(ros_client, tiny_objembed_dir: Path,
                                             tmp_path: Path) -> None:
    launcher = subprocess.Popen(launcher_command("stop_kill", tiny_objembed_dir),
                                stdout=open(tmp_path / "l.log", "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        ready_call(ros_client, "stop_kill")
        nodes = children(launcher.pid)
        assert len(nodes) == 1
        launcher.kill()
        launcher.wait(10)
        took = wait_gone(nodes)  # the kernel sends the node SIGTERM (PR_SET_PDEATHSIG)
        print(f"node gone {took:.2f} s after its launcher was SIGKILLed")
    finally:
        for pid in children(launcher.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_node_answers_calls_and_exits_cleanly(sig: int, ros_client,
                                                        tiny_objembed_dir: Path,
                                                        tmp_path: Path) -> None:
    ns = f"stop_node_{sig}"
    proc = start_node(namespace=ns, log_path=tmp_path / "node.log",
                      parameters={"checkpoint": str(tiny_objembed_dir),
                                  "proposer": "whole_image"})
    try:
        pending = ready_call(ros_client, ns)
        proc.popen.send_signal(sig)
        took = wait_gone([proc.popen.pid])
        print(f"node gone {took:.2f} s after signal {sig}")
        assert proc.popen.wait(5) == 0
        ros_client.wait_for(pending.done, 10, "the pending call's answer")
        assert not pending.result().success and pending.result().message == "shutting down"
        assert "Traceback" not in proc.log(), proc.log()[-3000:]
    finally:
        proc.stop()

"""Start objembed_ros nodes without `ros2 launch` (pip installs have no launch/ros2 CLI).

It does what launch/objembed.launch.py does on a ROS install: pick the params file, set the
Fast DDS shared-memory profile, apply namespace and remappings, and run the node in its own
process. Tests and benches use it too, so what they start is what a user starts.

    objembed-launch --params config/params.yaml -r image:=/camera/color/image_raw \
        -p checkpoint:=/models/ObjEmbed-2B
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PACKAGE = "objembed_ros"
# Set by the ros-wheels-bootstrapper .pth after it re-execs Python with LD_LIBRARY_PATH. A child
# started with another interpreter must not inherit it, or that child skips the bootstrap.
_BOOTSTRAP_GUARD = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"
# The pid of the process that started a node; the node dies with it (die_with_parent).
PARENT_PID_ENV = "OBJEMBED_PARENT_PID"
_PR_SET_PDEATHSIG = 1
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 2.5  # after forwarding a signal: SIGKILL the node if it has not ended by then


def die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when the process that started it
    (named by OBJEMBED_PARENT_PID) dies, even by SIGKILL: a node never outlives its launcher.
    Called first thing by the node's main(); a no-op elsewhere."""
    parent = os.environ.get(PARENT_PID_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the launcher still forwards signals
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def config_dir() -> Path:
    """The package's config/ folder: the ament share dir on a ROS install, else the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory(_PACKAGE)) / "config"
        if shared.is_dir():
            return shared
    except Exception:  # not installed through colcon: fall back to the source tree
        pass
    return Path(__file__).resolve().parents[2] / "config"


def default_params_file() -> Path:
    return config_dir() / "params.yaml"


def stop_on_signals() -> threading.Event:
    """An event set by the first SIGINT or SIGTERM (a second one exits at once). Installed
    explicitly, so it works also where SIGINT starts ignored (a background job of a
    non-interactive shell)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: after the node has answered,
    released and destroyed everything, unloading torch/transformers still took ~5 s here
    (test_node_shutdown prints the times), and a thread inside a model pass cannot be
    interrupted at all."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)  # the C logger's buffered lines too
    except (OSError, AttributeError):
        pass
    os._exit(code)


def ros_environment(
    base: Mapping[str, str] | None = None,
    *,
    domain_id: int | None = None,
    localhost_only: bool | None = None,
    use_shm_profile: bool = True,
) -> dict[str, str]:
    """Environment for a ROS child process.

    use_shm_profile: point Fast DDS at config/fastdds_shm.xml unless the caller already set
    FASTDDS_DEFAULT_PROFILES_FILE (a deployment's own profile wins).
    """
    env = dict(os.environ if base is None else base)
    env.pop(_BOOTSTRAP_GUARD, None)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if use_shm_profile:
        env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_dir() / "fastdds_shm.xml"))
        env.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "0")
    else:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    if localhost_only:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def ros_arguments(
    *,
    params_file: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, object] | None = None,
    remappings: Mapping[str, str] | None = None,
    namespace: str | None = None,
    name: str | None = None,
    log_level: str | None = None,
) -> list[str]:
    """The `--ros-args ...` tail of a node command line."""
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", str(params_file)]
    for key, value in (parameters or {}).items():
        args += ["-p", f"{key}:={_param_literal(value)}"]
    for src, dst in (remappings or {}).items():
        args += ["-r", f"{src}:={dst}"]
    if namespace:
        args += ["-r", f"__ns:={namespace if namespace.startswith('/') else '/' + namespace}"]
    if name:
        args += ["-r", f"__node:={name}"]
    if log_level:
        args += ["--log-level", log_level]
    return args


def _param_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


@dataclass
class NodeProcess:
    """A node running in its own process; stop() ends it with SIGINT, then SIGKILL."""

    popen: subprocess.Popen
    command: list[str]
    log_path: Path | None = None
    _log_file: object = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
        return self.popen.returncode


def start_node(
    module: str = "objembed_ros.ros.node",
    *,
    params_file: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, object] | None = None,
    remappings: Mapping[str, str] | None = None,
    namespace: str | None = None,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    log_level: str | None = None,
    extra_args: Sequence[str] = (),
    python: str | None = None,
) -> NodeProcess:
    """Run `python -m module --ros-args ...` (or `python file.py ...`) in a new process.

    Returns at once; the caller waits for the node's topics or services.
    """
    target = [module] if module.endswith(".py") else ["-m", module]
    command = [python or sys.executable, *target, *extra_args]
    command += ros_arguments(
        params_file=params_file, parameters=parameters, remappings=remappings,
        namespace=namespace, name=name, log_level=log_level,
    )
    log_file = None
    stdout = None
    if log_path is not None:
        log_path = Path(log_path)
        log_file = open(log_path, "w")  # closed by NodeProcess.stop
        stdout = log_file
    child_env = ros_environment(env)
    child_env[PARENT_PID_ENV] = str(os.getpid())
    popen = subprocess.Popen(
        command,
        env=child_env,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout else None,
        start_new_session=True,
    )
    return NodeProcess(popen, command, Path(log_path) if log_path else None, log_file)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="objembed-launch",
        description="Run the objembed_ros grounding node (the pip-side equivalent of "
        "`ros2 launch objembed_ros objembed.launch.py`).",
    )
    parser.add_argument("--params", default=str(default_params_file()),
                        help="parameters YAML (default: the shipped config/params.yaml)")
    parser.add_argument("--namespace", default=None)
    parser.add_argument("--name", default=None, help="node name (default grounding_node)")
    parser.add_argument("-r", "--remap", action="append", default=[], metavar="FROM:=TO")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE")
    parser.add_argument("--no-shm", action="store_true",
                        help="do not use the shipped Fast DDS shared-memory profile")
    parser.add_argument("--log-level", default=None)
    args = parser.parse_args(argv)

    def pairs(items: list[str], what: str) -> dict[str, str]:
        out = {}
        for item in items:
            if ":=" not in item:
                parser.error(f"{what} {item!r} is not NAME:=VALUE")
            key, value = item.split(":=", 1)
            out[key] = value
        return out

    env = ros_environment(use_shm_profile=not args.no_shm)
    proc = start_node(
        params_file=args.params, parameters=pairs(args.param, "parameter"),
        remappings=pairs(args.remap, "remapping"), namespace=args.namespace, name=args.name,
        env=env, log_level=args.log_level,
    )
    return supervise(proc)


def supervise(proc: NodeProcess, grace: float = STOP_GRACE_S) -> int:
    """Wait for the node; forward SIGINT/SIGTERM/SIGHUP to it (handlers installed explicitly,
    since a background job of a non-interactive shell starts with SIGINT ignored) and SIGKILL
    it when it has not ended `grace` seconds after the first signal. Returns its exit code
    (128 + signal number when a signal ended it)."""
    first_signal: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        if not first_signal:
            first_signal.append(time.monotonic())
        if proc.alive():
            proc.popen.send_signal(signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            code = proc.popen.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            if first_signal and time.monotonic() - first_signal[0] > grace:
                proc.popen.kill()
    if proc._log_file is not None:
        proc._log_file.close()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())

"""The node's /diagnostics status: state, model, rates, drops, latencies, rejected inputs,
service failures, frame processing errors (ERROR while frames keep failing), and transport
health per camera (expected vs received frame rate from the images' header stamps, WARN
naming the likely cause when most frames are lost)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from objembed_ros.core.stats import transport_cause
from objembed_ros.ros.inputs import shared_memory_profile

if TYPE_CHECKING:
    from objembed_ros.ros.node import GroundingNode


def transport_values(node: GroundingNode, now: float) -> tuple[dict[str, str], list[str]]:
    """Per-camera rate keys, and one warning per camera that loses most of its frames."""
    values: dict[str, str] = {}
    warnings: list[str] = []
    shm = shared_memory_profile()
    for topic, cam in list(node.inputs.cameras.items()):
        health = cam.transport.health(now)
        values[f"{topic}: rate_in_hz"] = f"{cam.rate_in.rate(now):.2f}"
        values[f"{topic}: rate_expected_hz"] = f"{health.expected_hz:.2f}"
        values[f"{topic}: frames_lost_percent"] = f"{100 * health.lost_fraction:.1f}"
        values[f"{topic}: rate_encoded_hz"] = f"{cam.rate_encoded.rate(now):.2f}"
        values[f"{topic}: frames_encoded"] = str(cam.rate_encoded.total)
        values[f"{topic}: qos_reliability"] = "reliable" if cam.reliable else "best_effort"
        if health.mostly_lost:
            cause = transport_cause(cam.reliable, cam.transport.frame_bytes, shm)
            warnings.append(f"{topic}: {health.received_hz:.1f} of ~{health.expected_hz:.1f} "
                            f"frames/s arrive ({100 * health.lost_fraction:.0f}% lost); "
                            f"likely cause: {cause}")
    return values, warnings


def node_status(node: GroundingNode) -> DiagnosticStatus:
    """One status with everything an operator asks first."""
    now = time.monotonic()
    grounder = node.grounder
    rejected = node.rejected.snapshot()
    failures = node.processing_errors.state()
    values: dict[str, str] = {
        "state": node.state,
        "model_error": node.model_error,
        "checkpoint": str(node.get_parameter("checkpoint").value),
        "proposer": str(node.get_parameter("proposer").value),
        "projector_backend": grounder.backend if grounder is not None else "",
        "frames_dropped": str(node.mailbox.dropped),
        "rejected_inputs": str(sum(rejected.values())),
        "services_answered": str(node.services_answered),
        "service_failures": str(node.service_failures.total()),
        "calls_waiting": str(node.handlers.calls_in_flight),
        "standing_queries": str(len(node.standing)),
        "frame_consumer_errors": str(node.consumer_errors.total()),
        "processing_errors": str(failures.total),
        "processing_errors_in_a_row": str(failures.in_a_row),
        "last_processing_error": failures.last,
        "shared_memory_profile": str(shared_memory_profile()).lower(),
    }
    transport, warnings = transport_values(node, now)
    values.update(transport)
    for key, n in sorted(rejected.items()):
        values[f"rejected {key}"] = str(n)
    for key, n in sorted(node.service_failures.snapshot().items()):
        values[f"service_failure {key}"] = str(n)
    for name, window in (("encode", node.encode_latency), ("frame", node.frame_latency),
                         ("node_overhead", node.overhead_latency),
                         ("service", node.service_latency)):
        for q, ms in window.percentiles_ms().items():
            values[f"{name}_latency_{q}_ms"] = f"{ms:.3f}"
    if grounder is not None:
        values["frames_cached"] = str(len(grounder.frames))
        for k, v in grounder.text_cache_stats().items():
            values[f"text_cache_{k}"] = str(v)
    if node.memory is not None:
        values.update(node.memory.status())
    if node.model_error:
        level, message = DiagnosticStatus.ERROR, f"{node.state}: {node.model_error}"
    elif failures.failing:
        level, message = DiagnosticStatus.ERROR, (
            f"frames keep failing: {failures.in_a_row} in a row; last: {failures.last}")
    elif node.state != "active":
        level, message = DiagnosticStatus.WARN, node.state
    elif warnings:
        level, message = DiagnosticStatus.WARN, "; ".join(warnings)
    elif rejected:
        level, message = DiagnosticStatus.WARN, f"active, {sum(rejected.values())} " \
                                                "inputs rejected"
    else:
        level, message = DiagnosticStatus.OK, "active"
    status = DiagnosticStatus(level=level, name=f"objembed_ros: {node.get_name()}",
                              message=message, hardware_id=values["checkpoint"])
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return status

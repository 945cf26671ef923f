"""Tracking and lock-on as the grounding node runs them (tracking_enabled): the worker tracks
each frame's standing and locked queries, the ~/lock_on action advances on the tracked frame,
and a tracking parameter change, deactivate, cleanup or an error drop the tracks or abort the
locks. The rules are core/tracking.py (Tracking, Lock) and the action ros/lock_on.py
(LockOnServer); this is only their wiring inside the node."""
from __future__ import annotations

import threading
from typing import Any

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode

from objembed_ros.core.tracking import TrackedFrame, TrackerParams, Tracking
from objembed_ros.grounder import CachedFrame, GroundingResult
from objembed_ros.ros import params
from objembed_ros.ros.lock_on import LockOnServer

# Parameters whose change resets the tracks and aborts running locks.
TRACKING_PARAMETERS = (
    "tracking_enabled", "track_confirm_hits", "track_max_coast", "track_min_iou",
    "track_min_cosine", "track_reid_min_cosine", "track_iou_weight", "lock_lost_after",
    "lock_reacquire_min_cosine", "lock_max_goals",
)


def tracker_params(v: dict[str, Any]) -> TrackerParams:
    """The tracker's association parameters from the node's track_* parameters."""
    return TrackerParams(confirm_hits=v["track_confirm_hits"], max_coast=v["track_max_coast"],
                         min_iou=v["track_min_iou"], min_cosine=v["track_min_cosine"],
                         reid_min_cosine=v["track_reid_min_cosine"],
                         iou_weight=v["track_iou_weight"])


class NodeTracking:
    """Owns the node's tracks (core Tracking) and its ~/lock_on server (LockOnServer)."""

    def __init__(self, node: LifecycleNode) -> None:
        self.node = node
        values = params.values(node)
        self._lock = threading.Lock()  # worker's update vs a parameter reset or deactivate
        self.tracks = Tracking(tracker_params(values))
        self.lock_on = LockOnServer(
            node, ReentrantCallbackGroup(), cameras=lambda: list(node.inputs.cameras),
            unavailable=self._unavailable,
            default_lost_after=values["lock_lost_after"],
            reacquire_min_cosine=values["lock_reacquire_min_cosine"],
            max_locks=values["lock_max_goals"])

    def enabled(self) -> bool:
        return bool(self.node.get_parameter("tracking_enabled").value)

    def _unavailable(self) -> str:
        """Why a ~/lock_on goal cannot run now ("" when it can)."""
        if not self.enabled():
            return "tracking disabled (parameter tracking_enabled)"
        refusal = self.node.refusal()
        return refusal[1] if refusal is not None else ""

    def parameters_changed(self, names: list[str]) -> None:
        """After a parameter change: when it touches tracking, drop every track (ids stay
        unique) and abort the locks (they follow old tracks)."""
        if not any(n in TRACKING_PARAMETERS for n in names):
            return
        values = params.values(self.node)
        with self._lock:
            self.tracks.reset(tracker_params(values))
        self.lock_on.default_lost_after = float(values["lock_lost_after"])
        self.lock_on.reacquire_min_cosine = float(values["lock_reacquire_min_cosine"])
        self.lock_on.max_locks = int(values["lock_max_goals"])
        self.lock_on.abort_all("tracking parameters changed")

    def locked_queries(self, camera: str, standing: list[str]) -> list[str]:
        """Queries of running locks on `camera` that are not standing ([] when disabled):
        the worker grounds them too, but does not publish them."""
        if not self.enabled():
            return []
        return [q for q in self.lock_on.queries(camera) if q not in standing]

    def track(self, camera: str, frame: CachedFrame,
              results: list[GroundingResult]) -> TrackedFrame | None:
        """Track this frame's results (standing + locked queries); None when disabled."""
        if not self.enabled():
            return None
        with self._lock:
            return self.tracks.update(camera, frame.stamp_ns, results, frame.object_embeddings)

    def reset(self) -> None:
        """Drop every track, keeping the parameters (frames after a pause start fresh)."""
        with self._lock:
            self.tracks.reset()

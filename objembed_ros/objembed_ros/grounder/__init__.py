"""objembed_ros.grounder: the session the node, the CLI and the replay tool share.

``build``: GrounderConfig -> encoder + proposer + accel hooks. ``session``: the Grounder
(encode_frame, ground, ground_boxes, find_frames; holds the model lock and the caches).
``lock``: the model lock that puts request passes before frame passes. No ROS, no torch
on import.
"""
from objembed_ros.core.errors import InputError, ModelBusy, ModelFailure, ModelNotReady
from objembed_ros.core.results import FrameMatchResult, GroundedBox, GroundingResult
from objembed_ros.grounder.build import DTYPES, PROPOSERS, GrounderConfig
from objembed_ros.grounder.session import (
    TARGET_IMAGE,
    TARGET_OBJECT,
    CachedFrame,
    Grounder,
    GrounderBusy,
    add_positions,
)

__all__ = [
    "DTYPES", "PROPOSERS", "TARGET_IMAGE", "TARGET_OBJECT", "CachedFrame", "FrameMatchResult",
    "GroundedBox", "Grounder", "GrounderBusy", "GrounderConfig", "GroundingResult",
    "InputError", "ModelBusy", "ModelFailure", "ModelNotReady", "add_positions",
]

"""objembed_ros: ground language queries in camera images with ObjEmbed.

The public API is exported lazily so that ``import objembed_ros.core`` (numpy only) does not
pull in torch, and nothing here imports rclpy.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "ObjEmbedEncoder": "objembed_ros.encoder.model",
    "EncodedFrame": "objembed_ros.encoder.model",
    "CheckpointError": "objembed_ros.encoder.checkpoint",
    "InputError": "objembed_ros.core.errors",
    "LogitParams": "objembed_ros.core.scoring",
    "grounding_scores": "objembed_ros.core.scoring",
    "image_scores": "objembed_ros.core.scoring",
    "Grounder": "objembed_ros.grounder",
    "GrounderConfig": "objembed_ros.grounder",
    "GridProposer": "objembed_ros.proposals.base",
    "WeDetectProposer": "objembed_ros.proposals.wedetect",
    "WeDetectCheckpointError": "objembed_ros.proposals.wedetect_keys",
    "Proposals": "objembed_ros.proposals.base",
    "Proposer": "objembed_ros.proposals.base",
    "SuppliedBoxesProposer": "objembed_ros.proposals.base",
    "WholeImageProposer": "objembed_ros.proposals.base",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'objembed_ros' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

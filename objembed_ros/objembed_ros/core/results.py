"""Plain result types shared by the Grounder, the CLI and the ROS conversion (numpy only).

Boxes are xyxy in source-image pixels (pixel k covers [k, k+1)); scores follow
objembed-spec.md section 6: score = similarity * iou.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from objembed_ros.core.depth import Position3D

QUERY_TEXT = "text"
QUERY_IMAGE = "image"


@dataclass(frozen=True)
class GroundedBox:
    """One scored box for one query."""

    box: tuple[float, float, float, float]
    score: float  # similarity * iou, in [0, 1]
    similarity: float  # sigmoid(cos * exp(logit_log_scale) + logit_bias)
    iou: float  # sigmoid(iou_logit): predicted IoU of the box with its object
    cosine: float  # raw cosine of query and object embeddings
    proposal_index: int  # index in the frame's proposals; -1 for a supplied box
    proposal_score: float = math.nan  # the proposal source's confidence; NaN if none
    position: Position3D | None = None  # None: 3D not attempted for this result
    track_id: int = -1  # core.tracking: confirmed track of a standing query; -1 not tracked
    supplied_index: int = -1  # row in the boxes given to Grounder.ground_boxes; -1 otherwise


@dataclass(frozen=True)
class GroundingResult:
    """The objects of one frame that match one query, best first."""

    query: str
    query_type: str  # QUERY_TEXT or QUERY_IMAGE
    camera: str
    stamp_ns: int
    image_size: tuple[int, int]  # (W, H)
    num_candidates: int  # boxes scored, before top_k / min_score
    objects: list[GroundedBox] = field(default_factory=list)
    image_score: float = math.nan  # whole-frame match of the query; NaN when not computed
    meta: Any = None  # the frame's opaque metadata (the node keeps the source header here)


@dataclass(frozen=True)
class FrameMatchResult:
    """How well one cached frame matches an image-level query."""

    camera: str
    stamp_ns: int
    cosine: float
    score: float
    meta: Any = None

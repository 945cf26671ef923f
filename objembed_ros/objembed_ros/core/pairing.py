"""Pairing rules for the node's inputs (no ROS): which depth image and which external
proposals belong to a colour frame.

- Stamps pair when they differ by at most `sync_slop` seconds (one camera driver stamps colour
  and depth (nearly) equally; message_filters is not on pip).
- External proposals name the image topic they were found in (`camera`); an empty name
  matches any camera.
- A colour frame waits (newest wins) until proposals with a matching stamp arrive; it is then
  handed to the worker with them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from objembed_ros.core.depth import STATUS_NO_DEPTH, STATUS_STALE_DEPTH
from objembed_ros.core.frames import PAIR_EMPTY, PAIR_OK, StampBuffer

I = TypeVar("I")  # noqa: E741 - image item
P = TypeVar("P")  # proposals item


def slop_ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))


def camera_matches(declared: str, camera: str) -> bool:
    """Whether proposals declared for `declared` (resolved topic; "" = any) fit `camera`."""
    return not declared or declared == camera


def depth_status(pair_status: str) -> str:
    """GroundedObject.position_status for a frame whose depth did not pair."""
    return STATUS_NO_DEPTH if pair_status == PAIR_EMPTY else STATUS_STALE_DEPTH


def pair_newest_image(images: StampBuffer[I], proposals: StampBuffer[P], slop: int,
                      camera: str, declared_camera: Callable[[P], str]
                      ) -> tuple[int, I, P] | None:
    """(stamp, image, proposals) for the camera's newest waiting image when proposals for
    it have arrived; the image buffer is emptied then (older images are worth nothing)."""
    latest = images.latest()
    if latest is None:
        return None
    stamp, image = latest
    status, props, _ = proposals.nearest(
        stamp, slop, where=lambda p: camera_matches(declared_camera(p), camera))
    if status != PAIR_OK or props is None:
        return None
    images.clear()
    return stamp, image, props

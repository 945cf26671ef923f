"""Markers and overlay drawing from GroundedObjectArray messages."""
from __future__ import annotations

import numpy as np
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from objembed_msgs.msg import GroundedObject, GroundedObjectArray
from objembed_ros.ros.viz import clear_markers, colour, draw_overlay, markers_for


def sample_arrays() -> list[GroundedObjectArray]:
    header = Header(frame_id="cam_optical")
    header.stamp.sec = 3
    with_3d = GroundedObject(x1=10.0, y1=20.0, x2=110.0, y2=90.0, score=0.8, label="mug",
                             position_valid=True)
    with_3d.position.x, with_3d.position.y, with_3d.position.z = 0.1, -0.2, 1.5
    with_3d.size.x, with_3d.size.y, with_3d.size.z = 0.2, 0.15, 0.0
    without = GroundedObject(x1=200.0, y1=100.0, x2=300.0, y2=200.0, score=0.3, label="mug")
    other = GroundedObject(x1=0.0, y1=0.0, x2=64.0, y2=48.0, score=0.1, label="person")
    return [GroundedObjectArray(header=header, query="mug", objects=[with_3d, without]),
            GroundedObjectArray(header=header, query="person", objects=[other])]


def test_markers_only_for_valid_3d() -> None:
    arrays = sample_arrays()
    out = markers_for(arrays, lifetime_s=0.5)
    first, cube, text = out.markers
    assert first.action == Marker.DELETEALL
    assert cube.type == Marker.CUBE and text.type == Marker.TEXT_VIEW_FACING
    assert cube.header == arrays[0].header  # source image header kept
    assert cube.pose.position.z == 1.5 and cube.scale.z >= 0.01  # zero depth spread padded
    assert cube.lifetime.sec == 0 and cube.lifetime.nanosec == 500_000_000
    assert text.text == "mug 0.80"
    assert len(markers_for(arrays, 1.0, delete_all=False).markers) == 2
    assert clear_markers().markers[0].action == Marker.DELETEALL


def test_overlay_draws_boxes_in_query_colours(photo: np.ndarray) -> None:
    rgb = photo[:240, :320].copy()
    out = draw_overlay(rgb, sample_arrays())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(rgb, photo[:240, :320])  # input untouched
    changed = np.any(out != rgb, axis=2)
    assert changed[50, 10] and changed[150, 299]  # left edge of box 1, right edge of box 2
    assert not changed[150, 250]  # inside box 2, away from the label
    assert tuple(out[50, 10]) == colour(0)


def test_overlay_is_the_core_renderer(photo: np.ndarray) -> None:
    """The node's debug image is core.overlay's drawing of the same boxes and labels."""
    from objembed_ros.core.overlay import OverlayBox
    from objembed_ros.core.overlay import draw_overlay as render

    rgb = photo[:240, :320].copy()
    expected = render(rgb, [[OverlayBox((10.0, 20.0, 110.0, 90.0), "mug 0.80 1.50m"),
                             OverlayBox((200.0, 100.0, 300.0, 200.0), "mug 0.30")],
                            [OverlayBox((0.0, 0.0, 64.0, 48.0), "person 0.10")]])
    np.testing.assert_array_equal(draw_overlay(rgb, sample_arrays()), expected)

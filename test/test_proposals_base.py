"""Proposal sources without a network: supplied boxes (checked, repaired, clipped, order
kept; none set = no boxes), the whole image as one box, the sliding-window grid; the shared
Proposals/Proposer contract."""
from __future__ import annotations

import numpy as np
import pytest

from objembed_ros import (
    GridProposer,
    InputError,
    Proposals,
    Proposer,
    SuppliedBoxesProposer,
    WholeImageProposer,
)

IMG = np.zeros((100, 200, 3), np.uint8)  # H=100, W=200


def test_whole_image_is_one_box() -> None:
    out = WholeImageProposer().propose(IMG)
    np.testing.assert_array_equal(out.boxes, np.array([[0, 0, 200, 100]], np.float32))
    assert out.image_size == (200, 100) and out.source == "whole_image"
    assert out.scores.dtype == np.float32 and np.isnan(out.scores).all()
    assert out.labels.tolist() == [-1]
    assert isinstance(WholeImageProposer(), Proposer)
    with pytest.raises(InputError):
        WholeImageProposer().propose(np.zeros((0, 3, 3), np.uint8))


def test_grid_is_the_documented_sliding_windows() -> None:
    out = GridProposer().propose(IMG)
    # scale 1: the image; scale 2: 100x50 windows at stride 50x25 -> 3 x 3 of them; ...
    assert out.boxes[0].tolist() == [0, 0, 200, 100]
    assert out.boxes[1:10].tolist() == [[x, y, x + 100, y + 50] for y in (0, 25, 50)
                                        for x in (0, 50, 100)]
    assert isinstance(GridProposer(), Proposer) and np.isnan(out.scores).all()


def test_supplied_boxes_repaired_clipped_and_ordered() -> None:
    boxes = [[50, 60, 10, 20],      # inverted: repaired to (10, 20, 50, 60)
             [-5, -5, 250, 120],    # clipped to the image, [0, W] x [0, H]
             [5, 5, 5, 5]]          # zero area: allowed
    prop = SuppliedBoxesProposer()
    out = prop.propose(IMG, boxes=boxes, scores=[0.2, 0.9, 0.5], labels=[3, 1, 2])
    assert out.boxes.tolist() == [[10, 20, 50, 60], [0, 0, 200, 100], [5, 5, 5, 5]]
    assert out.scores.tolist() == pytest.approx([0.2, 0.9, 0.5])  # caller's order kept
    assert out.labels.tolist() == [3, 1, 2] and out.source == "supplied"
    assert isinstance(prop, Proposer)


def test_supplied_defaults_and_set_boxes() -> None:
    prop = SuppliedBoxesProposer(np.array([[1, 2, 3, 4.5]]))
    out = prop.propose(IMG)
    assert np.isnan(out.scores).all() and out.labels.tolist() == [-1]  # no score given
    nan_score = prop.propose(IMG, boxes=[[0, 0, 1, 1]], scores=[np.nan])  # "no score": kept
    assert np.isnan(nan_score.scores).all()
    prop.set_boxes(None)
    assert len(prop.propose(IMG)) == 0
    # boxes given with the call win over the remembered ones
    prop.set_boxes([[0, 0, 1, 1]])
    assert prop.propose(IMG, boxes=[[0, 0, 9, 9], [1, 1, 2, 2]]).boxes.shape == (2, 4)


@pytest.mark.parametrize("boxes,scores,labels,match", [
    ([[0, 0, np.nan, 4]], None, None, "NaN or inf"),
    ([[0, 0, np.inf, 4]], None, None, "NaN or inf"),
    ([[0, 0, 4]], None, None, "shape"),
    ([[0, 0, 4, 4]], [0.5, 0.4], None, "^1 boxes but 2 box scores$"),
    ([[0, 0, 4, 4]], None, [1.5], "integers"),
    ([[0, 0, 4, 4]], None, [np.nan], "integers"),
    ([["a", 0, 4, 4]], None, None, "numeric"),
])
def test_supplied_bad_input(boxes: object, scores: object, labels: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        SuppliedBoxesProposer().propose(IMG, boxes=boxes, scores=scores, labels=labels)


def test_supplied_max_boxes_and_bad_image() -> None:
    with pytest.raises(InputError, match="max_boxes"):
        SuppliedBoxesProposer(max_boxes=2).propose(IMG, boxes=np.zeros((3, 4)))
    with pytest.raises(InputError):
        SuppliedBoxesProposer().propose(np.zeros((4, 4), np.float64), boxes=[[0, 0, 1, 1]])


def test_proposals_contract() -> None:
    p = Proposals([[0, 0, 1, 1]], [0.5], [2], "x")
    assert p.boxes.dtype == np.float32 and p.labels.dtype == np.int64 and len(p) == 1
    with pytest.raises(ValueError):
        Proposals([[0, 0, 1, 1]], [0.5, 0.4], [2], "x")

"""Replay accuracy: COCO AP/AR (pycocotools) and Acc@0.5 against cases computed by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from objembed_ros.core.errors import InputError
from objembed_ros.replay.metrics import Evaluation, GroundTruth, box_iou_xywh

TOPIC = "/camera/color/image_raw"


def _truth() -> GroundTruth:
    """Image 1 (by stamp): cups A and B; image 2 (by topic + index): plate C. Areas 100,
    100, 400 px: all 'small' in COCO's area ranges."""
    return GroundTruth({
        "images": [{"id": 1, "topic": TOPIC, "stamp_ns": 10},
                   {"id": 2, "topic": TOPIC, "index": 4}],
        "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "plate"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
             "expressions": ["the left cup"]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10],
             "sentences": [{"sent": "the right cup"}]},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20],
             "expressions": ["the plate", "the big plate"]},
        ]})


def test_frames_match_by_stamp_or_topic_and_index() -> None:
    gt = _truth()
    assert gt.image_id(TOPIC, 0, 10) == 1
    assert gt.image_id("/other", 0, 10) is None  # the stamp is given for TOPIC only
    assert gt.image_id(TOPIC, 4, 999) == 2
    assert gt.image_id(TOPIC, 3, 999) is None
    assert [e.text for e in gt.expressions[1]] == ["the left cup", "the right cup"]


def test_coco_ap_ar_match_the_hand_computed_values() -> None:
    """cup: TP 0.9, FP 0.8, TP 0.7 -> precision 1 up to recall 0.5, then 2/3. COCO's
    101-point interpolation: AP = (51 * 1 + 50 * 2/3) / 101. plate: one exact TP, AP 1.
    Matches are exact and the FP overlaps nothing, so every IoU threshold gives the same."""
    ev = Evaluation(_truth())
    ev.add_detections(1, 1, [(0, 0, 10, 10), (50, 50, 60, 60), (20, 20, 30, 30)],
                      [0.9, 0.8, 0.7])
    ev.add_detections(2, 2, [(0, 0, 20, 20)], [0.6])
    stats = ev.summary()["detection"]["stats"]
    ap_cup = (51 * 1.0 + 50 * (2 / 3)) / 101
    expected_ap = (ap_cup + 1.0) / 2
    for key in ("AP", "AP50", "AP75", "AP_small"):
        assert stats[key] == pytest.approx(expected_ap, abs=1e-12), key
    assert stats["AP_medium"] is None and stats["AP_large"] is None  # no such GT: undefined
    # AR@1: the top cup detection finds 1 of 2 cups; the plate is found: (0.5 + 1) / 2
    assert stats["AR1"] == pytest.approx(0.75, abs=1e-12)
    assert stats["AR10"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_only_processed_frames_are_evaluated() -> None:
    """A ground-truth image the replay never reached does not count as missed."""
    ev = Evaluation(_truth())
    ev.add_detections(1, 1, [(0, 0, 10, 10), (20, 20, 30, 30)], [0.9, 0.7])
    out = ev.summary()
    assert out["gt_images_evaluated"] == 1
    assert out["detection"]["stats"]["AP"] == pytest.approx(1.0)  # the plate is not missed


def test_referring_acc_at_half_iou() -> None:
    """IoU 0.6 hit, exactly 0.5 hit (>=), 0.395 miss, no box miss: 2 of 4."""
    gt = _truth()
    ev = Evaluation(gt)
    left, right = gt.expressions[1]
    plate, big_plate = gt.expressions[2]
    ev.add_referring(1, left, (0, 0, 10, 6))  # 60 / 100
    ev.add_referring(1, right, (20, 20, 30, 25))  # 50 / 100
    ev.add_referring(2, plate, (0, 0, 20, 7.9))  # 158 / 400
    ev.add_referring(2, big_plate, None)
    ref = ev.summary()["referring"]
    assert ref == {"expressions": 4, "hits": 2, "acc@0.5": 0.5}
    assert [r["iou"] for r in ev.referring] == pytest.approx([0.6, 0.5, 0.395, 0.0])


def test_iou_of_disjoint_and_nested_boxes() -> None:
    assert box_iou_xywh((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges
    assert box_iou_xywh((0, 0, 10, 10), (2, 2, 5, 5)) == pytest.approx(25 / 100)


def test_bad_ground_truth_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a COCO-style"):
        GroundTruth({"annotations": []})
    with pytest.raises(InputError, match="neither stamp_ns"):
        GroundTruth({"images": [{"id": 1}]})
    image = {"id": 1, "stamp_ns": 5}
    ann = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}
    cats = [{"id": 1, "name": "cup"}]
    with pytest.raises(InputError, match=r"duplicate annotation ids \[7\]"):
        GroundTruth({"images": [image], "categories": cats,
                     "annotations": [{"id": 7, **ann}, {"id": 7, **ann}]})
    with pytest.raises(InputError, match="duplicate image ids"):
        GroundTruth({"images": [image, image]})
    with pytest.raises(InputError, match="unknown image_id 2"):
        GroundTruth({"images": [image], "categories": cats,
                     "annotations": [{"id": 1, **ann, "image_id": 2}]})
    with pytest.raises(InputError, match="unknown category_id 3"):
        GroundTruth({"images": [image], "categories": cats,
                     "annotations": [{"id": 1, **ann, "category_id": 3}]})
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read ground truth"):
        GroundTruth.load(bad)
    good = tmp_path / "ok.json"
    good.write_text(json.dumps({"images": [{"id": 3, "stamp": {"sec": 1, "nanosec": 5}}]}))
    assert GroundTruth.load(good).image_id("/any", 0, 1_000_000_005) == 3


def test_demo_ground_truth_is_valid() -> None:
    """The README demo's ground truth: 7 annotations with distinct ids, both frame keys."""
    from objembed_ros.testing.recording import START_NS, demo_ground_truth

    gt = GroundTruth(demo_ground_truth(2))
    assert len(gt.dataset["annotations"]) == 7 and gt.has_boxes
    assert gt.image_id(TOPIC, 0, START_NS) == 1 and gt.image_id(TOPIC, 1, 0) == 2
    assert sum(len(v) for v in gt.expressions.values()) == 7

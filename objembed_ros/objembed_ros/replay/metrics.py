"""Accuracy against a COCO-style ground-truth file (no ROS, no torch).

The file is COCO detection JSON with two additions: each image says which recorded frame it
is, and each annotation may carry referring expressions (RefCOCO style)::

    {"images": [{"id": 1, "topic": "/camera/image_raw", "stamp_ns": 1700000000000000000},
                {"id": 2, "topic": "/camera/image_raw", "index": 3}],
     "categories": [{"id": 1, "name": "cup"}],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h],
                      "expressions": ["the red cup on the left"]}]}

An image is matched by its header stamp (``stamp_ns``, or ``stamp: {sec, nanosec}``; with
``topic`` only on that topic) or by ``topic`` + ``index`` (0-based position of the message
among that topic's messages in the recording). Expressions may also be given as RefCOCO's
``"sentences": [{"sent": ...}]``.

Class queries (the category names) are scored with pycocotools' COCOeval (AP, AP50, AP75,
AR@1/10/100, over the matched frames that were processed). Referring expressions are scored
as Acc@0.5: the top-1 box of each expression hits when its IoU with the annotated box is
>= 0.5 (IoU from pycocotools.mask.iou).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.core.errors import InputError

COCO_STATS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
REFER_IOU = 0.5


@dataclass(frozen=True)
class Expression:
    annotation_id: int
    text: str
    box_xywh: tuple[float, float, float, float]


def _expressions(ann: dict[str, Any]) -> list[str]:
    out = [str(e) for e in ann.get("expressions", [])]
    for sent in ann.get("sentences", []):
        text = sent.get("sent") or sent.get("raw") if isinstance(sent, dict) else sent
        if text:
            out.append(str(text))
    return [e for e in (t.strip() for t in out) if e]


def _stamp(image: dict[str, Any]) -> int | None:
    if "stamp_ns" in image:
        return int(image["stamp_ns"])
    stamp = image.get("stamp")
    if isinstance(stamp, dict):
        return int(stamp.get("sec", 0)) * 1_000_000_000 + int(stamp.get("nanosec", 0))
    return None


def _check_ids(source: str, images: list[dict[str, Any]], annotations: list[dict[str, Any]],
               categories: set[int]) -> None:
    """pycocotools indexes by id and silently keeps the last of duplicates: refuse them, and
    annotations that point at no image or category."""
    for kind, items in (("image", images), ("annotation", annotations)):
        ids = [int(x["id"]) for x in items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise InputError(f"{source}: duplicate {kind} ids {dup[:10]}")
    image_ids = {int(x["id"]) for x in images}
    for ann in annotations:
        if int(ann["image_id"]) not in image_ids:
            raise InputError(f"{source}: annotation {ann['id']} has unknown image_id "
                             f"{ann['image_id']}")
        if "category_id" in ann and int(ann["category_id"]) not in categories:
            raise InputError(f"{source}: annotation {ann['id']} has unknown category_id "
                             f"{ann['category_id']}")


class GroundTruth:
    """The ground-truth file, indexed by recorded frame."""

    def __init__(self, dataset: dict[str, Any], source: str = "<dict>") -> None:
        self.source = source
        try:
            images = list(dataset["images"])
            annotations = list(dataset.get("annotations", []))
            categories = list(dataset.get("categories", []))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{source}: not a COCO-style file ({exc!r} missing)") from exc
        self.categories = {int(c["id"]): str(c["name"]) for c in categories}
        self.by_stamp: dict[tuple[str | None, int], int] = {}
        self.by_index: dict[tuple[str, int], int] = {}
        for image in images:
            image_id, topic, stamp = int(image["id"]), image.get("topic"), _stamp(image)
            if stamp is not None:
                self.by_stamp[(topic, stamp)] = image_id
            elif topic is not None and "index" in image:
                self.by_index[(str(topic), int(image["index"]))] = image_id
            else:
                raise InputError(f"{source}: image {image_id} has neither stamp_ns/stamp nor "
                                 "topic + index")
        _check_ids(source, images, annotations, set(self.categories))
        self.expressions: dict[int, list[Expression]] = {}
        for ann in annotations:
            ann.setdefault("iscrowd", 0)
            x, y, w, h = (float(v) for v in ann["bbox"])
            ann.setdefault("area", w * h)
            for text in _expressions(ann):
                self.expressions.setdefault(int(ann["image_id"]), []).append(
                    Expression(int(ann["id"]), text, (x, y, w, h)))
        self.dataset = {"images": [{"id": int(i["id"]), **{k: v for k, v in i.items()
                                                            if k in ("width", "height")}}
                                   for i in images],
                        "annotations": annotations, "categories": categories}
        self.has_boxes = any("category_id" in a for a in annotations) and bool(categories)

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read ground truth {path}: {exc}") from exc
        return cls(data, str(path))

    def image_id(self, topic: str, index: int, stamp_ns: int) -> int | None:
        """The ground-truth image of a recorded frame, or None."""
        for key in ((topic, stamp_ns), (None, stamp_ns)):
            if key in self.by_stamp:
                return self.by_stamp[key]
        return self.by_index.get((topic, index))

    @property
    def num_images(self) -> int:
        return len(self.dataset["images"])


@dataclass
class Evaluation:
    """Detections and referring hits gathered over a replay, scored at the end."""

    truth: GroundTruth
    detections: list[dict[str, Any]] = field(default_factory=list)
    evaluated: set[int] = field(default_factory=set)
    referring: list[dict[str, Any]] = field(default_factory=list)

    def add_detections(self, image_id: int, category_id: int,
                       boxes_xyxy: Sequence[Sequence[float]], scores: Sequence[float]) -> None:
        self.evaluated.add(image_id)
        for (x1, y1, x2, y2), score in zip(boxes_xyxy, scores, strict=True):
            self.detections.append({"image_id": image_id, "category_id": category_id,
                                    "bbox": [float(x1), float(y1), float(x2 - x1),
                                             float(y2 - y1)], "score": float(score)})

    def add_referring(self, image_id: int, expression: Expression,
                      top1_xyxy: Sequence[float] | None) -> None:
        """The top-1 box for one expression (None: no box at all, a miss)."""
        self.evaluated.add(image_id)
        iou = 0.0
        if top1_xyxy is not None:
            x1, y1, x2, y2 = (float(v) for v in top1_xyxy)
            iou = box_iou_xywh((x1, y1, x2 - x1, y2 - y1), expression.box_xywh)
        self.referring.append({"image_id": image_id, "annotation_id": expression.annotation_id,
                               "expression": expression.text, "iou": iou,
                               "hit": bool(iou >= REFER_IOU),
                               "box": None if top1_xyxy is None else [float(v)
                                                                       for v in top1_xyxy]})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ground_truth": self.truth.source,
                               "gt_images": self.truth.num_images,
                               "gt_images_evaluated": len(self.evaluated)}
        if self.referring:
            hits = sum(r["hit"] for r in self.referring)
            out["referring"] = {"expressions": len(self.referring), "hits": hits,
                                "acc@0.5": hits / len(self.referring)}
        if self.truth.has_boxes and self.evaluated:
            out["detection"] = coco_detection_metrics(self.truth.dataset, self.detections,
                                                      sorted(self.evaluated))
        return out


def box_iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xywh boxes (pycocotools.mask.iou)."""
    from pycocotools import mask

    return float(mask.iou(np.asarray([a], np.float64), np.asarray([b], np.float64),
                          [0])[0][0])


def coco_detection_metrics(dataset: dict[str, Any], detections: list[dict[str, Any]],
                           image_ids: Sequence[int]) -> dict[str, Any]:
    """pycocotools COCOeval (bbox) on `image_ids`; undefined values (-1) become None."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(dataset))  # COCO mutates what it indexes
        gt.createIndex()
        if not detections:
            return {"stats": dict.fromkeys(COCO_STATS, 0.0), "detections": 0,
                    "note": "no detections"}
        dt = gt.loadRes(json.loads(json.dumps(detections)))
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: (None if float(v) < 0 else float(v))
             for name, v in zip(COCO_STATS, ev.stats, strict=True)}
    summary = [line for line in printed.getvalue().splitlines() if "Average" in line]
    return {"stats": stats, "detections": len(detections), "summary": summary}

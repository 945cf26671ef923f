"""What every proposal source returns, and the sources that need no network.

Every path to boxes goes through a :class:`Proposer`: WeDetect-Uni (the boxes ObjEmbed was
evaluated with, ``proposals.wedetect``), boxes supplied by the caller or another detector
(:class:`SuppliedBoxesProposer`, re-scored by language downstream; with none set it gives no
boxes: image-level retrieval only), the whole image as ONE box (:class:`WholeImageProposer`)
and a sliding-window grid (:class:`GridProposer`, a proposer-free fallback). numpy only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from objembed_ros.core.boxes import grid_boxes, validate_boxes
from objembed_ros.core.errors import InputError
from objembed_ros.core.image import check_image
from objembed_ros.core.letterbox import DEFAULT_MAX_PIXELS


@dataclass
class Proposals:
    """Object proposals for one image.

    boxes:  (K, 4) float32 ``x1, y1, x2, y2`` in the image's own pixels (pixel k covers
            [k, k+1)), inside [0, W] x [0, H], always finite.
    scores: (K,) float32. WeDetect: the sigmoid score in (0, 1), in decreasing order.
            Supplied boxes: the detector's scores when given (caller's order kept, so row i
            is the caller's box i); NaN where the source has no score (whole image, grid,
            supplied boxes without scores).
    labels: (K,) int64, the WeDetect prompt index (0..255) each row won with; the caller's
            labels for supplied boxes; -1 when there is none. WeDetect rows may repeat a
            box under different labels (official behaviour).
    source: which proposer made them, e.g. ``"wedetect-base"``, ``"supplied"``.
    timings: seconds per stage (keys depend on the source; ``"total"`` always present).
    image_size: (width, height) of the image the boxes refer to.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    source: str
    timings: dict[str, float] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        k = self.boxes.shape[0]
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.scores.shape[0] != k or self.labels.shape[0] != k:
            raise ValueError(f"Proposals: {k} boxes but {self.scores.shape[0]} scores and "
                             f"{self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@runtime_checkable
class Proposer(Protocol):
    """A source of object boxes for one image (HxW[x1|3|4] uint8; InputError otherwise)."""

    name: str

    def propose(self, rgb: np.ndarray) -> Proposals: ...


def _image_size(rgb: np.ndarray, max_pixels: int | None) -> tuple[int, int]:
    """(W, H) of a checked image (InputError for anything that is not one)."""
    height, width = check_image(rgb, max_pixels).shape[:2]
    return width, height


class _ImageGeometryProposer:
    """Boxes that depend only on the image size; no scores (NaN), no labels (-1)."""

    name = ""

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.max_pixels = max_pixels

    def boxes(self, width: int, height: int) -> np.ndarray:
        raise NotImplementedError

    def propose(self, rgb: np.ndarray) -> Proposals:
        t0 = time.perf_counter()
        w, h = _image_size(rgb, self.max_pixels)
        boxes = np.asarray(self.boxes(w, h), np.float32).reshape(-1, 4)
        k = len(boxes)
        return Proposals(boxes, np.full(k, np.nan, np.float32), np.full(k, -1, np.int64),
                         self.name, {"total": time.perf_counter() - t0}, (w, h))


class WholeImageProposer(_ImageGeometryProposer):
    """The whole image as one box ``[0, 0, W, H]``: "how well does the image match", with
    the image's own object embedding and IoU factor (the node's ``proposer: whole_image``).
    For no boxes at all (global embeddings only) use a :class:`SuppliedBoxesProposer`
    with none set."""

    name = "whole_image"

    def boxes(self, width: int, height: int) -> np.ndarray:
        return np.array([[0, 0, width, height]], np.float32)


class GridProposer(_ImageGeometryProposer):
    """Multi-scale sliding windows (``core.boxes.grid_boxes``): a proposer-free fallback,
    much weaker than WeDetect; the CLI uses it when no detector checkpoint is given."""

    name = "grid"

    def boxes(self, width: int, height: int) -> np.ndarray:
        return grid_boxes(width, height)


def _vector(values: object, k: int, dtype: type, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numeric: {exc}") from exc
    if arr.shape[0] != k:
        raise InputError(f"{k} boxes but {arr.shape[0]} {what}")
    if dtype is np.int64 and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        raise InputError(f"{what} must be integers")
    return arr.astype(dtype)


class SuppliedBoxesProposer:
    """Boxes from the caller or another detector, checked and passed on in their order.

    Checks (``objembed_ros.core.boxes.validate_boxes``): (N, 4) xyxy, NaN/inf ->
    :class:`InputError`, inverted corners swapped, clipped to [0, W] x [0, H], at most
    ``max_boxes``. Boxes may be set once (:meth:`set_boxes`) or passed with each
    :meth:`propose` call (which wins); with neither, no boxes. Scores are the caller's
    (NaN = none); labels integers (-1 = none). ``name`` becomes ``Proposals.source``.
    """

    def __init__(self, boxes: object = None, scores: object = None, labels: object = None,
                 *, max_boxes: int = 1000, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str = "supplied") -> None:
        self.name = name
        self.max_boxes = max_boxes
        self.max_pixels = max_pixels
        self._boxes: object = None
        self._scores: object = None
        self._labels: object = None
        self.set_boxes(boxes, scores, labels)

    def set_boxes(self, boxes: object, scores: object = None, labels: object = None) -> None:
        """Remember boxes (and optional detector scores / labels) for later frames."""
        self._boxes, self._scores, self._labels = boxes, scores, labels

    def propose(self, rgb: np.ndarray, boxes: object = None, scores: object = None,
                labels: object = None) -> Proposals:
        t0 = time.perf_counter()
        w, h = _image_size(rgb, self.max_pixels)
        if boxes is None:
            boxes, scores, labels = self._boxes, self._scores, self._labels
        out = validate_boxes(boxes, w, h, max_boxes=self.max_boxes).astype(np.float32)
        k = out.shape[0]
        sc = (np.full(k, np.nan, np.float32) if scores is None
              else _vector(scores, k, np.float32, "box scores"))
        lb = (np.full(k, -1, np.int64) if labels is None
              else _vector(labels, k, np.int64, "labels"))
        return Proposals(out, sc, lb, self.name, {"total": time.perf_counter() - t0}, (w, h))

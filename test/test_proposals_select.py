"""Top-k and per-label NMS (objembed_ros.proposals.select) against literal references:
a per-label greedy loop written out as torchvision's CPU kernel does it (float32), and the
same loop in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from objembed_ros.proposals.select import per_label_nms, topk_candidates


def reference_batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                          thr: float = 0.7, dtype: type = np.float32) -> np.ndarray:
    """Literal per-label greedy NMS (torchvision ``_batched_nms_vanilla`` + CPU ``nms``):
    for each label, walk boxes by decreasing score; a kept box suppresses every later
    box with IoU = inter / (area_i + area_j - inter) > thr. Survivors sorted by score."""
    boxes = boxes.astype(dtype)
    keep_all: list[int] = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        order = idx[np.argsort(-scores[idx], kind="stable")]
        b = boxes[order]
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        suppressed = np.zeros(len(order), dtype=bool)
        for i in range(len(order)):
            if suppressed[i]:
                continue
            keep_all.append(int(order[i]))
            j = np.arange(i + 1, len(order))
            xx1 = np.maximum(b[i, 0], b[j, 0])
            yy1 = np.maximum(b[i, 1], b[j, 1])
            xx2 = np.minimum(b[i, 2], b[j, 2])
            yy2 = np.minimum(b[i, 3], b[j, 3])
            w = np.maximum(dtype(0), xx2 - xx1)
            h = np.maximum(dtype(0), yy2 - yy1)
            inter = w * h
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = inter / (areas[i] + areas[j] - inter)
            # C++ compares the float IoU with the double threshold
            suppressed[j[ovr.astype(np.float64) > thr]] = True
    keep = np.array(keep_all, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def clustered_boxes(n_clusters: int, per_cluster: int, n_labels: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many heavily overlapping boxes (jittered copies around cluster boxes), distinct
    random scores, and exact duplicates of some boxes under other labels."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 600, (n_clusters, 2))
    sizes = rng.uniform(20, 200, (n_clusters, 2))
    c = np.repeat(centres, per_cluster, 0) + rng.normal(0, 6, (n_clusters * per_cluster, 2))
    s = np.repeat(sizes, per_cluster, 0) * rng.uniform(0.85, 1.15, (n_clusters * per_cluster, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)
    labels = rng.integers(0, n_labels, len(boxes))
    dup = rng.choice(len(boxes), len(boxes) // 5, replace=False)
    boxes = np.concatenate([boxes, boxes[dup]])
    labels = np.concatenate([labels, (labels[dup] + 1 + rng.integers(0, n_labels - 1,
                                                                     len(dup))) % n_labels])
    scores = rng.permutation(len(boxes)).astype(np.float32) / len(boxes) + 1e-3
    return boxes, scores, labels


def _ours(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, **kw: object
          ) -> np.ndarray:
    return per_label_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                         torch.from_numpy(labels), 0.7, **kw).numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_literal_greedy_loop(seed: int) -> None:
    boxes, scores, labels = clustered_boxes(60, 40, 6, seed)
    ref = reference_batched_nms(boxes, scores, labels)
    assert 0.05 * len(boxes) < len(ref) < 0.8 * len(boxes)  # NMS really suppresses
    got = _ours(boxes, scores, labels)
    assert np.array_equal(got, ref)
    # first-k variants and tiny chunks (cross-chunk suppression, pair-budget blocks)
    for k in (1, 7, 100, 1000):
        assert np.array_equal(_ours(boxes, scores, labels, max_keep=k), ref[:k])
    small = _ours(boxes, scores, labels, chunk=16, max_chunk=64, pair_budget=50)
    assert np.array_equal(small, ref)
    # the safety net (exact loop after one sweep) gives the same answer
    assert np.array_equal(_ours(boxes, scores, labels, max_sweeps=1, chunk=4096), ref)


def test_float64_reference_agrees_away_from_the_threshold() -> None:
    boxes, scores, labels = clustered_boxes(60, 40, 6, seed=5)
    ref32 = reference_batched_nms(boxes, scores, labels)
    ref64 = reference_batched_nms(boxes, scores, labels, dtype=np.float64)
    assert np.array_equal(_ours(boxes, scores, labels), ref32)
    assert np.array_equal(ref32, ref64)  # random data: no IoU within float32 rounding of 0.7


def test_duplicates_across_labels_are_kept() -> None:
    box = np.array([[10, 10, 50, 60]], np.float32)
    boxes = np.repeat(box, 4, 0)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 1, 1, 2])
    keep = _ours(boxes, scores, labels)
    assert keep.tolist() == [0, 1, 3]  # the same box under labels 0, 1 and 2; 2 suppressed
    assert np.array_equal(keep, reference_batched_nms(boxes, scores, labels))


def test_iou_threshold_boundary() -> None:
    a = [0.0, 0.0, 10.0, 10.0]
    boxes = np.array([
        a, [0, 0, 10, 7],                      # IoU 70/100: float32(0.7), NOT > 0.7 -> kept
        a, [0, 0, 10, 7.0000005],              # next float32 up: IoU > 0.7 -> suppressed
        a, [0, 0, 7, 10],                      # same as the first pair, rotated
        a, [0, 0, 10, 10],                     # identical boxes: IoU 1
        [5, 5, 5, 5], [5, 5, 5, 5],            # zero area: 0/0 = NaN never suppresses
        a, [10, 0, 20, 10],                    # touching: IoU 0
    ], np.float32)
    labels = np.repeat(np.arange(len(boxes) // 2), 2)
    scores = np.linspace(1.0, 0.5, len(boxes)).astype(np.float32)
    keep = _ours(boxes, scores, labels)
    assert np.array_equal(keep, reference_batched_nms(boxes, scores, labels))
    assert set(keep.tolist()) == {0, 1, 2, 4, 5, 6, 8, 9, 10, 11}


def test_near_threshold_pairs_match_float32_reference() -> None:
    """Pairs whose real IoU is 0.7 +- 3e-7 (b is a narrowed copy of a): float32 decides as
    torchvision does; a float64 IoU decides a few percent of them the other way."""
    rng = np.random.default_rng(3)
    n = 4000
    x1, y1 = rng.uniform(0, 500, n), rng.uniform(0, 500, n)
    w, h = rng.uniform(5, 300, n), rng.uniform(5, 300, n)
    t = 0.7 + rng.uniform(-3e-7, 3e-7, n)
    boxes = np.empty((2 * n, 4), np.float32)
    boxes[0::2] = np.stack([x1, y1, x1 + w, y1 + h], 1)
    boxes[1::2] = np.stack([x1, y1, x1 + w * t, y1 + h], 1)
    labels = np.repeat(np.arange(n), 2)
    scores = np.tile(np.array([0.9, 0.8], np.float32), n)
    keep = _ours(boxes, scores, labels)
    ref32 = reference_batched_nms(boxes, scores, labels)
    ref64 = reference_batched_nms(boxes, scores, labels, dtype=np.float64)
    assert np.array_equal(keep, ref32)
    assert 0.2 * n < len(keep) - n < 0.8 * n  # both outcomes well represented
    n_diff = len(set(ref32.tolist()) ^ set(ref64.tolist()))
    assert 0 < n_diff < 0.1 * n  # float64 would decide these differently (259 of 4000)


def test_long_suppression_chain_uses_exact_fallback() -> None:
    """Boxes 10 px wide sliding by 1 px: each overlaps the next above 0.7 but not the one after, so
    greedy keeps every other box and the fixed point needs many sweeps."""
    n = 200
    x = np.arange(n, dtype=np.float32)
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10)], 1).astype(np.float32)
    scores = np.linspace(1, 0.1, n).astype(np.float32)
    labels = np.zeros(n, np.int64)
    ref = reference_batched_nms(boxes, scores, labels)
    assert ref.tolist() == list(range(0, n, 2))
    assert np.array_equal(_ours(boxes, scores, labels, max_sweeps=4), ref)
    assert np.array_equal(_ours(boxes, scores, labels, max_sweeps=1000), ref)


def test_nms_empty_and_single() -> None:
    z = np.zeros((0, 4), np.float32)
    assert _ours(z, np.zeros(0, np.float32), np.zeros(0, np.int64)).shape == (0,)
    one = np.array([[1, 2, 3, 4]], np.float32)
    assert _ours(one, np.ones(1, np.float32), np.zeros(1, np.int64)).tolist() == [0]


def test_topk_candidates_matches_flatten_sort_reference() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((500, 16)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = 0.0   # not > 0: never candidates
    scores[3, 4] = np.nan                            # NaN: never a candidate
    vals, anchors, labels = topk_candidates(torch.from_numpy(scores), k=1000)
    flat = scores.reshape(-1)
    valid = np.flatnonzero(flat > 0)
    order = valid[np.argsort(-flat[valid], kind="stable")][:1000]
    assert np.array_equal(vals.numpy(), flat[order])
    assert set(zip(anchors.tolist(), labels.tolist(), strict=True)) == {
        (int(i) // 16, int(i) % 16) for i in order}
    # k larger than the valid entries: all valid ones, none of the zeros or the NaN
    vals, anchors, labels = topk_candidates(torch.from_numpy(scores), k=10**6)
    assert len(vals) == len(valid) and bool((vals > 0).all())
    assert (3, 4) not in set(zip(anchors.tolist(), labels.tolist(), strict=True))

"""ObjectMemory.recall against a float64 brute force written here, on memories of a few
thousand entries built by load, observe, delete and eviction (rows moved and reused).

Two kinds of embeddings:
- +-1 vectors (unit rows of +-1/32 in 1024-d): every cosine is a multiple of 1/1024, exact in
  float32 and float64, so the ranking must match the reference bit for bit, including the many
  exact ties (broken by id);
- Gaussian vectors: top-k ids and order must match (the reference's top-k gaps are checked to
  be far above float32 rounding, so the comparison is meaningful).
Sizes cover a scan of the whole matrix on one thread and through BLAS, rows picked from a full
scan (a camera filter) and rows copied out (a narrow time window).
"""
from __future__ import annotations

import numpy as np
import pytest

from objembed_ros.core.memory import MemoryConfig, ObjectEntry, ObjectMemory, Sighting

DIM = 1024
CAMERAS = ("a", "b", "c", "d")
SCALE, BIAS = 2.3, -5.0  # exp(2.3) ~ 10: scores spread over (7e-3, 0.99), no saturation


def reference(records: dict[int, tuple[np.ndarray, str, int]], query: np.ndarray, *,
              camera: str = "", since_ns: int = 0, until_ns: int = 0, top_k: int = 0,
              min_score: float = 0.0, max_results: int = 0
              ) -> list[tuple[int, float, float]]:
    """(id, score, cosine), best first, ties by id: every matching entry scored in float64."""
    q = np.asarray(query, np.float64)
    q = q / np.linalg.norm(q)
    out = []
    for i, (emb, cam, seen) in records.items():
        if camera and cam != camera:
            continue
        if (since_ns and seen < since_ns) or (until_ns and seen > until_ns):
            continue
        e = np.asarray(emb, np.float64)
        cos = float(e @ q / np.linalg.norm(e))
        score = 1.0 / (1.0 + np.exp(-(cos * np.exp(SCALE) + BIAS)))
        if score >= min_score:
            out.append((i, score, cos))
    out.sort(key=lambda r: (-r[2], r[0]))  # score rises with cosine (no saturation here)
    limits = [v for v in (top_k, max_results) if v > 0]
    return out[:min(limits)] if limits else out


def build(n: int, vectors: np.ndarray, rng: np.random.Generator
          ) -> tuple[ObjectMemory, dict[int, tuple[np.ndarray, str, int]]]:
    """A memory of n entries: 1.2 n loaded (load evicts down to n), n // 20 deleted, n // 10
    observed as new entries (far apart: no merges), evicting n // 20 more.
    Returns it and the test's own record of each live entry: embedding, camera, last seen."""
    cfg = MemoryConfig(max_entries=n, max_per_frame=n)
    mem = ObjectMemory(cfg)
    loaded = int(1.2 * n)
    seen = rng.integers(1, 10**6, loaded + n // 10) * 1000
    records: dict[int, tuple[np.ndarray, str, int]] = {}
    entries = []
    for k in range(loaded):
        cam = CAMERAS[int(rng.integers(0, 4))]
        records[k + 1] = (vectors[k], cam, int(seen[k]))
        entries.append(ObjectEntry(
            id=k + 1, embedding=vectors[k], camera=cam, frame_id="f", label="",
            first_seen_ns=1, last_seen_ns=int(seen[k]), hits=int(rng.integers(1, 5)),
            box=(0.0, 0.0, 1.0, 1.0), image_size=(10, 10), best_iou=0.5))
    mem.load(entries)
    deleted = rng.choice(sorted(e.id for e in mem.entries()), n // 20, replace=False)
    assert sorted(mem.delete(int(i) for i in deleted)) == sorted(int(i) for i in deleted)
    # seen last (but with 1 hit): loaded entries of 1 hit are evicted before them
    stamp = 2 * 10**9
    sightings = []
    for k in range(loaded, loaded + n // 10):
        cam = CAMERAS[k % 4]
        sightings.append(Sighting(
            embedding=vectors[k] * 3.0, box=(0.0, 0.0, 1.0, 1.0), iou=0.9, camera=cam,
            stamp_ns=stamp, image_size=(10, 10), position=(10.0 * k, 0.0, 0.0),
            position_frame="map", fixed=True))
    changes = mem.observe(sightings)
    assert len(changes.deletes) == n // 20
    for e, k in zip(changes.upserts, range(loaded, loaded + n // 10), strict=True):  # no merges
        records[e.id] = (vectors[k], CAMERAS[k % 4], stamp)
    live = {e.id for e in mem.entries()}
    assert len(live) == n
    return mem, {i: r for i, r in records.items() if i in live}


def requests(records: dict[int, tuple[np.ndarray, str, int]]) -> list[dict]:
    stamps = np.sort([seen for _, _, seen in records.values()])
    lo, hi = int(stamps[len(stamps) // 3]), int(stamps[2 * len(stamps) // 3])
    narrow = int(stamps[len(stamps) // 2 + len(stamps) // 20])  # 5% of the entries from mid
    mid = int(stamps[len(stamps) // 2])
    out: list[dict] = []
    for top_k in (0, 10):
        out += [dict(top_k=top_k), dict(top_k=top_k, camera="b"),
                dict(top_k=top_k, since_ns=lo), dict(top_k=top_k, until_ns=hi),
                dict(top_k=top_k, since_ns=lo, until_ns=hi),
                dict(top_k=top_k, since_ns=mid, until_ns=narrow),
                dict(top_k=top_k, camera="c", since_ns=mid, until_ns=narrow),
                dict(top_k=top_k, camera="d", until_ns=hi, min_score=0.02),
                dict(top_k=top_k, min_score=0.05, max_results=25)]
    out += [dict(max_results=7), dict(camera="nobody"), dict(since_ns=int(stamps[-1]) + 1)]
    return out


def check(mem: ObjectMemory, records: dict, query: np.ndarray, req: dict, exact: bool) -> None:
    hits = mem.recall(query, SCALE, BIAS, **req)
    ref = reference(records, query, **req)
    assert [h.entry.id for h in hits] == [i for i, _, _ in ref], req
    tol = 0.0 if exact else 1e-5
    np.testing.assert_allclose([h.cosine for h in hits], [c for _, _, c in ref], atol=tol)
    np.testing.assert_allclose([h.score for h in hits], [s for _, s, _ in ref],
                               rtol=1e-12 if exact else 1e-5)
    for h in hits[:20]:  # the entry is the one whose row was scored
        emb, cam, seen = records[h.entry.id]
        np.testing.assert_allclose(h.entry.embedding, emb / np.linalg.norm(emb), atol=1e-6)
        assert (h.entry.camera, h.entry.last_seen_ns) == (cam, seen)


@pytest.mark.parametrize("n", [500, 3000])  # 0.5M matrix elements (one thread), 3M (BLAS)
def test_recall_matches_float64_brute_force_exactly_with_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = rng.choice([-1.0, 1.0], (2 * n, DIM)).astype(np.float32)
    mem, records = build(n, vectors, rng)
    for _ in range(3):
        query = rng.choice([-1.0, 1.0], DIM)
        for req in requests(records):
            check(mem, records, query, req, exact=True)
    # ties do occur: the id order among equal cosines is part of what was compared
    cos = np.array([r[0] for r in records.values()], np.float64) @ query
    assert len(np.unique(cos)) < len(cos) / 4


@pytest.mark.parametrize("n", [500, 3000])
def test_recall_top_k_matches_float64_brute_force(n: int) -> None:
    rng = np.random.default_rng(n + 1)
    vectors = rng.standard_normal((2 * n, DIM)).astype(np.float32)
    mem, records = build(n, vectors, rng)
    ids = list(records)
    for _ in range(3):
        target = vectors[ids[int(rng.integers(0, len(ids)))] - 1].astype(np.float64)
        query = target / np.linalg.norm(target) + rng.standard_normal(DIM) / np.sqrt(DIM)
        for req in requests(records):
            if req.get("top_k") != 10:
                continue  # a whole ranking has neighbours closer than float32 rounding
            # the comparison means something: the reference's top 11 are clearly apart
            ranked = reference(records, query, **{**req, "top_k": 0})
            gaps = -np.diff([c for _, _, c in ranked[:11]])
            assert (gaps > 1e-5).all(), "near tie within float32 rounding: change the seed"
            check(mem, records, query, req, exact=False)

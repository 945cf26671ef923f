"""Object memory (core/memory.py): selection, merging, fusion, positions, eviction, recall,
checked against hand-computed values."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from objembed_ros.core.memory import (
    MemoryConfig,
    ObjectMemory,
    Sighting,
    labels_by_proposal,
    make_crop,
    select_proposals,
)
from objembed_ros.core.results import GroundedBox, GroundingResult

E = np.eye(4, dtype=np.float32)


def sight(emb, box=(10, 10, 50, 50), camera="cam", stamp=1_000, pos=None, fixed=True,
          iou=0.9, label="", frame="map"):
    return Sighting(embedding=np.asarray(emb, np.float32), box=tuple(map(float, box)),
                    iou=iou, camera=camera, stamp_ns=stamp, image_size=(100, 100),
                    frame_id="cam_optical", position=pos,
                    position_frame=frame if pos is not None else "", fixed=fixed, label=label)


def test_select_proposals_threshold_order_and_cap():
    # sigmoid: 0 -> 0.5, 2 -> 0.881, -1 -> 0.269, 1 -> 0.731
    logits = np.array([0.0, 2.0, -1.0, 1.0])
    assert select_proposals(logits, 0.5, 10).tolist() == [1, 3, 0]
    assert select_proposals(logits, 0.5, 2).tolist() == [1, 3]
    assert select_proposals(logits, 0.9, 10).tolist() == []


def test_fused_embedding_is_renormalised_running_mean():
    mem = ObjectMemory(MemoryConfig(merge_cosine=0.5))
    mem.observe([sight([2, 0, 0, 0], stamp=1)])
    ch = mem.observe([sight([0.6, 0.8, 0, 0], stamp=2)])  # cos 0.6: merges
    assert len(mem) == 1 and ch.upserts[0].hits == 2
    # normalise(1 * [1, 0] + [0.6, 0.8]) = [1.6, 0.8] / sqrt(3.2)
    np.testing.assert_allclose(ch.upserts[0].embedding[:2], [0.894427191, 0.4472135955],
                               atol=1e-6)
    ch = mem.observe([sight([1, 0, 0, 0], stamp=3)])
    # normalise(2 * [0.894427, 0.447214] + [1, 0]) = [2.788854, 0.894427] / 2.928773
    np.testing.assert_allclose(ch.upserts[0].embedding[:2], [0.9522263, 0.3053932], atol=1e-6)
    e = ch.upserts[0]
    assert (e.hits, e.first_seen_ns, e.last_seen_ns) == (3, 1, 3)


def test_fuse_history_caps_the_weight():
    mem = ObjectMemory(MemoryConfig(merge_cosine=0.0, fuse_history=1))
    mem.observe([sight([1, 0, 0, 0], stamp=1)])
    mem.observe([sight([1, 0, 0, 0], stamp=2)])
    ch = mem.observe([sight([0, 1, 0, 0], stamp=3)])  # weight min(2, 1) = 1: [1, 1] / sqrt 2
    np.testing.assert_allclose(ch.upserts[0].embedding[:2], [1 / math.sqrt(2)] * 2, atol=1e-6)


def test_position_mean_and_stddev_in_fixed_frame():
    mem = ObjectMemory(MemoryConfig(merge_distance_m=0.5))
    for t, p in enumerate([(1.0, 0.0, 0.0), (1.2, 0.0, 0.0), (1.1, 0.3, 0.0)]):
        mem.observe([sight(E[0], stamp=t + 1, pos=p, box=(0, 0, 10, 10 + 40 * t))])
    (e,) = mem.entries()
    assert e.hits == 3 and e.position_count == 3 and e.position_frame == "map"
    np.testing.assert_allclose(e.position_mean, (1.1, 0.1, 0.0), atol=1e-12)
    # population stddev: x sqrt(0.02 / 3), y sqrt(0.06 / 3)
    np.testing.assert_allclose(e.position_stddev, (0.0816496581, 0.1414213562, 0.0), atol=1e-9)


def test_far_position_makes_a_new_entry_even_with_same_embedding():
    mem = ObjectMemory(MemoryConfig(merge_distance_m=0.3))
    mem.observe([sight(E[0], stamp=1, pos=(0.0, 0.0, 0.0))])
    mem.observe([sight(E[0], stamp=2, pos=(0.31, 0.0, 0.0))])
    mem.observe([sight(E[0], stamp=3, pos=(0.0, 0.29, 0.0))])
    assert sorted(e.hits for e in mem.entries()) == [1, 2]


def test_camera_frame_gating_by_camera_iou_and_window():
    cfg = MemoryConfig(merge_box_iou=0.5, merge_window_ns=100)
    mem = ObjectMemory(cfg)
    mem.observe([sight(E[0], box=(0, 0, 10, 10), stamp=1000)])
    # IoU (0,0,10,10) vs (0,0,10,20) = 100 / 200 = 0.5: merges
    mem.observe([sight(E[0], box=(0, 0, 10, 20), stamp=1050)])
    assert len(mem) == 1
    mem.observe([sight(E[0], box=(0, 0, 10, 20), stamp=1050, camera="other")])  # other camera
    assert len(mem) == 2
    mem.observe([sight(E[0], box=(0, 0, 10, 20), stamp=1151)])  # 101 ns after: window over
    assert len(mem) == 3
    mem.observe([sight(E[0], box=(0, 0, 10, 20), stamp=1251)])  # 100 ns after the last: merges
    assert len(mem) == 3
    # IoU (0,0,10,20) vs (0,0,10,41) = 200 / 410 < 0.5
    mem.observe([sight(E[0], box=(0, 0, 10, 41), stamp=1260)])
    assert len(mem) == 4


def test_fixed_position_wins_over_camera_frame_position():
    mem = ObjectMemory()
    mem.observe([sight(E[0], stamp=1, pos=(0.0, 0.0, 2.0), fixed=False, frame="cam_optical")])
    (e,) = mem.entries()
    assert (e.position_frame, e.position_fixed, e.position_mean) == ("cam_optical", False,
                                                                      (0.0, 0.0, 2.0))
    mem.observe([sight(E[0], stamp=2, pos=(5.0, 1.0, 0.0))])
    (e,) = mem.entries()
    assert (e.position_frame, e.position_fixed, e.position_mean) == ("map", True, (5, 1, 0))
    mem.observe([sight(E[0], stamp=3, pos=(9.0, 9.0, 9.0), fixed=False, frame="cam_optical")])
    (e,) = mem.entries()
    assert (e.hits, e.position_frame, e.position_mean) == (3, "map", (5, 1, 0))


def test_one_sighting_per_entry_per_frame_greedy_by_cosine():
    mem = ObjectMemory(MemoryConfig(merge_cosine=0.5))
    mem.observe([sight(E[0], box=(0, 0, 40, 40), stamp=1)])
    a = sight([0.6, 0.8, 0, 0], box=(0, 0, 40, 30), stamp=2)  # cos 0.6, IoU 0.75
    b = sight([0.8, 0.0, 0.6, 0], box=(0, 0, 30, 40), stamp=2)  # cos 0.8, IoU 0.75
    # a vs b: cos 0.48 < 0.5, not a same-frame duplicate
    ch = mem.observe([a, b])
    assert len(mem) == 2
    merged = next(e for e in ch.upserts if e.hits == 2)
    assert merged.box == (0, 0, 30, 40)  # b took the entry


def test_same_frame_duplicates_are_dropped():
    mem = ObjectMemory()
    ch = mem.observe([sight(E[0], box=(0, 0, 40, 40)), sight(E[0], box=(0, 0, 40, 39)),
                      sight(E[1], box=(0, 0, 40, 39))])
    assert len(mem) == 2 and len(ch.upserts) == 2


def test_eviction_prefers_old_and_rarely_seen():
    cfg = MemoryConfig(max_entries=2, keep_credit_ns=10, keep_hits_cap=10, merge_window_ns=10)
    mem = ObjectMemory(cfg)
    mem.observe([sight(E[0], camera="a", stamp=90)])
    mem.observe([sight(E[0], camera="a", stamp=95)])
    mem.observe([sight(E[0], camera="a", stamp=100)])  # A: hits 3, last 100 -> key 130
    mem.observe([sight(E[1], camera="b", stamp=110)])  # B: hits 1, last 110 -> key 120
    ch = mem.observe([sight(E[2], camera="c", stamp=115)])  # C: key 125 -> B evicted
    assert ch.deletes == [2]
    assert sorted(e.camera for e in mem.entries()) == ["a", "c"]
    assert [e.camera for e in ch.upserts] == ["c"]
    ch = mem.observe([sight(E[3], camera="d", stamp=200)])  # C 125 < A 130: C goes
    assert ch.deletes == [3] and sorted(e.camera for e in mem.entries()) == ["a", "d"]


def test_recall_scores_filters_and_order():
    mem = ObjectMemory(MemoryConfig(merge_cosine=0.99))
    q = np.array([1.0, 0.0, 0.0, 0.0])
    mem.observe([sight([0.6, 0.8, 0, 0], camera="a", stamp=100)])
    mem.observe([sight([0.8, 0.6, 0, 0], camera="b", stamp=200)])
    mem.observe([sight([0.0, 1.0, 0, 0], camera="a", stamp=300)])
    hits = mem.recall(q * 7, 1.0, -2.0)  # any query norm
    assert [h.entry.id for h in hits] == [2, 1, 3]
    # sigmoid(cos * e - 2), by hand
    expect = [1 / (1 + math.exp(-(c * math.e - 2))) for c in (0.8, 0.6, 0.0)]
    np.testing.assert_allclose([h.score for h in hits], expect, rtol=1e-6)
    np.testing.assert_allclose([h.cosine for h in hits], [0.8, 0.6, 0.0], atol=1e-6)
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, camera="a")] == [1, 3]
    assert mem.recall(q, 1.0, -2.0, camera="nobody") == []
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, since_ns=150)] == [2, 3]
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, until_ns=200)] == [2, 1]
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, since_ns=150, until_ns=250)] == [2]
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, top_k=1)] == [2]
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, min_score=expect[1])] == [2, 1]
    assert [h.entry.id for h in mem.recall(q, 1.0, -2.0, max_results=2)] == [2, 1]
    with pytest.raises(ValueError, match="width"):
        mem.recall(np.ones(3), 1.0, 0.0)


def test_load_keeps_ids_and_continues_after_them():
    src = ObjectMemory(MemoryConfig(merge_cosine=0.99))
    src.observe([sight(E[0], stamp=1, pos=(1.0, 2.0, 3.0))])
    src.observe([sight(E[1], stamp=2, camera="b")])
    dst = ObjectMemory()
    dst.load(src.entries())
    assert [e.id for e in dst.entries()] == [1, 2]
    ch = dst.observe([sight(E[2], stamp=3, camera="c")])
    assert [e.id for e in ch.upserts] == [3]
    # loaded entries still merge by position (the grid index is rebuilt)
    dst.observe([sight(E[0], stamp=4, pos=(1.1, 2.0, 3.0), camera="z")])
    assert dst.get(1).hits == 2


def test_delete_moves_rows_without_mixing_embeddings():
    mem = ObjectMemory(MemoryConfig(merge_cosine=0.99))
    for i in range(4):
        mem.observe([sight(E[i], camera=str(i), stamp=i + 1)])
    assert mem.delete([1, 99]) == [1]
    for e in mem.entries():
        np.testing.assert_array_equal(e.embedding, E[e.id - 1])
    assert [h.entry.id for h in mem.recall(E[3], 0.0, 0.0, top_k=1)] == [4]


def test_crop_is_bounded_jpeg_and_follows_best_iou():
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:, :50] = (255, 0, 0)
    rgb[:, 50:] = (0, 0, 255)
    data = make_crop(rgb, (0, 0, 100, 40), 20, 90)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and max(img.size) <= 20
    assert make_crop(rgb, (10, 10, 10, 50), 20, 90) == b""
    mem = ObjectMemory(MemoryConfig(crop_max_side=16))
    mem.observe([sight(E[0], box=(0, 0, 40, 40), iou=0.6)], rgb)
    red = np.asarray(Image.open(io.BytesIO(mem.get(1).crop)))
    assert red[..., 0].mean() > 200 and red[..., 2].mean() < 50
    mem.observe([sight(E[0], box=(60, 0, 100, 40), iou=0.5, stamp=2000)], rgb)  # IoU 0: new
    mem.observe([sight(E[0], box=(0, 0, 40, 30), iou=0.95, stamp=2000)], rgb)
    assert mem.get(1).best_iou == 0.95 and mem.get(1).hits == 2
    mem.observe([sight(E[0], box=(60, 0, 100, 40), iou=0.4, stamp=3000)], rgb)
    blue = np.asarray(Image.open(io.BytesIO(mem.get(2).crop)))  # kept its first (0.5) crop
    assert blue[..., 2].mean() > 200 and mem.get(2).best_iou == 0.5


def test_labels_by_proposal_takes_the_best_query():
    def res(query, objs):
        return GroundingResult(query=query, query_type="text", camera="c", stamp_ns=0,
                               image_size=(1, 1), num_candidates=3,
                               objects=[GroundedBox((0, 0, 1, 1), s, s, 1.0, 0.0, i)
                                        for i, s in objs])
    labels = labels_by_proposal([res("mug", [(0, 0.5), (1, 0.2)]),
                                 res("cup", [(0, 0.7), (2, 0.1), (-1, 0.9)])])
    assert labels == {0: "cup", 1: "mug", 2: "cup"}


def test_config_is_validated():
    with pytest.raises(ValueError, match="max_entries"):
        MemoryConfig(max_entries=0)
    with pytest.raises(ValueError, match="min_iou"):
        MemoryConfig(min_iou=1.5)


def test_approximate_index_gives_the_exact_answers_and_falls_back():
    pytest.importorskip("usearch")
    from objembed_ros.memory.ann import UsearchIndex

    rng = np.random.default_rng(5)
    dim = 32
    cfg = MemoryConfig(max_entries=300, merge_cosine=0.999, ann_min_entries=0, ann_oversample=4)
    exact = ObjectMemory(cfg, dim=dim)
    approx = ObjectMemory(cfg, ann_factory=UsearchIndex)  # width from the first sighting
    vecs = rng.standard_normal((400, dim)).astype(np.float32)
    for k, v in enumerate(vecs):
        s = sight(v, camera="rare" if k % 50 == 0 else "common", stamp=(k + 1) * 10**9)
        exact.observe([s])
        approx.observe([s])
    assert len(approx.ann) == len(approx) == 300  # evictions left the index too
    q = vecs[-1] + 0.1 * rng.standard_normal(dim).astype(np.float32)
    for kw in (dict(top_k=5), dict(top_k=3, camera="rare"), dict(top_k=5, since_ns=390 * 10**9),
               dict(top_k=5, min_score=0.99)):
        want = [(h.entry.id, h.score) for h in exact.recall(q, 1.0, 0.0, **kw)]
        got = [(h.entry.id, h.score) for h in approx.recall(q, 1.0, 0.0, **kw)]
        assert got == want, kw

"""Grounder in-process with the tiny official-format checkpoint and real photos."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from objembed_ros.core.depth import Intrinsics
from objembed_ros.core.errors import InputError
from objembed_ros.grounder import Grounder, GrounderBusy, GrounderConfig, add_positions

BOXES = np.array([[0, 0, 256, 192], [20, 10, 120, 150], [100, 40, 250, 180],
                  [60, 60, 90, 100]], np.float32)


@pytest.fixture(scope="module")
def grounder(tiny_objembed_dir: Path) -> Grounder:
    return Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir), proposer="external",
                                        frame_cache_size=3, max_query_tokens=16))


@pytest.fixture(scope="module")
def small_photo(photo: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(photo[:192, 100:356])  # 256x192


def test_ground_matches_encoder_scores(grounder: Grounder, small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 1, "cam", boxes=BOXES,
                                  box_scores=np.array([0.9, 0.8, 0.7, 0.6]))
    assert frame.object_embeddings.shape[0] == 4 and frame.image_size == (256, 192)
    assert {"proposals", "encode"} <= set(frame.timings)
    queries = ["a person", "the red cup"]
    results = grounder.ground(queries, frame)
    enc = grounder.encoder
    text = enc.encode_text(queries, target="object")
    encoded = enc.encode_image(small_photo, BOXES)
    ref = enc.score_objects(text, encoded, return_parts=True)
    for qi, res in enumerate(results):
        assert res.query == queries[qi] and res.num_candidates == 4
        scores = [o.score for o in res.objects]
        assert scores == sorted(scores, reverse=True)
        for obj in res.objects:
            i = obj.proposal_index
            assert obj.score == pytest.approx(float(ref.score[qi, i]), abs=1e-5)
            assert obj.cosine == pytest.approx(float(ref.cosine[qi, i]), abs=1e-5)
            assert obj.score == pytest.approx(obj.similarity * obj.iou, abs=1e-6)
            assert obj.box == tuple(BOXES[i].tolist())
            assert obj.proposal_score == pytest.approx([0.9, 0.8, 0.7, 0.6][i])


def test_top_k_min_score_and_supplied_boxes(grounder: Grounder, small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 2, "cam", boxes=BOXES)
    full = grounder.ground(["a person"], frame)[0].objects
    assert len(grounder.ground(["a person"], frame, top_k=2)[0].objects) == 2
    cut = full[1].score
    kept = grounder.ground(["a person"], frame, min_score=cut)[0].objects
    assert all(o.score >= cut for o in kept) and len(kept) >= 2
    assert all(math.isnan(o.proposal_score) for o in full)
    # re-scoring supplied boxes on the cached frame = encoding the frame with those boxes
    supplied = grounder.ground_boxes(["a person"], frame, BOXES[1:3])[0].objects
    direct = grounder.ground(["a person"], grounder.encode_frame(
        small_photo, 3, "other", boxes=BOXES[1:3]))[0].objects
    assert [o.proposal_index for o in supplied] == [-1, -1]
    assert [o.score for o in supplied] == pytest.approx([o.score for o in direct], abs=1e-5)


def test_bad_queries_and_boxes(grounder: Grounder, small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 4, "cam", boxes=BOXES, cache=False)
    for bad in ([], [""], ["  "], ["ok", ""]):
        with pytest.raises(InputError, match="empty query"):
            grounder.ground(bad, frame)
    with pytest.raises(InputError, match="too long"):
        grounder.ground(["red " * 40], frame)
    with pytest.raises(InputError):
        grounder.ground_boxes(["cup"], frame, np.array([[0, 0, np.nan, 5]]))
    with pytest.raises(InputError):
        grounder.encode_frame(np.zeros((4, 4), np.uint8))


def test_cached_queries_never_wait_for_the_model(grounder: Grounder,
                                                 small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 5, "cam", boxes=BOXES)
    grounder.ground(["a cat"], frame)  # now cached
    held = threading.Event()
    release = threading.Event()

    def hold_model() -> None:  # what the worker does while encoding a frame
        with grounder._locked(None):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold_model)
    holder.start()
    held.wait(5)
    try:
        t0 = time.monotonic()
        assert grounder.ground(["a cat"], frame)[0].objects
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        with pytest.raises(GrounderBusy):
            grounder.ground(["a never seen query"], frame, deadline=time.monotonic() + 0.2)
        assert time.monotonic() - t0 < 1.0
    finally:
        release.set()
        holder.join()


def test_find_frames(grounder: Grounder, small_photo: np.ndarray, photo_wide: np.ndarray) -> None:
    other = np.ascontiguousarray(photo_wide[:192, :256])
    a = grounder.encode_frame(small_photo, 10, "find")
    b = grounder.encode_frame(other, 11, "find")
    by_frame = grounder.find_frames(frame=b, camera="find")
    assert [m.stamp_ns for m in by_frame] == [11, 10]
    assert by_frame[0].cosine == pytest.approx(1.0, abs=1e-5)
    p = grounder.logit_params  # the official image-retrieval probability of cosine 1
    expected = 1 / (1 + math.exp(-(math.exp(p.logit_image_log_scale) + p.logit_image_bias)))
    assert by_frame[0].score == pytest.approx(expected, abs=1e-5)
    for m in by_frame:
        assert m.score == pytest.approx(float(grounder.image_match(
            b.global_embeddings[:1], a.global_embeddings[:1] if m.stamp_ns == 10
            else b.global_embeddings[:1])[0, 0]), abs=1e-6)
    by_image = grounder.find_frames(image=small_photo, camera="find", top_k=1)
    assert len(by_image) == 1 and -1 <= by_image[0].cosine <= 1
    by_text = grounder.find_frames(text="a kitchen", camera="find")
    assert len(by_text) == 2 and all(0 <= m.score <= 1 for m in by_text)
    assert a.num_boxes == 0  # 'external' without boxes: image-level only
    assert len(grounder.frames.items("find")) == 2
    with pytest.raises(InputError):
        grounder.find_frames(text="x", frame=a)


def test_frame_cache_is_bounded(grounder: Grounder, small_photo: np.ndarray) -> None:
    for i in range(6):
        grounder.encode_frame(small_photo, 100 + i, "bounded", boxes=BOXES[:1])
    assert [e.stamp_ns for e in grounder.frames.items("bounded")] == [103, 104, 105]


def test_add_positions(grounder: Grounder, small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 6, "cam", boxes=BOXES, cache=False)
    res = grounder.ground(["a person"], frame)[0]
    depth = np.full((192, 256), 1.25, np.float32)
    k = Intrinsics(200.0, 200.0, 127.5, 95.5, 256, 192)
    with_3d = add_positions(res, depth, k)
    assert all(o.position.valid and o.position.xyz[2] == pytest.approx(1.25)
               for o in with_3d.objects)
    stale = add_positions(res, None, None, missing_status="stale_depth")
    assert all(o.position.status == "stale_depth" for o in stale.objects)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        Grounder.load(GrounderConfig(checkpoint=str(tmp_path / "nope"), proposer="whole_image"))
    with pytest.raises(FileNotFoundError, match="WeDetect"):
        Grounder.load(GrounderConfig(checkpoint=str(tmp_path), proposer="wedetect"))
    with pytest.raises(ValueError, match="proposer"):
        Grounder.load(GrounderConfig(checkpoint=str(tmp_path), proposer="yolo"))


def test_projector_backend_falls_back_and_agrees(grounder: Grounder, small_photo: np.ndarray,
                                                 tiny_objembed_dir: Path, tmp_path: Path) -> None:
    """tensorrt asked for on a CPU machine: onnxruntime runs, the reason is reported, and the
    groundings equal the torch projector's."""
    accel = Grounder.load(GrounderConfig(
        checkpoint=str(tiny_objembed_dir), proposer="external", projector_backend="tensorrt",
        engine_cache_dir=str(tmp_path)))
    assert "using 'onnxruntime'" in accel.backend and "CUDA device" in accel.backend
    assert grounder.backend == "projector backend: torch"
    ref = grounder.ground(["a person"], grounder.encode_frame(small_photo, 10, "cam", BOXES))[0]
    got = accel.ground(["a person"], accel.encode_frame(small_photo, 10, "cam", BOXES))[0]
    assert [o.proposal_index for o in got.objects] == [o.proposal_index for o in ref.objects]
    for a, b in zip(got.objects, ref.objects, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.cosine == pytest.approx(b.cosine, abs=1e-4)
    assert list((tmp_path / "onnx").glob("*.onnx")), "no ONNX export cached in engine_cache_dir"


def test_box_score_mismatch_is_rejected_before_the_image_pass(
        grounder: Grounder, small_photo: np.ndarray, monkeypatch) -> None:
    passes = []
    real = grounder.encoder.encode_image
    monkeypatch.setattr(grounder.encoder, "encode_image",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    cached = len(grounder.frames.items("mismatch"))
    with pytest.raises(InputError, match="4 boxes but 3 box scores"):
        grounder.encode_frame(small_photo, 99, "mismatch", boxes=BOXES,
                              box_scores=np.array([0.9, 0.8, 0.7]))
    assert passes == [] and len(grounder.frames.items("mismatch")) == cached

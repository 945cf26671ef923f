"""Grounder in-process with the tiny official-format checkpoint and real photos; scores
against the spec's formulas in float64 with the scalars read from the checkpoint file."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from objembed_ros.core.depth import Intrinsics
from objembed_ros.core.errors import InputError
from objembed_ros.grounder import Grounder, GrounderConfig, add_positions

BOXES = np.array([[0, 0, 256, 192], [20, 10, 120, 150], [100, 40, 250, 180],
                  [60, 60, 90, 100]], np.float32)


@pytest.fixture(scope="module")
def grounder(tiny_objembed_dir: Path) -> Grounder:
    return Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir), proposer="external",
                                        frame_cache_size=3, max_query_tokens=16))


@pytest.fixture(scope="module")
def small_photo(photo: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(photo[:192, 100:356])  # 256x192


@pytest.fixture(scope="module")
def scalars(tiny_objembed_dir: Path) -> dict[str, float]:
    """The four logit scalars, read from the checkpoint file (not through our loader)."""
    with safe_open(str(tiny_objembed_dir / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).double().item() for k in (
            "logit_log_scale", "logit_bias", "logit_image_log_scale", "logit_image_bias")}


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _cos64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.atleast_2d(np.asarray(a, np.float64))
    b = np.atleast_2d(np.asarray(b, np.float64))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)) @ \
        (b / np.linalg.norm(b, axis=1, keepdims=True)).T


def _image_score64(q: np.ndarray, g: np.ndarray, scalars: dict[str, float]) -> np.ndarray:
    """Spec section 6: sigmoid(cos(q, g) * exp(logit_image_log_scale) + logit_image_bias)."""
    return _sig(_cos64(q, g) * math.exp(scalars["logit_image_log_scale"])
                + scalars["logit_image_bias"])


def test_ground_against_float64_reference(grounder: Grounder, small_photo: np.ndarray,
                                          scalars: dict[str, float]) -> None:
    frame = grounder.encode_frame(small_photo, 1, "cam", boxes=BOXES,
                                  box_scores=np.array([0.9, 0.8, 0.7, 0.6]))
    assert frame.object_embeddings.shape[0] == 4 and frame.image_size == (256, 192)
    assert {"proposals", "encode"} <= set(frame.timings)
    enc = grounder.encoder
    encoded = enc.encode_image(small_photo, BOXES)  # the same pass: equal to the last bit
    np.testing.assert_array_equal(frame.object_embeddings, encoded.object_embeddings.numpy())
    np.testing.assert_array_equal(frame.iou_logits, encoded.iou_logits.numpy())
    np.testing.assert_array_equal(frame.global_embeddings, encoded.global_embeddings.numpy())
    queries = ["a person", "the red cup"]
    results = grounder.ground(queries, frame)
    text = enc.encode_text(queries, target="object").double().numpy()
    cos = _cos64(text, frame.object_embeddings)
    sim = _sig(cos * math.exp(scalars["logit_log_scale"]) + scalars["logit_bias"])
    iou = _sig(frame.iou_logits.astype(np.float64))
    for qi, res in enumerate(results):
        assert res.query == queries[qi] and res.num_candidates == 4
        assert math.isnan(res.image_score)  # not asked for
        assert [o.proposal_index for o in res.objects] == list(np.argsort(-sim[qi] * iou))
        for obj in res.objects:
            i = obj.proposal_index
            assert obj.score == pytest.approx(sim[qi, i] * iou[i], abs=1e-6)
            assert obj.cosine == pytest.approx(cos[qi, i], abs=1e-6)
            assert obj.similarity == pytest.approx(sim[qi, i], abs=1e-6)
            assert obj.iou == pytest.approx(iou[i], abs=1e-6)
            assert obj.box == tuple(BOXES[i].tolist())
            assert obj.proposal_score == np.float32([0.9, 0.8, 0.7, 0.6][i])


def test_image_score_is_the_spec_image_retrieval(grounder: Grounder, small_photo: np.ndarray,
                                                 scalars: dict[str, float]) -> None:
    frame = grounder.encode_frame(small_photo, 7, "cam", boxes=BOXES, cache=False)
    queries = ["a person", "a kitchen"]
    results = grounder.ground(queries, frame, with_image_score=True)
    t_global = grounder.encoder.encode_text(queries, target="image").double().numpy()
    expected = _image_score64(t_global, frame.global_embeddings[:1], scalars)[:, 0]
    got = np.array([r.image_score for r in results])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=0)  # float32 math, ~1e-6 rel
    # the coarse <global> (first), not the detailed one: the two differ by over 5 % here
    other = _image_score64(t_global, frame.global_embeddings[1:2], scalars)[:, 0]
    assert np.abs(other / expected - 1).max() > 0.05
    # supplied boxes: the same whole-frame match of the cached frame, none when not asked for
    boxes = grounder.ground_boxes(queries, frame, BOXES[:1], with_image_score=True)
    np.testing.assert_allclose([r.image_score for r in boxes], expected, rtol=1e-4, atol=0)
    assert all(math.isnan(r.image_score) for r in grounder.ground_boxes(queries, frame, BOXES[:1]))


def test_top_k_min_score_and_supplied_boxes(grounder: Grounder, small_photo: np.ndarray) -> None:
    frame = grounder.encode_frame(small_photo, 2, "cam", boxes=BOXES)
    full = grounder.ground(["a person"], frame)[0].objects
    assert [o.proposal_index for o in grounder.ground(["a person"], frame, top_k=2)[0].objects
            ] == [o.proposal_index for o in full[:2]]
    cut = full[1].score
    kept = grounder.ground(["a person"], frame, min_score=cut)[0].objects
    assert [o.proposal_index for o in kept] == [o.proposal_index for o in full[:2]]
    assert all(math.isnan(o.proposal_score) for o in full)
    # re-scoring supplied boxes on the cached frame = encoding the frame with those boxes:
    # the same image pass, text and scoring, so the same numbers exactly
    supplied = grounder.ground_boxes(["a person"], frame, BOXES[1:3])[0].objects
    direct = grounder.ground(["a person"], grounder.encode_frame(
        small_photo, 3, "other", boxes=BOXES[1:3]))[0].objects
    assert [o.proposal_index for o in supplied] == [-1, -1]
    assert [(o.box, o.score, o.cosine) for o in supplied] == \
        [(o.box, o.score, o.cosine) for o in direct]
    # supplied_index is the row in the given boxes, also for a repeated box; rows repeat the
    # direct encoding's proposal_index (same boxes, same order)
    assert [o.supplied_index for o in supplied] == [o.proposal_index for o in direct]
    repeated = np.stack([BOXES[1], BOXES[2], BOXES[1]])
    objects = grounder.ground_boxes(["a person"], frame, repeated)[0].objects
    direct = grounder.ground(["a person"], grounder.encode_frame(
        small_photo, 5, "other", boxes=repeated))[0].objects
    assert sorted(o.supplied_index for o in objects) == [0, 1, 2]
    assert [(o.supplied_index, o.score) for o in objects] == \
        [(o.proposal_index, o.score) for o in direct]
    assert all(o.box == tuple(repeated[o.supplied_index].tolist()) for o in objects)


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


def test_find_frames(grounder: Grounder, small_photo: np.ndarray, photo_wide: np.ndarray,
                     scalars: dict[str, float]) -> None:
    """Each query kind against the cached frames' coarse <global>, scored by the spec's
    image retrieval in float64 (queries: a cached frame, an image, a text)."""
    other = np.ascontiguousarray(photo_wide[:192, :256])
    a = grounder.encode_frame(small_photo, 10, "find")
    b = grounder.encode_frame(other, 11, "find")
    assert a.num_boxes == 0  # 'external' without boxes: image-level only
    assert len(grounder.frames.items("find")) == 2
    globals_ = np.stack([a.global_embeddings[0], b.global_embeddings[0]])  # stamps 10, 11
    enc = grounder.encoder
    queries = {
        "frame": (dict(frame=b), b.global_embeddings[0]),
        "image": (dict(image=small_photo), enc.encode_image_query(small_photo).numpy()),
        "text": (dict(text="a kitchen"), enc.encode_text("a kitchen", "image").numpy()),
    }
    for kind, (kwargs, q) in queries.items():
        expected = _image_score64(q, globals_, scalars)[0]
        cos = _cos64(q, globals_)[0]
        got = grounder.find_frames(camera="find", **kwargs)
        order = np.argsort(-expected)
        assert [m.stamp_ns for m in got] == [(10, 11)[i] for i in order], kind
        np.testing.assert_allclose([m.score for m in got], expected[order], rtol=1e-4, atol=0)
        np.testing.assert_allclose([m.cosine for m in got], cos[order], rtol=0, atol=1e-6)
    assert grounder.find_frames(frame=b, camera="find")[0].cosine == pytest.approx(1.0, abs=1e-6)
    assert len(grounder.find_frames(text="a kitchen", camera="find", top_k=1)) == 1
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
    assert accel.backend == ("projector backend 'tensorrt' unavailable (tensorrt: TensorRT "
                             "needs a CUDA device, not 'cpu'); using 'onnxruntime'")
    assert grounder.backend == "projector backend: torch"
    ref = grounder.ground(["a person"], grounder.encode_frame(small_photo, 10, "cam", BOXES))[0]
    got = accel.ground(["a person"], accel.encode_frame(small_photo, 10, "cam", BOXES))[0]
    assert [o.proposal_index for o in got.objects] == [o.proposal_index for o in ref.objects]
    for a, b in zip(got.objects, ref.objects, strict=True):  # onnxruntime sums differently
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.cosine == pytest.approx(b.cosine, abs=1e-4)
    assert list((tmp_path / "onnx").glob("*.onnx")), "no ONNX export cached in engine_cache_dir"
    assert accel.encoder.projector_backend is not None  # installed into the encoder's hook
    assert grounder.encoder.projector_backend is None


def test_box_score_mismatch_is_rejected_before_the_image_pass(
        grounder: Grounder, small_photo: np.ndarray, monkeypatch) -> None:
    passes = []
    real = grounder.encoder.encode_image
    monkeypatch.setattr(grounder.encoder, "encode_image",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    cached = len(grounder.frames.items("mismatch"))
    with pytest.raises(InputError, match="^4 boxes but 3 box scores$"):
        grounder.encode_frame(small_photo, 99, "mismatch", boxes=BOXES,
                              box_scores=np.array([0.9, 0.8, 0.7]))
    assert passes == [] and len(grounder.frames.items("mismatch")) == cached

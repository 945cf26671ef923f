"""Grounder session logic with a scripted stand-in encoder: the model lock's fairness (a new
query waits at most one frame pass), the error types, and which boxes each proposal source
hands to the image pass. Deterministic: threads are sequenced with semaphores, never timed."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from objembed_ros.core.boxes import grid_boxes
from objembed_ros.core.cache import LRUCache
from objembed_ros.core.errors import InputError, ModelBusy, ModelFailure, ModelNotReady
from objembed_ros.core.scoring import LogitParams
from objembed_ros.grounder import CachedFrame, Grounder, GrounderBusy, GrounderConfig

D = 8
WAIT = 30.0  # generous bound on waits for other threads (never asserted as a duration)
RGB = np.zeros((30, 40, 3), np.uint8)  # H=30, W=40


@dataclass
class _Encoded:
    object_embeddings: np.ndarray
    iou_logits: np.ndarray
    global_embeddings: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class Gate:
    """Holds a pass inside the model until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def through(self) -> None:
        self.entered.release()
        if not self.release.acquire(timeout=WAIT):
            raise RuntimeError("gate never opened")

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=WAIT), "no pass entered the gate"


class ScriptedEncoder:
    """The parts of ObjEmbedEncoder the Grounder uses; logs every pass in order."""

    def __init__(self) -> None:
        self.text_cache: LRUCache[tuple[str, str], np.ndarray] = LRUCache(64)
        self.score_params = LogitParams(0.0, 0.0, 0.0, 0.0)
        self.log: list[str] = []
        self.boxes_seen: list[np.ndarray] = []
        self.image_gate: Gate | None = None
        self.text_gate: Gate | None = None
        self.fail: Exception | None = None
        self.text_beside_frames = False  # True on CUDA (ObjEmbedEncoder)

    @staticmethod
    def tokenizer(text: str, add_special_tokens: bool = False) -> dict[str, list[str]]:
        return {"input_ids": text.split()}

    def encode_image(self, rgb: np.ndarray, boxes: np.ndarray) -> _Encoded:
        self.log.append("frame")
        self.boxes_seen.append(np.array(boxes))
        if self.fail is not None:
            raise self.fail
        if self.image_gate is not None:
            self.image_gate.through()
        n = len(boxes)
        return _Encoded(np.ones((n, D), np.float32), np.zeros(n, np.float32),
                        np.ones((2, D), np.float32))

    def encode_text(self, texts: list[str], target: str = "object") -> np.ndarray:
        self.log.append("text")
        if self.fail is not None:
            raise self.fail
        if self.text_gate is not None:
            self.text_gate.through()
        out = np.ones((len(texts), D), np.float32)
        for text, row in zip(texts, out, strict=True):
            self.text_cache.put((target, text), row)
        return out


def _grounder(proposer: str = "external") -> tuple[Grounder, ScriptedEncoder]:
    encoder = ScriptedEncoder()
    return Grounder(encoder, None, GrounderConfig(checkpoint="unused", proposer=proposer)), encoder


def _start(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run target in a thread; its result or exception lands in the returned list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())
        except Exception as exc:  # handed to the test thread
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_for(condition: Callable[[], bool]) -> None:
    """Poll until another thread reached a state (bounded; not a timing assertion)."""
    end = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < end, "the other thread never got there"
        time.sleep(0.001)


def test_new_query_waits_at_most_one_frame_pass() -> None:
    """The worker encodes frames back to back; a query that arrives during frame 1 runs its
    text pass right after frame 1, before frame 2 (a plain lock lets the worker re-take it)."""
    grounder, encoder = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    encoder.log.clear()
    gate = encoder.image_gate = Gate()
    worker, _ = _start(lambda: [grounder.encode_frame(RGB, i, "cam", boxes=[[0, 0, 10, 10]])
                                for i in (1, 2, 3)])
    try:
        gate.wait_entered()  # frame 1 is inside the model
        query, answer = _start(lambda: grounder.ground(["a new query"], frame))
        _wait_for(lambda: grounder.model_lock.requests_waiting == 1)
        gate.release.release()  # frame 1 done; the worker goes straight for frame 2
        query.join(WAIT)
        assert not query.is_alive(), "the new query waited behind the next frame pass"
        assert len(answer) == 1 and answer[0][0].query == "a new query"
        gate.wait_entered()  # frame 2 started only after the text pass
        assert encoder.log == ["frame", "text", "frame"]
    finally:
        for _ in range(3):
            gate.release.release()
        worker.join(WAIT)
    assert encoder.log == ["frame", "text", "frame", "frame"]


def test_cached_query_is_served_while_a_frame_is_encoded() -> None:
    grounder, encoder = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    grounder.ground(["a cat"], frame)  # now cached
    gate = encoder.image_gate = Gate()
    worker, _ = _start(lambda: grounder.encode_frame(RGB, 1, "cam"))
    try:
        gate.wait_entered()
        query, answer = _start(lambda: grounder.ground(["a cat"], frame))
        query.join(WAIT)
        assert not query.is_alive() and answer[0][0].objects  # answered, frame still inside
        with pytest.raises(ModelBusy, match="timeout: the model stayed busy"):
            grounder.ground(["never seen"], frame, deadline=time.monotonic() + 0.05)
    finally:
        gate.release.release()
        worker.join(WAIT)
    assert encoder.log == ["frame", "text", "frame"]  # the busy query never ran a pass
    assert GrounderBusy is ModelBusy


def test_text_pass_runs_beside_a_frame_pass_when_the_encoder_allows() -> None:
    """An encoder with text_beside_frames (CUDA: its own stream) runs a new query's text pass
    under the text lock, not the model lock: it completes while a frame pass is inside the
    model. Text passes still go one at a time, and close() waits for both kinds."""
    grounder, encoder = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    encoder.text_beside_frames = True
    encoder.log.clear()
    frame_gate = encoder.image_gate = Gate()
    worker, _ = _start(lambda: grounder.encode_frame(RGB, 1, "cam"))
    text_gate = Gate()
    first = None
    try:
        frame_gate.wait_entered()  # a frame pass holds the model lock
        answer = grounder.ground(["a new query"], frame, deadline=time.monotonic() + WAIT)
        assert answer[0].query == "a new query" and worker.is_alive()
        assert encoder.log == ["frame", "text"]
        encoder.text_gate = text_gate
        first, _ = _start(lambda: grounder.text_embeddings(["first"]))
        text_gate.wait_entered()  # a text pass holds the text lock
        with pytest.raises(ModelBusy):  # the second text pass waits for the first
            grounder.text_embeddings(["second"], deadline=time.monotonic() + 0.05)
        closing, _ = _start(grounder.close)
        frame_gate.release.release()  # the frame pass ends: close() gets the model lock...
        worker.join(WAIT)
        _wait_for(lambda: grounder.text_lock.requests_waiting == 1)  # ...and waits for text
        assert grounder.encoder is not None
    finally:
        frame_gate.release.release()
        text_gate.release.release()
        worker.join(WAIT)
        if first is not None:
            first.join(WAIT)
    closing.join(WAIT)
    assert not closing.is_alive() and grounder.encoder is None
    assert encoder.log == ["frame", "text", "text"]


def test_pass_failures_become_model_failure_with_the_cause() -> None:
    grounder, encoder = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    encoder.fail = oom
    with pytest.raises(ModelFailure) as image_err:
        grounder.encode_frame(RGB, 1, "cam")
    assert str(image_err.value) == ("image pass failed: RuntimeError: CUDA out of memory. "
                                    "Tried to allocate 2.00 GiB")
    assert image_err.value.__cause__ is oom
    with pytest.raises(ModelFailure) as text_err:
        grounder.ground(["a dog"], frame)
    assert str(text_err.value) == ("text pass failed: RuntimeError: CUDA out of memory. "
                                   "Tried to allocate 2.00 GiB")
    encoder.fail = InputError("query 'x' must not contain special tokens")
    with pytest.raises(InputError):  # the caller's input: passed through unchanged
        grounder.ground(["a dog"], frame)
    encoder.fail = None
    assert grounder.ground(["a dog"], frame)[0].objects  # the lock was released every time
    assert len(grounder.frames.items("cam")) == 1  # failed frames are not cached


def test_no_model_is_model_not_ready() -> None:
    grounder, _ = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    grounder.ground(["a cat"], frame)  # cached text
    grounder.close()
    for call in (lambda: grounder.encode_frame(RGB, 1, "cam"),
                 lambda: grounder.ground(["a cat"], frame),
                 lambda: grounder.text_embeddings(["a cat"]),
                 lambda: grounder.ground_boxes(["a cat"], frame, [[0, 0, 5, 5]])):
        with pytest.raises(ModelNotReady, match="^model not loaded$"):
            call()
    assert grounder.text_cache_stats() == {} and len(grounder.frames) == 0


@pytest.mark.parametrize("source,expected", [
    ("whole_image", np.array([[0, 0, 40, 30]], np.float32)),
    ("external", np.zeros((0, 4), np.float32)),
    ("grid", grid_boxes(40, 30).astype(np.float32)),
])
def test_each_source_is_a_proposer(source: str, expected: np.ndarray) -> None:
    """What reaches the image pass per configured source, and that boxes given with a frame
    win over it (checked, repaired, clipped, scores NaN when none are given)."""
    grounder, encoder = _grounder(source)
    frame = grounder.encode_frame(RGB)
    np.testing.assert_array_equal(encoder.boxes_seen[-1], expected)
    assert frame.boxes.dtype == np.float32 and np.isnan(frame.proposal_scores).all()
    assert frame.proposal_source == source and frame.num_boxes == len(expected)
    given = grounder.encode_frame(RGB, boxes=[[30, 20, 5, 5], [-5, 0, 50, 40]],
                                  box_scores=[0.5, np.nan])
    np.testing.assert_array_equal(encoder.boxes_seen[-1], [[5, 5, 30, 20], [0, 0, 40, 30]])
    np.testing.assert_array_equal(given.proposal_scores, np.array([0.5, np.nan], np.float32))
    assert given.proposal_source == "supplied"


def test_bad_input_never_reaches_the_model() -> None:
    grounder, encoder = _grounder()
    frame = grounder.encode_frame(RGB, 0, "cam", boxes=[[0, 0, 10, 10]])
    encoder.log.clear()
    with pytest.raises(InputError, match="^1 boxes but 2 box scores$"):
        grounder.encode_frame(RGB, boxes=[[0, 0, 1, 1]], box_scores=[0.1, 0.2])
    with pytest.raises(InputError, match="^min_score is NaN$"):
        grounder.ground(["a cat"], frame, min_score=float("nan"))
    with pytest.raises(InputError, match="^deadline is NaN$"):
        grounder.ground(["a new one"], frame, deadline=float("nan"))
    with pytest.raises(InputError, match="NaN or inf in row"):
        grounder.ground_boxes(["a cat"], frame, [[0, 0, np.inf, 1]])
    assert encoder.log == []
    assert isinstance(frame, CachedFrame)

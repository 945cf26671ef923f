"""The Grounder session: the one object the node, the CLI and the replay tool share.

Embed once, query many (like segment-anything's predictor): `encode_frame` runs the
proposer and ONE ObjEmbed image pass and keeps the frame's object and global embeddings;
`ground` then costs one text pass (cached by text) plus a matrix product in core.scoring.
No ROS here, and no torch: the parts (and torch) come from grounder.build.

Threading: image passes run one at a time under a ModelLock (grounder.lock): frame passes
(`encode_frame`, the worker) yield to request passes (supplied boxes, query image), so a
request waits at most for the pass in progress. Text passes take the same lock on the CPU
(where cores are the shared resource: two passes at once only split them); on CUDA
(``encoder.text_beside_frames``) they take a text-only lock and run on the encoder's own
stream beside the frame pass, so a new query never waits for a frame. Cached text
embeddings are host copies served without any lock; every result leaves a pass as host
arrays, copied inside it; scoring is numpy on cached arrays and needs no lock.

Errors: InputError (the caller's input), ModelBusy (a deadline passed waiting for the
model), ModelNotReady (no model loaded), ModelFailure (a pass failed inside the model or
its runtime; the cause is chained and named in the message).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from objembed_ros.core.depth import Intrinsics, Position3D, estimate_position
from objembed_ros.core.errors import InputError, ModelBusy, ModelFailure, ModelNotReady
from objembed_ros.core.frames import FrameRing
from objembed_ros.core.image import check_image
from objembed_ros.core.results import (
    QUERY_TEXT,
    FrameMatchResult,
    GroundedBox,
    GroundingResult,
)
from objembed_ros.core.scoring import cosine_matrix, grounding_scores, host_float32, image_scores
from objembed_ros.encoder.prompts import tokenize
from objembed_ros.grounder.build import (
    GrounderConfig,
    build_parts,
    build_proposer,
    free_device_memory,
    supplied_proposer,
)
from objembed_ros.grounder.lock import ModelLock
from objembed_ros.proposals.base import Proposals, Proposer

TARGET_OBJECT = "object"
TARGET_IMAGE = "image"

GrounderBusy = ModelBusy  # the name the node and older callers use


@dataclass
class CachedFrame:
    """One encoded frame: what every later query is scored against.

    Shapes: boxes (K, 4) float32 xyxy source pixels; proposal_scores (K,) float32 (NaN when
    the source gives none); object_embeddings (K, D) float32; iou_logits (K,) float32;
    global_embeddings (G, D) float32, coarse first. image_size is (W, H).
    """

    camera: str
    stamp_ns: int
    rgb: np.ndarray
    image_size: tuple[int, int]
    boxes: np.ndarray
    proposal_scores: np.ndarray
    object_embeddings: np.ndarray
    iou_logits: np.ndarray
    global_embeddings: np.ndarray
    proposal_source: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    meta: Any = None  # opaque to the Grounder (the node keeps the source header and depth)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def _check_rgb(rgb: np.ndarray) -> None:
    """RGB only: the proposer and the encoder treat grey and alpha differently, so the caller
    converts first (the node's convert.image_to_rgb, the CLI's core.resize.to_rgb)."""
    if check_image(rgb).shape[2] != 3:
        raise InputError(f"image must be HxWx3 RGB, got shape {rgb.shape}")


def _check_min_score(min_score: float) -> None:
    if math.isnan(min_score):  # every comparison with NaN is false: "nothing there"
        raise InputError("min_score is NaN")


def _encoded_parts(encoded: Any, props: Proposals) -> dict[str, Any]:
    """The CachedFrame fields one image pass gives, as host float32 arrays."""
    n = len(props)
    objects = host_float32(encoded.object_embeddings)
    dim = objects.shape[-1] if objects.ndim >= 2 else 0
    return dict(boxes=props.boxes, proposal_scores=props.scores, proposal_source=props.source,
                object_embeddings=objects.reshape(n, dim) if n else np.zeros((0, dim), np.float32),
                iou_logits=host_float32(encoded.iou_logits).reshape(-1))


def _one_upload(encoder: Any, rgb: np.ndarray) -> AbstractContextManager[Any]:
    """Within one frame pass, the encoder and the proposer share one device upload of the
    frame (encoder/preprocess.py); encoders without a device uploader need nothing."""
    preprocessor = getattr(encoder, "preprocessor", None)
    return preprocessor.uploader.sharing(rgb) if preprocessor is not None else nullcontext()


class Grounder:
    """Proposer + ObjEmbed encoder + caches. Build with `Grounder.load(config)`, or pass
    already built parts (tests): `proposer=None` builds the configured one."""

    def __init__(self, encoder: Any, proposer: Proposer | None, config: GrounderConfig,
                 backend: str = "projector backend: torch") -> None:
        self.encoder = encoder
        self.config = config
        self.proposer: Proposer | None = (proposer if proposer is not None
                                          else build_proposer(config))
        self.supplied = supplied_proposer(config)  # boxes given with a call
        self.frames: FrameRing[CachedFrame] = FrameRing(max(config.frame_cache_size, 1))
        self.model_lock = ModelLock()
        self.text_lock = ModelLock()  # text passes among themselves, when beside frames
        self.logit_params = encoder.score_params  # the four learned score scalars
        self.backend = backend  # what runs the projector, and why

    @property
    def preprocess(self) -> str:
        """The preprocessing mode in use: "exact" or "device" (encoder/preprocess.py)."""
        preprocessor = getattr(self.encoder, "preprocessor", None)
        return preprocessor.mode if preprocessor is not None else "exact"

    @classmethod
    def load(cls, config: GrounderConfig) -> Grounder:
        """Build the encoder, the proposer and the accel hooks (grounder.build). Raises
        FileNotFoundError / ValueError / the encoder's CheckpointError naming the problem."""
        encoder, proposer, backend = build_parts(config)
        return cls(encoder, proposer, config, backend)

    def close(self) -> None:
        """Drop the model and caches (lifecycle cleanup); frees CUDA memory when used."""
        with self.model_lock.hold(request=True), self.text_lock.hold(request=True):
            self.frames.clear()
            if self.encoder is not None:
                self.encoder.text_cache.clear()
            self.encoder = None
            self.proposer = None
        free_device_memory()

    # -- the model ------------------------------------------------------------------------
    def _encoder(self) -> Any:
        encoder = self.encoder
        if encoder is None:
            raise ModelNotReady("model not loaded")
        return encoder

    @contextmanager
    def _pass(self, what: str, request: bool, deadline: float | None,
              lock: ModelLock | None = None) -> Iterator[Any]:
        """Hold the model (``lock``: the model lock unless given) for one pass and yield the
        encoder. ModelBusy past the deadline, ModelNotReady when none is loaded; any other
        failure inside becomes ModelFailure."""
        self._encoder()  # fail fast instead of waiting for the lock
        with (lock or self.model_lock).hold(request, deadline):
            encoder = self._encoder()  # closed while this caller waited
            try:
                yield encoder
            except (InputError, ModelBusy, ModelNotReady):
                raise
            except Exception as exc:
                raise ModelFailure(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    # -- image pass -----------------------------------------------------------------------
    def encode_frame(self, rgb: np.ndarray, stamp_ns: int = 0, camera: str = "",
                     boxes: np.ndarray | None = None, box_scores: np.ndarray | None = None,
                     meta: Any = None, cache: bool = True) -> CachedFrame:
        """Proposals (or the given boxes) + one ObjEmbed pass -> a CachedFrame.

        boxes: (N, 4) xyxy source pixels from another detector (box_scores: theirs, NaN for
        none); when None the configured proposer runs ('external' then gives no boxes:
        image-level only). A frame pass: it waits for pending request passes.
        cache: add the frame to this Grounder's per-camera ring.
        """
        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        t0 = time.perf_counter()
        with self._pass("image pass", request=False, deadline=None) as encoder, \
                _one_upload(encoder, rgb):
            if boxes is not None:
                props = self.supplied.propose(rgb, boxes, box_scores)
            else:
                props = self.proposer.propose(rgb)  # type: ignore[union-attr]
            t1 = time.perf_counter()
            encoded = encoder.encode_image(rgb, props.boxes)
            parts = _encoded_parts(encoded, props)  # host copies, inside the pass
            parts["global_embeddings"] = host_float32(encoded.global_embeddings)
            t2 = time.perf_counter()
        timings = {"proposals": t1 - t0, "encode": t2 - t1}
        for key, value in encoded.timings.items():
            timings[f"encoder.{key}"] = float(value)
        frame = CachedFrame(
            camera=camera, stamp_ns=int(stamp_ns), rgb=rgb, image_size=(w, h),
            timings=timings, meta=meta, **parts)
        if cache:
            self.frames.add(camera, frame.stamp_ns, frame)
        return frame

    # -- text pass ------------------------------------------------------------------------
    def check_queries(self, texts: Sequence[str]) -> list[str]:
        """Stripped queries; InputError for none, an empty one, or one over the token limit."""
        if not texts:
            raise InputError("empty query: no queries given")
        out = []
        for text in texts:
            stripped = text.strip()
            if not stripped:
                raise InputError("empty query")
            n = self.count_tokens(stripped)
            if n > self.config.max_query_tokens:
                raise InputError(f"query too long: {n} tokens > max_query_tokens "
                                 f"{self.config.max_query_tokens}: {stripped[:40]!r}...")
            out.append(stripped)
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of the user text (encoder.prompts.tokenize: no model lock needed)."""
        return len(tokenize(self._encoder().tokenizer, text))

    def text_embeddings(self, texts: Sequence[str], target: str = TARGET_OBJECT,
                        deadline: float | None = None) -> np.ndarray:
        """(Q, D) float32 embeddings.

        Texts already in the encoder's (thread-safe) text cache of host copies are served
        without any lock, so a query repeated during a frame pass never waits behind
        inference; others run one text pass: beside the frame pass on CUDA, else before the
        next frame pass (module docstring).
        """
        encoder = self._encoder()
        hits = [encoder.text_cache.get((target, t)) for t in texts]
        if any(h is None for h in hits):
            beside = getattr(encoder, "text_beside_frames", False)
            lock = self.text_lock if beside else self.model_lock
            with self._pass("text pass", request=True, deadline=deadline, lock=lock) as enc:
                return host_float32(enc.encode_text(list(texts), target=target))
        return np.stack([host_float32(h) for h in hits]) if hits else np.zeros((0, 0), np.float32)

    def text_cache_stats(self) -> dict[str, int]:
        return self.encoder.text_cache.stats() if self.encoder is not None else {}

    # -- grounding ------------------------------------------------------------------------
    def ground(self, texts: Sequence[str], frame: CachedFrame, top_k: int = 0,
               min_score: float = 0.0, deadline: float | None = None,
               with_image_score: bool = False) -> list[GroundingResult]:
        """Per query, the frame's boxes sorted by score (top_k <= 0 keeps all).

        with_image_score: also the query's whole-frame match, the official image retrieval
        probability of its <global_text> embedding against the frame's coarse <global>
        (spec section 6); one more text pass per new query. NaN otherwise.
        """
        _check_min_score(min_score)
        queries = self.check_queries(texts)
        text = self.text_embeddings(queries, TARGET_OBJECT, deadline)
        image = self._frame_match(queries, frame, deadline) if with_image_score else None
        return self._score(queries, text, frame, top_k, min_score, image, proposal_index=True)

    def ground_boxes(self, texts: Sequence[str], frame: CachedFrame, boxes: np.ndarray,
                     top_k: int = 0, min_score: float = 0.0, deadline: float | None = None,
                     with_image_score: bool = False) -> list[GroundingResult]:
        """Score caller-supplied boxes: one image pass (a request pass) on the cached
        frame's pixels; the objects carry proposal_index -1 and supplied_index, their row in
        ``boxes`` (exact even when a box repeats). with_image_score: as ground() (the
        whole-frame match of the cached frame)."""
        _check_min_score(min_score)
        queries = self.check_queries(texts)
        props = self.supplied.propose(frame.rgb, boxes)
        text = self.text_embeddings(queries, TARGET_OBJECT, deadline)
        image = self._frame_match(queries, frame, deadline) if with_image_score else None
        with self._pass("image pass", request=True, deadline=deadline) as encoder:
            parts = _encoded_parts(encoder.encode_image(frame.rgb, props.boxes), props)
        supplied = replace(frame, timings={}, **parts)
        return self._score(queries, text, supplied, top_k, min_score, image,
                           proposal_index=False)

    def _frame_match(self, queries: list[str], frame: CachedFrame,
                     deadline: float | None) -> np.ndarray | None:
        """(Q,) whole-frame match of each query (<global_text> against the coarse <global>);
        None when the frame has no global embedding."""
        if not frame.global_embeddings.size:
            return None
        image_text = self.text_embeddings(queries, TARGET_IMAGE, deadline)
        return self.image_match(image_text, frame.global_embeddings[:1])[:, 0]

    def _score(self, queries: list[str], text: np.ndarray, frame: CachedFrame, top_k: int,
               min_score: float, image_score: np.ndarray | None,
               proposal_index: bool) -> list[GroundingResult]:
        p = self.logit_params
        n = frame.num_boxes
        if n:
            s = grounding_scores(text, frame.object_embeddings, frame.iou_logits,
                                 p.logit_log_scale, p.logit_bias)
        results = []
        for qi, query in enumerate(queries):
            objects: list[GroundedBox] = []
            if n:
                row = s.score[qi]
                order = np.argsort(-row, kind="stable")
                order = order[row[order] >= min_score]
                if top_k > 0:
                    order = order[:top_k]
                objects = [GroundedBox(
                    box=tuple(float(v) for v in frame.boxes[i]),  # type: ignore[arg-type]
                    score=float(row[i]), similarity=float(s.similarity[qi, i]),
                    iou=float(s.iou[qi, i]), cosine=float(s.cosine[qi, i]),
                    proposal_index=int(i) if proposal_index else -1,
                    supplied_index=-1 if proposal_index else int(i),
                    proposal_score=float(frame.proposal_scores[i]),
                ) for i in order]
            results.append(GroundingResult(
                query=query, query_type=QUERY_TEXT, camera=frame.camera,
                stamp_ns=frame.stamp_ns, image_size=frame.image_size, num_candidates=n,
                objects=objects,
                image_score=math.nan if image_score is None else float(image_score[qi]),
                meta=frame.meta))
        return results

    # -- image-level retrieval ------------------------------------------------------------
    def image_match(self, image_text: np.ndarray, globals_: np.ndarray) -> np.ndarray:
        """(Q, M) official image-retrieval probabilities (spec section 6)."""
        p = self.logit_params
        return image_scores(image_text, globals_, p.logit_image_log_scale, p.logit_image_bias)

    def encode_query_image(self, rgb: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """(D,) coarse global embedding of an image used as a query (the official image-query
        prompt, no boxes); a request pass."""
        _check_rgb(rgb)
        with self._pass("image query pass", request=True, deadline=deadline) as encoder:
            return host_float32(encoder.encode_image_query(rgb)).reshape(-1)

    def find_frames(self, *, text: str | None = None, image: np.ndarray | None = None,
                    frame: CachedFrame | None = None, camera: str | None = None,
                    top_k: int = 0, deadline: float | None = None) -> list[FrameMatchResult]:
        """Rank the cached frames (of `camera`, or all) against one query, best first.

        score = sigmoid(cos(q, g_coarse) * exp(logit_image_log_scale) + logit_image_bias),
        the official image retrieval (spec section 6; infer_objembed.py retrieval_by_image
        uses the same scale and bias for an image query). q is the text's <global_text>
        embedding, the query image's coarse <global> (official image-query prompt), or a
        cached frame's coarse <global> (from its grounding pass, no extra model pass).
        """
        if sum(q is not None for q in (text, image, frame)) != 1:
            raise InputError("give exactly one query: text, image or a cached frame")
        entries = [e.item for e in self.frames.items(camera or None)]
        entries = [f for f in entries if f.global_embeddings.size]
        if text is not None:
            query = self.check_queries([text])
            q = self.text_embeddings(query, TARGET_IMAGE, deadline)
        elif image is not None:
            q = self.encode_query_image(image, deadline)[None, :]
        else:
            q = frame.global_embeddings[:1]  # type: ignore[union-attr]
        if not entries:
            return []
        globals_ = np.stack([f.global_embeddings[0] for f in entries])
        cos = cosine_matrix(q, globals_)[0]
        score = self.image_match(q, globals_)[0]
        order = np.argsort(-score, kind="stable")
        if top_k > 0:
            order = order[:top_k]
        return [FrameMatchResult(entries[i].camera, entries[i].stamp_ns, float(cos[i]),
                                 float(score[i]), entries[i].meta) for i in order]


def add_positions(result: GroundingResult, depth_m: np.ndarray | None,
                  intrinsics: Intrinsics | None, missing_status: str | None = None,
                  **kwargs: Any) -> GroundingResult:
    """The result with a 3D estimate on every object (see core.depth.estimate_position).

    missing_status: the reason to give every object when depth could not be paired (e.g.
    'stale_depth'); overrides the computation.
    """
    objects = []
    for obj in result.objects:
        if missing_status is not None:
            pos = Position3D.invalid(missing_status)
        else:
            pos = estimate_position(obj.box, result.image_size, depth_m, intrinsics, **kwargs)
        objects.append(replace(obj, position=pos))
    return replace(result, objects=objects)

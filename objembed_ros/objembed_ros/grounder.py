"""The one object the node and the CLI share: proposer + ObjEmbed encoder + caches.

Embed once, query many (like segment-anything's predictor): `encode_frame` runs the
proposals and ONE ObjEmbed image pass and keeps the frame's object and global embeddings;
`ground` then costs one text pass (cached by text) plus a matrix product. No ROS here.

Threading: the torch model is used by one thread at a time (a lock around every image and
text pass, including the proposer). Cached text embeddings are served without the lock, so
a service call whose queries were seen before never waits behind a frame being encoded.
Scoring is numpy on cached arrays and needs no lock.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from objembed_ros.core.boxes import validate_boxes
from objembed_ros.core.depth import Intrinsics, Position3D, estimate_position
from objembed_ros.core.errors import InputError
from objembed_ros.core.frames import FrameRing
from objembed_ros.core.image import check_image
from objembed_ros.core.results import (
    QUERY_TEXT,
    FrameMatchResult,
    GroundedBox,
    GroundingResult,
)
from objembed_ros.core.scoring import cosine_matrix, grounding_scores, image_scores

__all__ = [
    "CachedFrame", "FrameMatchResult", "GroundedBox", "Grounder", "GrounderBusy",
    "GrounderConfig", "GroundingResult", "add_positions",
]

PROPOSERS = ("wedetect", "external", "whole_image")
DTYPES = ("float32", "bfloat16", "float16")
TARGET_OBJECT = "object"
TARGET_IMAGE = "image"


class GrounderBusy(TimeoutError):
    """The model stayed busy (encoding a frame) past the caller's deadline."""


@dataclass
class GrounderConfig:
    """How to build a Grounder; the node fills it from its parameters."""

    checkpoint: str
    proposer: str = "wedetect"  # one of PROPOSERS
    wedetect_checkpoint: str = ""
    num_proposals: int = 100
    device: str = "cpu"
    dtype: str = "float32"  # one of DTYPES
    attn: str = "auto"
    max_boxes: int = 300
    text_cache_size: int = 256
    frame_cache_size: int = 8  # per camera
    max_query_tokens: int = 256
    # Object projector runtime (objembed_ros.accel): falls back tensorrt -> onnxruntime ->
    # torch with a reason in `Grounder.backend`.
    projector_backend: str = "torch"  # one of objembed_ros.accel.backends.BACKENDS
    engine_cache_dir: str = ""  # ONNX exports and TensorRT engines; "" = ~/.cache/objembed_ros
    allow_engine_build: bool = True  # export/build missing or stale graphs on first use
    text_cuda_graphs: bool = False  # CUDA only: replay captured graphs for the text pass
    # "exact" (PIL on the host, the official pixels), "device" (one uint8 upload, resize and
    # letterbox on the model's device) or "auto" (device on CUDA, exact elsewhere).
    preprocess: str = "auto"  # one of objembed_ros.encoder.preprocess.PREPROCESS_CHOICES


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


class _Proposer(Protocol):
    def propose(self, rgb: np.ndarray) -> Any: ...


def _numpy(x: Any) -> np.ndarray:
    """torch tensor or array -> float32 numpy on the host."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _embeddings(x: Any, n: int) -> np.ndarray:
    """(n, D) float32; with no boxes a (0, D) array, never a reshape error."""
    arr = _numpy(x)
    dim = arr.shape[-1] if arr.ndim >= 2 else 0
    return arr.reshape(n, dim) if n else np.zeros((0, dim), np.float32)


def _check_rgb(rgb: np.ndarray) -> None:
    """RGB only: the proposer and the encoder treat grey and alpha differently, so the caller
    converts first (the node's convert.image_to_rgb, the CLI's core.resize.to_rgb)."""
    if check_image(rgb).shape[2] != 3:
        raise InputError(f"image must be HxWx3 RGB, got shape {rgb.shape}")


class Grounder:
    """Proposals + ObjEmbed + caches. Build with `Grounder.load(config)`, or pass already
    built parts (tests, the CLI)."""

    def __init__(self, encoder: Any, proposer: _Proposer | None, config: GrounderConfig) -> None:
        self.encoder = encoder
        self.proposer = proposer
        self.config = config
        self.frames: FrameRing[CachedFrame] = FrameRing(max(config.frame_cache_size, 1))
        self._model_lock = threading.Lock()
        self.logit_params = encoder.score_params  # the four learned score scalars
        self.backend = "projector backend: torch"  # what runs the projector, and why
        from objembed_ros.encoder.preprocess import use_preprocess_mode  # torch: lazily

        self.preprocess = use_preprocess_mode(config.preprocess, encoder, proposer)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, config: GrounderConfig) -> Grounder:
        """Load the encoder (and WeDetect when asked). Raises FileNotFoundError / ValueError /
        the encoder's CheckpointError with a message that names the problem."""
        import torch

        from objembed_ros.encoder.model import ObjEmbedEncoder

        if config.proposer not in PROPOSERS:
            raise ValueError(f"proposer must be one of {PROPOSERS}, got {config.proposer!r}")
        if config.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {config.dtype!r}")
        if not config.checkpoint:
            raise FileNotFoundError("no ObjEmbed checkpoint given (parameter 'checkpoint')")
        if not Path(config.checkpoint).is_dir():
            raise FileNotFoundError(f"ObjEmbed checkpoint directory not found: "
                                    f"{config.checkpoint}")
        dtype = getattr(torch, config.dtype)
        proposer: _Proposer | None = None
        if config.proposer == "wedetect":
            if not config.wedetect_checkpoint or not Path(config.wedetect_checkpoint).is_file():
                raise FileNotFoundError(
                    f"WeDetect checkpoint file not found: {config.wedetect_checkpoint!r} "
                    "(parameter 'wedetect_checkpoint'; or set proposer to 'external' or "
                    "'whole_image')")
            from objembed_ros.proposals.wedetect import WeDetectProposer

            # WeDetect runs in float32 on CPU; half precision only on CUDA.
            det_dtype = dtype if config.device.startswith("cuda") else torch.float32
            proposer = WeDetectProposer.from_checkpoint(
                config.wedetect_checkpoint, device=config.device, dtype=det_dtype,
                num_proposals=config.num_proposals)
        encoder = ObjEmbedEncoder.from_pretrained(
            config.checkpoint, device=config.device, dtype=dtype, attn=config.attn,
            max_boxes=config.max_boxes, text_cache_size=config.text_cache_size)
        grounder = cls(encoder, proposer, config)
        if config.projector_backend != "torch":
            cache_dir = config.engine_cache_dir or str(
                Path.home() / ".cache" / "objembed_ros" / "engines")
            grounder.backend = encoder.set_projector_backend(
                config.projector_backend, cache_dir=cache_dir,
                allow_build=config.allow_engine_build).describe()
        if config.text_cuda_graphs:
            encoder.enable_text_cuda_graphs(True)
        return grounder

    def close(self) -> None:
        """Drop the model and caches (lifecycle cleanup); frees CUDA memory when used."""
        with self._model_lock:
            self.frames.clear()
            if self.encoder is not None:
                self.encoder.text_cache.clear()
            self.encoder = None
            self.proposer = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # torch missing or CUDA unusable: nothing to free
            pass

    # -- the model lock -----------------------------------------------------------------
    @contextmanager
    def _locked(self, deadline: float | None) -> Iterator[None]:
        """Hold the model lock; GrounderBusy when it is not free before the deadline."""
        timeout = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._model_lock.acquire(timeout=timeout):
            raise GrounderBusy("timeout: the model is busy encoding a frame")
        try:
            if self.encoder is None:
                raise RuntimeError("model not loaded")
            yield
        finally:
            self._model_lock.release()

    # -- image pass -----------------------------------------------------------------------
    def encode_frame(self, rgb: np.ndarray, stamp_ns: int = 0, camera: str = "",
                     boxes: np.ndarray | None = None, box_scores: np.ndarray | None = None,
                     meta: Any = None, cache: bool = True) -> CachedFrame:
        """Proposals (or the given boxes) + one ObjEmbed pass -> a CachedFrame.

        boxes: (N, 4) xyxy source pixels from another detector; when None the configured
        proposer runs ('external' without boxes encodes no boxes: image-level only).
        cache: add the frame to this Grounder's per-camera ring.
        """
        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with self._locked(None), self.encoder.preprocessor.uploader.sharing(rgb):
            if boxes is not None:
                boxes_arr = validate_boxes(boxes, w, h, self.config.max_boxes).astype(np.float32)
                scores = (np.full(len(boxes_arr), np.nan, np.float32) if box_scores is None
                          else np.asarray(box_scores, np.float32).reshape(-1))
                source = "external"
            elif self.config.proposer == "whole_image" or self.proposer is None:
                boxes_arr = (np.array([[0, 0, w, h]], np.float32)
                             if self.config.proposer == "whole_image"
                             else np.zeros((0, 4), np.float32))
                scores = np.full(len(boxes_arr), np.nan, np.float32)
                source = self.config.proposer
            else:
                props = self.proposer.propose(rgb)
                boxes_arr = np.asarray(props.boxes, np.float32).reshape(-1, 4)
                scores = np.asarray(props.scores, np.float32).reshape(-1)
                source = props.source
            if scores.shape[0] != boxes_arr.shape[0]:  # before the pass, not after it
                raise InputError(f"{boxes_arr.shape[0]} boxes but {scores.shape[0]} box scores")
            t1 = time.perf_counter()
            encoded = self.encoder.encode_image(rgb, boxes_arr)
            t2 = time.perf_counter()
        timings["proposals"] = t1 - t0
        timings["encode"] = t2 - t1
        for key, value in encoded.timings.items():
            timings[f"encoder.{key}"] = float(value)
        frame = CachedFrame(
            camera=camera, stamp_ns=int(stamp_ns), rgb=rgb, image_size=(w, h),
            boxes=boxes_arr, proposal_scores=scores,
            object_embeddings=_embeddings(encoded.object_embeddings, len(boxes_arr)),
            iou_logits=_numpy(encoded.iou_logits).reshape(-1),
            global_embeddings=_numpy(encoded.global_embeddings),
            proposal_source=source, timings=timings, meta=meta,
        )
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
        """Tokens of the user text (the tokenizer is thread-safe and needs no model lock)."""
        if self.encoder is None:
            raise RuntimeError("model not loaded")
        return len(self.encoder.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_embeddings(self, texts: Sequence[str], target: str = TARGET_OBJECT,
                        deadline: float | None = None) -> np.ndarray:
        """(Q, D) float32 embeddings.

        Texts already in the encoder's (thread-safe) text cache are served without the model
        lock, so a query repeated during a frame pass never waits behind inference.
        """
        cache = self.encoder.text_cache
        hits = [cache.get((target, t)) for t in texts]
        if any(h is None for h in hits):
            with self._locked(deadline):
                return _numpy(self.encoder.encode_text(list(texts), target=target))
        return np.stack([_numpy(h) for h in hits]) if hits else np.zeros((0, 0), np.float32)

    def text_cache_stats(self) -> dict[str, int]:
        return self.encoder.text_cache.stats() if self.encoder is not None else {}

    # -- grounding ------------------------------------------------------------------------
    def ground(self, texts: Sequence[str], frame: CachedFrame, top_k: int = 0,
               min_score: float = 0.0, deadline: float | None = None,
               with_image_score: bool = False) -> list[GroundingResult]:
        """Per query, the frame's boxes sorted by score (top_k <= 0 keeps all)."""
        queries = self.check_queries(texts)
        text = self.text_embeddings(queries, TARGET_OBJECT, deadline)
        image = None
        if with_image_score and frame.global_embeddings.size:
            image_text = self.text_embeddings(queries, TARGET_IMAGE, deadline)
            image = self.image_match(image_text, frame.global_embeddings[:1])[:, 0]
        return self._score(queries, text, frame, top_k, min_score, image, proposal_index=True)

    def ground_boxes(self, texts: Sequence[str], frame: CachedFrame, boxes: np.ndarray,
                     top_k: int = 0, min_score: float = 0.0,
                     deadline: float | None = None) -> list[GroundingResult]:
        """Score caller-supplied boxes: one image pass on the cached frame's pixels."""
        queries = self.check_queries(texts)
        w, h = frame.image_size
        boxes_arr = validate_boxes(boxes, w, h, self.config.max_boxes).astype(np.float32)
        text = self.text_embeddings(queries, TARGET_OBJECT, deadline)
        with self._locked(deadline):
            encoded = self.encoder.encode_image(frame.rgb, boxes_arr)
        supplied = CachedFrame(
            camera=frame.camera, stamp_ns=frame.stamp_ns, rgb=frame.rgb,
            image_size=frame.image_size, boxes=boxes_arr,
            proposal_scores=np.full(len(boxes_arr), np.nan, np.float32),
            object_embeddings=_embeddings(encoded.object_embeddings, len(boxes_arr)),
            iou_logits=_numpy(encoded.iou_logits).reshape(-1),
            global_embeddings=frame.global_embeddings, proposal_source="supplied",
            meta=frame.meta)
        return self._score(queries, text, supplied, top_k, min_score, None, proposal_index=False)

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
        p = self.logit_params
        return image_scores(image_text, globals_, p.logit_image_log_scale, p.logit_image_bias)

    def encode_query_image(self, rgb: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """(D,) coarse global embedding of an image used as a query (the official image-query
        prompt, no boxes)."""
        _check_rgb(rgb)
        with self._locked(deadline):
            return _numpy(self.encoder.encode_image_query(rgb)).reshape(-1)

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

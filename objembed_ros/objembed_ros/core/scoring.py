"""ObjEmbed scores from embeddings: the one implementation (numpy; spec section 6).

grounding score  = sigmoid(cos(t, o_i) * exp(logit_log_scale) + logit_bias) * sigmoid(u_i)
image retrieval  = sigmoid(cos(t, g) * exp(logit_image_log_scale) + logit_image_bias)

The grounder, the CLI and ``ObjEmbedEncoder.score_objects`` all score here; torch tensors
are copied to the host as numpy first. The node publishes the factors separately:
``similarity`` (the first sigmoid), ``iou`` (sigmoid of the iou logit) and ``cosine``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogitParams:
    """The four learned scalars of an ObjEmbed checkpoint (as Python floats)."""

    logit_log_scale: float
    logit_bias: float
    logit_image_log_scale: float
    logit_image_bias: float


@dataclass
class GroundingScores:
    """(Q, N) numpy scores of Q queries against N boxes: score = similarity * iou,
    similarity = sigmoid(cos * exp(logit_log_scale) + logit_bias), iou = sigmoid(iou logit)
    broadcast over queries, cosine the raw cosine similarity."""

    score: np.ndarray
    similarity: np.ndarray
    iou: np.ndarray
    cosine: np.ndarray


def host_float32(x: Any) -> np.ndarray:
    """A torch tensor (any device or float dtype, duck-typed: no torch import here) or an
    array -> a float32 numpy array on the host."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def cosine_matrix(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(Q, D) x (N, D) -> (Q, N) cosine similarities (rows normalised, F.normalize eps)."""
    a, b = np.asarray(a), np.asarray(b)
    an = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), eps)
    bn = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), eps)
    return an @ bn.T


def object_similarity(cosine: np.ndarray, logit_log_scale: float,
                      logit_bias: float) -> np.ndarray:
    """sigmoid(cos * exp(logit_log_scale) + logit_bias): how well a query matches an object
    (the first factor of the grounding score; the object memory ranks entries by it)."""
    return sigmoid(np.asarray(cosine) * np.exp(logit_log_scale) + logit_bias)


def grounding_scores(text: np.ndarray, objects: np.ndarray, iou_logits: np.ndarray,
                     logit_log_scale: float, logit_bias: float) -> GroundingScores:
    """Score Q object queries (Q, D) against the N boxes (N, D), (N,) of one frame."""
    text = np.atleast_2d(np.asarray(text))
    objects = np.asarray(objects).reshape(-1, text.shape[-1])
    iou_logits = np.asarray(iou_logits).reshape(-1)
    cos = cosine_matrix(text, objects)
    sim = object_similarity(cos, logit_log_scale, logit_bias)
    iou = np.broadcast_to(sigmoid(iou_logits)[None, :], sim.shape)
    return GroundingScores(score=sim * iou, similarity=sim, iou=np.array(iou), cosine=cos)


def image_scores(text: np.ndarray, images: np.ndarray, logit_image_log_scale: float,
                 logit_image_bias: float) -> np.ndarray:
    """(Q, D) query embeddings x (M, D) coarse global image embeddings -> (Q, M)
    probabilities."""
    cos = cosine_matrix(np.atleast_2d(text), np.atleast_2d(images))
    return sigmoid(cos * np.exp(logit_image_log_scale) + logit_image_bias)

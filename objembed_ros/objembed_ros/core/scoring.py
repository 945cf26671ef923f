"""ObjEmbed scores from embeddings, numpy only (spec section 6).

grounding score  = sigmoid(cos(t, o_i) * exp(logit_log_scale) + logit_bias) * sigmoid(u_i)
image retrieval  = sigmoid(cos(t, g) * exp(logit_image_log_scale) + logit_image_bias)

The node keeps frames and queries as numpy and publishes the factors separately:
``similarity`` (the first sigmoid), ``iou`` (sigmoid of the iou logit) and ``cosine``.
The torch twins live in ``objembed_ros.encoder.model``.
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
    """(Q, N) scores of Q queries against N boxes: score = similarity * iou, similarity =
    sigmoid(cos * exp(logit_log_scale) + logit_bias), iou = sigmoid(iou logit) broadcast over
    queries, cosine the raw cosine similarity. numpy arrays from this module; torch tensors
    when the encoder scores torch inputs."""

    score: Any
    similarity: Any
    iou: Any
    cosine: Any


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
    """Score Q object queries against N boxes of one frame (all factors returned)."""
    text = np.atleast_2d(np.asarray(text))
    objects = np.asarray(objects).reshape(-1, text.shape[-1])
    iou_logits = np.asarray(iou_logits).reshape(-1)
    cos = cosine_matrix(text, objects)
    sim = object_similarity(cos, logit_log_scale, logit_bias)
    iou = np.broadcast_to(sigmoid(iou_logits)[None, :], sim.shape)
    return GroundingScores(score=sim * iou, similarity=sim, iou=np.array(iou), cosine=cos)


def image_scores(text: np.ndarray, images: np.ndarray, logit_image_log_scale: float,
                 logit_image_bias: float) -> np.ndarray:
    """(Q, D) global-text embeddings x (M, D) image embeddings -> (Q, M) probabilities."""
    cos = cosine_matrix(np.atleast_2d(text), np.atleast_2d(images))
    return sigmoid(cos * np.exp(logit_image_log_scale) + logit_image_bias)

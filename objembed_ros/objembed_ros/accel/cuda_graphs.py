"""CUDA graphs for the text pass: a new query costs one graph replay instead of ~300 launches.

The text pass (spec section 6) is short (~20-60 tokens) and launch-bound on a GPU: the
language model's kernels are tiny, so Python + launch overhead dominates. We pad each batch
to a static (batch, length) bucket and replay a captured graph per bucket.

Why padding does not change the numbers: sequences are right-padded and attention is
causal, so a real token (the read-out token included) attends only to real tokens before
it; padded positions only influence themselves. The mask is passed as a prepared 4-D
additive mask (causal AND key-valid), which transformers uses as-is -- no data-dependent
mask construction (host syncs are illegal during capture). Positions are plain aranges, as
in the eager text pass. With flash_attention_2 models the captured forward uses sdpa (FA2's
padding path unpads on the host); for these lengths sdpa is as fast.

``use_graphs=False`` runs the same bucketed static-shape forward eagerly: that is the CPU
test of the padding/mask logic; capture itself is only tested on a GPU.
Any capture failure logs once and disables graphs (the encoder then runs its eager path).
:func:`install_text_graphs` puts a runner into the encoder's ``text_runner`` hook.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from objembed_ros.encoder.model import ObjEmbedEncoder

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (32, 64, 128, 256)
BATCH_BUCKETS = (1, 2, 4, 8)


def _bucket(value: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= value), None)


@contextlib.contextmanager
def _attn_impl(config: Any, impl: str) -> Iterator[None]:
    old = config._attn_implementation
    if old == "flash_attention_2":
        config._attn_implementation = impl
    try:
        yield
    finally:
        config._attn_implementation = old


class TextGraphRunner:
    """Bucketed static-shape text forward, captured as CUDA graphs when on CUDA.

    Call with CPU ``ids`` / ``mask`` (B, L) long (right-padded, as the encoder builds them);
    returns (B, L, D) last hidden states on the device, or None when the shape exceeds the
    buckets or graphs were disabled after a failure (the caller then runs eagerly). The
    returned tensor is a view of a static buffer: read from it before the next call.
    """

    def __init__(self, language_model: Any, device: torch.device | str,
                 use_graphs: bool | None = None, length_buckets: tuple[int, ...] = LENGTH_BUCKETS,
                 batch_buckets: tuple[int, ...] = BATCH_BUCKETS, warmup: int = 2) -> None:
        self.lm = language_model
        self.device = torch.device(device)
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        if self.use_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.length_buckets, self.batch_buckets = length_buckets, batch_buckets
        self.warmup = warmup
        self.disabled = False
        self._graphs: dict[tuple[int, int], tuple[Any, dict[str, torch.Tensor], torch.Tensor]] = {}
        self._pool = None

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.embed_tokens.weight.dtype

    def _mask4d(self, mask: torch.Tensor) -> torch.Tensor:
        b, n = mask.shape
        causal = torch.ones((n, n), dtype=torch.bool, device=mask.device).tril()
        allowed = causal[None, None] & mask.bool()[:, None, None, :]
        neg = torch.finfo(self.dtype).min
        return torch.zeros((b, 1, n, n), dtype=self.dtype, device=mask.device).masked_fill(
            ~allowed, neg)

    def _forward(self, ids: torch.Tensor, mask4d: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        pos = torch.arange(n, device=ids.device).view(1, 1, -1).expand(3, b, -1)
        with _attn_impl(self.lm.config, "sdpa"):
            return self.lm(input_ids=ids, attention_mask=mask4d, position_ids=pos,
                           use_cache=False).last_hidden_state

    def _pad(self, ids: torch.Tensor, mask: torch.Tensor, bb: int, lb: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = ids.shape
        pids = torch.zeros((bb, lb), dtype=torch.long)
        pmask = torch.zeros((bb, lb), dtype=torch.long)
        pids[:b, :n], pmask[:b, :n] = ids, mask
        pmask[b:, 0] = 1  # padded batch rows: one valid token so no row is fully masked
        return pids, pmask

    def _capture(self, key: tuple[int, int]) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
        bb, lb = key
        dev = self.device
        static = {"ids": torch.zeros((bb, lb), dtype=torch.long, device=dev),
                  "mask": self._mask4d(torch.ones((bb, lb), dtype=torch.long, device=dev))}
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._forward(static["ids"], static["mask"])
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._forward(static["ids"], static["mask"])
        return graph, static, out

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        if self.disabled:
            return None
        b, n = ids.shape
        bb, lb = _bucket(b, self.batch_buckets), _bucket(n, self.length_buckets)
        if bb is None or lb is None:
            return None
        pids, pmask = self._pad(ids, mask, bb, lb)
        if not self.use_graphs:
            dev_ids = pids.to(self.device)
            return self._forward(dev_ids, self._mask4d(pmask.to(self.device)))[:b, :n]
        try:  # pragma: no cover - CUDA only
            # cuda:N, N > 0: capture, the side stream and replay use the current device's
            # streams, so make the model's device current (the caller's stream stays).
            with torch.cuda.device(self.device):
                entry = self._graphs.get((bb, lb))
                if entry is None:
                    entry = self._graphs[(bb, lb)] = self._capture((bb, lb))
                graph, static, out = entry
                static["ids"].copy_(pids, non_blocking=True)
                static["mask"].copy_(self._mask4d(pmask.to(self.device, non_blocking=True)))
                graph.replay()
                return out[:b, :n]
        except Exception as exc:  # pragma: no cover - CUDA only
            log.warning("text-pass CUDA graph capture failed (%s); using the eager path", exc)
            self.disabled = True
            self._graphs.clear()
            return None


def install_text_graphs(encoder: ObjEmbedEncoder, enabled: bool = True) -> bool:
    """Replay captured CUDA graphs for the encoder's text pass (CUDA only; returns whether
    on). Shapes beyond the buckets, or any capture failure, run the eager pass."""
    encoder.text_runner = None
    if enabled and encoder.device.type == "cuda":
        encoder.text_runner = TextGraphRunner(encoder.qwen.language_model, encoder.device)
    return encoder.text_runner is not None

"""ObjEmbedEncoder: one image pass for all boxes, short cached text passes, and scores.

Embed once, query many: :meth:`ObjEmbedEncoder.encode_image` runs the vision tower, the
object projector and the language model once per frame and returns an :class:`EncodedFrame`
(object embeddings, iou logits, global embeddings); :meth:`encode_text` embeds queries
(cached, LRU); :meth:`score_objects` / :meth:`score_images` call the one scoring
implementation in ``core.scoring`` on host copies.

Follows the ObjEmbed spec section 5 step by step (see ``_image_pass``). Box policy: (N, 4)
float xyxy in the image's own pixels; NaN/inf rows raise :class:`InputError` naming the row;
inverted corners are sorted; boxes are clipped to the image; zero-size boxes are allowed;
N = 0 is allowed (a dummy whole-image box runs and is dropped); N > max_boxes raises.

Devices: CPU float32 is deterministic (two runs give identical bits). On CUDA use bf16/fp16
weights; RoIAlign runs in float32 as in the official code, box coordinates are rescaled in
the model dtype (as the official inference does), and no host round trip happens inside
the forward except M-RoPE index computation, which runs on CPU input ids before upload.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from objembed_ros.core.boxes import validate_boxes
from objembed_ros.core.cache import LRUCache
from objembed_ros.core.errors import InputError
from objembed_ros.core.resize import PreprocessedImage
from objembed_ros.core.scoring import (
    GroundingScores,
    LogitParams,
    grounding_scores,
    host_float32,
    image_scores,
)
from objembed_ros.encoder import prompts, transformers_compat
from objembed_ros.encoder.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from objembed_ros.encoder.hooks import ProjectorHook, TextRunnerHook
from objembed_ros.encoder.preprocess import ImagePreprocessor
from objembed_ros.encoder.projector import dummy_box

__all__ = ["CheckpointError", "EncodedFrame", "ObjEmbedEncoder", "logit_params_of"]


@dataclass
class EncodedFrame:
    """The result of one image pass.

    object_embeddings: (N, D) float32, o_i (read at the first ``<object>`` of pair i).
    iou_logits: (N,) float32, u_i = logit_iou_proj(hidden at the second token of pair i).
    global_embeddings: (G, D) float32 at the ``<global>`` tokens in token order (coarse then
        detailed for use_two_tokens 2; G = 2 for layouts 1 and 2, 1 for layout 0).
    boxes: (N, 4) float64 numpy xyxy in original pixels after validation/repair/clipping.
    image_size: (W, H) of the original image. resized_size: (W, H) fed to the model.
    timings: seconds per stage (preprocess, vision, projector, llm, readout, total); on
        CUDA the stages are only accurate with ``ObjEmbedEncoder.sync_timings = True``.
    """

    object_embeddings: torch.Tensor
    iou_logits: torch.Tensor
    global_embeddings: torch.Tensor
    boxes: np.ndarray
    image_size: tuple[int, int]
    resized_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def logit_params_of(projector: Any) -> LogitParams:
    """The four learned logit scalars of a loaded projector, as Python floats."""
    return LogitParams(*(float(getattr(projector, n).detach().float().cpu()[0]) for n in (
        "logit_log_scale", "logit_bias", "logit_image_log_scale", "logit_image_bias")))


class ObjEmbedEncoder:
    """ObjEmbed-2B/4B (or a tiny test checkpoint) as an image/text embedding encoder."""

    def __init__(self, loaded: LoadedCheckpoint, max_boxes: int = 300,
                 text_cache_size: int = 1024) -> None:
        self.ckpt = loaded
        self.qwen = loaded.qwen
        self.projector = loaded.projector
        self.tokenizer = loaded.tokenizer
        self.ids = loaded.token_ids
        self.image_config = loaded.image_config
        self.preprocessor = ImagePreprocessor(self.image_config)  # mode: encoder/preprocess.py
        self.use_two_tokens = loaded.attrs.use_two_tokens
        self.max_boxes = int(max_boxes)
        self.text_cache: LRUCache[tuple[str, str], torch.Tensor] = LRUCache(text_cache_size)
        self.score_params = logit_params_of(self.projector)
        self.sync_timings = False
        # rendered image prompts by (number of boxes, user text or None for the default)
        self._prompt_cache: LRUCache[tuple[int, str | None], list[int]] = LRUCache(512)
        # Hooks that objembed_ros.accel fills in (see encoder.hooks); None = plain torch
        # projector and the eager text pass.
        self.projector_backend: ProjectorHook | None = None
        self.text_runner: TextRunnerHook | None = None
        # CUDA: text passes run on their own high-priority stream, beside a frame pass on the
        # default stream (the Grounder then lets them skip the frame's model lock).
        self.text_beside_frames = self.device.type == "cuda"
        self._text_stream: Any = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, attn: str = "auto",
                        max_boxes: int = 300, text_cache_size: int = 1024) -> ObjEmbedEncoder:
        """Load an official-format checkpoint directory (offline). Raises CheckpointError.

        attn: "auto" (flash_attention_2 when importable on CUDA, else sdpa), "sdpa",
        "eager" or "flash_attention_2".
        """
        return cls(load_checkpoint(path, device=device, dtype=dtype, attn=attn),
                   max_boxes=max_boxes, text_cache_size=text_cache_size)

    @property
    def device(self) -> torch.device:
        return self.projector.logit_pos_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.logit_pos_embedding.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.projector.hidden_size

    # ------------------------------------------------------------------ prompts
    def image_prompt_ids(self, num_boxes: int, num_image_tokens: int,
                         user_text: str | None = None) -> list[int]:
        """Token ids of the image prompt with the image pad expanded (N boxes)."""
        def render() -> list[int]:
            text = user_text if user_text is not None else prompts.image_user_text(
                num_boxes, self.use_two_tokens)
            return prompts.tokenize(self.tokenizer, prompts.render_chat(self.tokenizer, text,
                                                                        with_image=True))

        ids = self._prompt_cache.get_or_compute((num_boxes, user_text), render)
        return prompts.expand_image_pad(ids, self.ids.image_pad, num_image_tokens)

    # ------------------------------------------------------------------ image pass
    def _sync(self) -> None:
        if self.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def preprocess(self, rgb: np.ndarray) -> PreprocessedImage:
        """Validate and preprocess an image (InputError on bad input)."""
        return self.preprocessor(rgb, self.device, self.dtype)

    @torch.inference_mode()
    def encode_image(self, rgb: np.ndarray, boxes: Any = None) -> EncodedFrame:
        """One forward pass for all boxes of one image.

        rgb: HxWx3 uint8 RGB (HxWx4 RGBA is composited on white; HxW grey is replicated).
        boxes: (N, 4) xyxy in the image's pixels, N >= 0 (see the module box policy).
        """
        t0 = time.perf_counter()
        pre = self.preprocess(rgb)
        height, width = pre.original_hw
        clean = validate_boxes(boxes, width, height, self.max_boxes)
        t1 = time.perf_counter()
        out = self._image_pass(pre, clean, None)
        out.timings["preprocess"] = t1 - t0
        out.timings["total"] = time.perf_counter() - t0
        return out

    @torch.inference_mode()
    def encode_image_query(self, rgb: np.ndarray) -> torch.Tensor:
        """(D,) embedding of an image used as a query (the coarse ``<global>`` of the
        official query prompt, no boxes); compare with frames' coarse global embeddings
        via :meth:`score_images`."""
        pre = self.preprocess(rgb)
        frame = self._image_pass(pre, np.zeros((0, 4)), prompts.IMAGE_QUERY_TEXT)
        return frame.global_embeddings[0]

    def _rescale_boxes(self, boxes: np.ndarray, pre: PreprocessedImage) -> torch.Tensor:
        """Original-pixel xyxy -> resized pixels; the ratio first, as the official code."""
        mh, mw = pre.merged_hw
        dtype, dev = self.dtype, self.device
        if boxes.shape[0] == 0:  # the dummy box runs and its outputs are dropped
            return dummy_box(pre.merged_hw, dtype, dev)
        height, width = pre.original_hw
        b = torch.as_tensor(boxes, dtype=dtype).to(dev)
        ratio = (torch.tensor([width, height, width, height], dtype=dtype, device=dev)
                 / torch.tensor([mw * 32, mh * 32, mw * 32, mh * 32], dtype=dtype, device=dev))
        return b / ratio

    def _image_pass(self, pre: PreprocessedImage, boxes: np.ndarray,
                    user_text: str | None) -> EncodedFrame:
        timings: dict[str, float] = {}
        dev, dtype = self.device, self.dtype
        mh, mw = pre.merged_hw
        n_img = mh * mw
        n = int(boxes.shape[0])

        # 1. vision tower: merged tokens E and the deepstack maps
        t = time.perf_counter()
        pixel_values = self.preprocessor.pixels_on(pre.pixel_values, dev)
        grid_thw = torch.tensor([pre.grid_thw], dtype=torch.long)
        embeds, deepstack = transformers_compat.image_features(self.qwen, pixel_values,
                                                               grid_thw.to(dev))
        self._sync()
        timings["vision"] = time.perf_counter() - t

        # 2-7. object projector: position add, pyramid, RoIAlign, R_i + P_i, pos tokens
        t = time.perf_counter()
        rboxes = self._rescale_boxes(boxes, pre)
        projector = self.projector_backend or self.projector
        obj_tok, second_tok, image_pos = projector(
            embeds.to(dtype), deepstack[-2].to(dtype), deepstack[-1].to(dtype), rboxes,
            (mh, mw))
        self._sync()
        timings["projector"] = time.perf_counter() - t

        # 8. fill the prompt: image pads get E + pos, pair i gets (R_i + P_i, pos_i + P_i)
        t = time.perf_counter()
        ids = self.image_prompt_ids(n, n_img, user_text)
        ids_cpu = torch.tensor([ids], dtype=torch.long)
        img_pos = (ids_cpu[0] == self.ids.image_pad).nonzero().squeeze(1)
        obj_pos = (ids_cpu[0] == self.ids.object).nonzero().squeeze(1)
        glob_pos = (ids_cpu[0] == self.ids.global_).nonzero().squeeze(1)
        if img_pos.numel() != n_img or obj_pos.numel() != 2 * n:
            raise RuntimeError(f"prompt layout mismatch: {img_pos.numel()} image pads for "
                               f"{n_img} tokens, {obj_pos.numel()} object tokens for {n} boxes")
        position_ids = transformers_compat.rope_positions(self.qwen, ids_cpu, grid_thw,
                                                          self.ids.image_pad)
        input_ids = ids_cpu.to(dev)
        lm = self.qwen.language_model
        inputs_embeds = lm.embed_tokens(input_ids)
        img_pos_d, obj_pos_d = img_pos.to(dev), obj_pos.to(dev)
        inputs_embeds[0, img_pos_d] = (embeds + image_pos).to(inputs_embeds.dtype)
        if n > 0:
            pairs = torch.stack((obj_tok, second_tok), dim=1).flatten(0, 1)
            inputs_embeds[0, obj_pos_d] = pairs.to(inputs_embeds.dtype)
        visual_mask = torch.zeros((1, len(ids)), dtype=torch.bool, device=dev)
        visual_mask[0, img_pos_d] = True
        # An explicit all-ones mask, as the official processor passes: with None,
        # transformers 4.57 infers "packed sequences" from the non-monotonic M-RoPE text
        # positions of the image block and would attend block-diagonally.
        mask = torch.ones((1, len(ids)), dtype=torch.long, device=dev)
        hidden = lm(input_ids=None, inputs_embeds=inputs_embeds,
                    position_ids=position_ids.to(dev), attention_mask=mask, use_cache=False,
                    visual_pos_masks=visual_mask,
                    deepstack_visual_embeds=[d.to(dtype) for d in deepstack],
                    ).last_hidden_state[0]
        self._sync()
        timings["llm"] = time.perf_counter() - t

        # 9. read out
        t = time.perf_counter()
        first, second = obj_pos_d[0::2], obj_pos_d[1::2]
        objects = hidden[first].float()
        ious = (self.projector_backend or self.projector).iou_logits(hidden[second]).float()
        globals_ = hidden[glob_pos.to(dev)].float()
        self._sync()
        timings["readout"] = time.perf_counter() - t
        height, width = pre.original_hw
        rh, rw = pre.resized_hw
        return EncodedFrame(object_embeddings=objects, iou_logits=ious,
                            global_embeddings=globals_, boxes=boxes,
                            image_size=(width, height), resized_size=(rw, rh), timings=timings)

    # ------------------------------------------------------------------ text pass
    def text_prompt_ids(self, text: str, target: str) -> list[int]:
        """Token ids of a text-pass prompt (spec section 6)."""
        rendered = prompts.render_chat(self.tokenizer, prompts.query_text(text, target),
                                       with_image=False)
        return prompts.tokenize(self.tokenizer, rendered)

    def _on_text_stream(self) -> contextlib.AbstractContextManager[Any]:
        """On CUDA, the text pass's own stream (high priority: its few small kernels go
        ahead of a frame pass's queue), with its device current; nothing elsewhere."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if self._text_stream is None:
            self._text_stream = torch.cuda.Stream(self.device, priority=-1)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(self._text_stream))
        return stack

    @torch.inference_mode()
    def encode_text(self, texts: str | list[str], target: str = "object") -> torch.Tensor:
        """(Q, D) float32 query embeddings on the host (CPU tensors): ``<local_text>``
        ("object") or ``<global_text>`` ("image") last hidden states. Cached per
        (target, text) in a bounded LRU of host copies, so a cache hit never touches the
        device (no stream sync); uncached texts run as one right-padded batch, on CUDA on
        the text stream, copied to the host on that stream."""
        if target not in ("object", "image"):
            raise ValueError(f"target must be 'object' or 'image', got {target!r}")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for q in texts:
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"query texts must be non-empty strings, got {q!r}")
        found: dict[str, torch.Tensor] = {}
        todo: list[str] = []
        for q in texts:
            hit = self.text_cache.get((target, q))
            if hit is not None:
                found[q] = hit
            elif q not in todo:
                todo.append(q)
        if todo:
            with self._on_text_stream():
                embeddings = self._text_pass(todo, target)
            for q, emb in zip(todo, embeddings, strict=True):
                found[q] = emb
                self.text_cache.put((target, q), emb)
        if not texts:
            return torch.zeros((0, self.hidden_size))
        return torch.stack([found[q] for q in texts])

    def _text_pass(self, texts: list[str], target: str) -> torch.Tensor:
        token = self.ids.local_text if target == "object" else self.ids.global_text
        seqs = [self.text_prompt_ids(q, target) for q in texts]
        reads = []
        for q, s in zip(texts, seqs, strict=True):
            where = [i for i, tid in enumerate(s) if tid == token]
            if len(where) != 1:
                raise InputError(f"query {q!r} must not contain special tokens "
                                 f"(found {len(where)} read-out tokens)")
            reads.append(where[0])
        length = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        dev = self.device
        hidden = None if self.text_runner is None else self.text_runner(ids, mask)
        if hidden is None:
            positions = torch.arange(length).view(1, 1, -1).expand(3, len(seqs), -1)
            hidden = self.qwen.language_model(input_ids=ids.to(dev),
                                              attention_mask=mask.to(dev),
                                              position_ids=positions.to(dev),
                                              use_cache=False).last_hidden_state
        rows = torch.arange(len(seqs), device=dev)
        return hidden[rows, torch.tensor(reads, device=dev)].float().cpu()

    # ------------------------------------------------------------------ scores
    def score_objects(self, text_embeddings: Any, frame: EncodedFrame) -> GroundingScores:
        """Grounding scores of (Q, D) object-query embeddings against one frame's boxes,
        with this checkpoint's logit scale and bias (``core.scoring``, on host copies)."""
        p = self.score_params
        return grounding_scores(host_float32(text_embeddings),
                                host_float32(frame.object_embeddings),
                                host_float32(frame.iou_logits), p.logit_log_scale, p.logit_bias)

    def score_images(self, text_embeddings: Any, global_embeddings: Any) -> np.ndarray:
        """(Q, M) image-retrieval probabilities of (Q, D) query embeddings against (M, D)
        coarse global embeddings, with this checkpoint's image logit scale and bias."""
        p = self.score_params
        return image_scores(host_float32(text_embeddings), host_float32(global_embeddings),
                            p.logit_image_log_scale, p.logit_image_bias)

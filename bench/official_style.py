"""The official inference control flow (infer_objembed.py), re-created for timing only.

NOT a numerical reference (tests compare our encoder against transformers' modules and a
float64 RoIAlign instead). It composes the same transformers ``Qwen3VLModel`` and our
``ObjectProjector`` (same weights as the encoder under test) in the order the official
script runs them, with its per-image habits, so a speed-up is measured against the
official way of running the same model:

* one image at a time; processor-style preprocessing each call (PIL image, deep copy,
  chat template rendered and tokenized per image, nothing cached);
* proposals as Python lists (``.float().cpu().tolist()``), re-tensorised per image and
  again inside the forward (``torch.tensor(bbox)``);
* M-RoPE indices computed from device tensors inside the forward (host syncs), boolean
  ``masked_scatter`` placement, RoIAlign on float32 upcasts;
* the text pass uncached through the full model forward for every query, scores with
  the official ``.float().sigmoid().cpu()`` chain; no engines, no CUDA graphs.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from timing import cuda_sync  # bench/ is on sys.path: scripts run from there

from objembed_ros.core.resize import patchify, repeat_temporal, smart_resize
from objembed_ros.encoder import prompts

OBJ_PREFIX = ("Locate the specific object being described by analyzing its unique "
              "instance-level attributes, its spatial position, and its relationship with "
              "surrounding objects. ")


class OfficialStylePath:
    """Per-image official control flow over an :class:`ObjEmbedEncoder`'s modules."""

    def __init__(self, encoder: Any) -> None:
        self.enc = encoder
        self.qwen, self.projector, self.tok = encoder.qwen, encoder.projector, encoder.tokenizer
        self.ids = encoder.ids
        self.cfg = encoder.image_config

    def _sync(self) -> None:
        cuda_sync(self.enc.device)

    def _render(self, text: str, with_image: bool) -> list[int]:
        # rendered and tokenized every call, as the processor does
        return prompts.tokenize(self.tok, prompts.render_chat(self.tok, text, with_image))

    @torch.inference_mode()
    def encode_image(self, rgb: np.ndarray, proposals: torch.Tensor | np.ndarray
                     ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        t: dict[str, float] = {}
        dev, dtype = self.enc.device, self.enc.dtype
        t0 = time.perf_counter()
        boxes_list = torch.as_tensor(proposals).float().cpu().tolist()  # official: .tolist()
        image = Image.fromarray(rgb).convert("RGB")
        ori_w, ori_h = image.size
        img = copy.deepcopy(image)
        h, w = smart_resize(ori_h, ori_w, self.cfg.factor, self.cfg.min_pixels,
                            self.cfg.max_pixels)
        resized = np.asarray(img.resize((w, h), Image.BICUBIC))
        pixels, grid_thw = patchify(resized, self.cfg)
        pixels = repeat_temporal(pixels, self.cfg)  # official layout: the frame twice
        obj_str = "".join(f"Object {j}: <object><object>. " for j in range(len(boxes_list)))
        obj_str = "The coarse global image is <global>. " + obj_str + \
            " The detailed global image is <global>. "
        ids = self._render(OBJ_PREFIX + obj_str, with_image=True)
        mh, mw = grid_thw[1] // self.cfg.merge_size, grid_thw[2] // self.cfg.merge_size
        ids = prompts.expand_image_pad(ids, self.ids.image_pad, mh * mw)
        input_ids = torch.tensor([ids]).to(dev)
        attention_mask = torch.ones_like(input_ids)
        pixel_values = torch.from_numpy(pixels).to(dev)
        grid = torch.tensor([grid_thw]).to(dev)
        bboxes = torch.tensor(boxes_list).to(dev).to(dtype)
        self._sync()
        t["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        image_embeds, deepstack = self.qwen.get_image_features(pixel_values, grid)
        self._sync()
        t["vision"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        feat_shape = grid[0].cpu().tolist()  # official: .cpu().tolist() per image
        mh, mw = feat_shape[1] // 2, feat_shape[2] // 2
        if len(bboxes) == 0:
            gt = torch.tensor([[0, 0, mw * 32, mh * 32]], device=dev, dtype=dtype)
        else:
            with warnings.catch_warnings():  # official: torch.tensor(bbox) on a tensor
                warnings.simplefilter("ignore", UserWarning)
                gt = torch.tensor(bboxes, device=dev, dtype=dtype)
            gt = gt / (
                torch.tensor([ori_w, ori_h, ori_w, ori_h], device=dev, dtype=dtype)
                / torch.tensor([mw * 32, mh * 32, mw * 32, mh * 32], device=dev, dtype=dtype))
        obj_tok, second_tok, image_pos = self.projector(
            image_embeds[0], deepstack[-2], deepstack[-1], gt, (mh, mw))
        self._sync()
        t["projector"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        lm = self.qwen.language_model
        embeds = lm.embed_tokens(input_ids)
        image_mask = (input_ids == self.ids.image_pad)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(image_mask, (image_embeds[0] + image_pos).to(embeds.dtype))
        obj_mask = (input_ids == self.ids.object)[..., None].expand_as(embeds)
        pairs = torch.stack((obj_tok, second_tok), dim=1).flatten(0, 1)[:2 * len(boxes_list)]
        embeds = embeds.masked_scatter(obj_mask, pairs.to(embeds.dtype))
        position_ids, _ = self.qwen.get_rope_index(input_ids, grid, None, attention_mask)
        hidden = lm(input_ids=None, inputs_embeds=embeds, position_ids=position_ids,
                    attention_mask=attention_mask, use_cache=False,
                    visual_pos_masks=image_mask[..., 0],
                    deepstack_visual_embeds=list(deepstack)).last_hidden_state
        self._sync()
        t["llm"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        glob = hidden[input_ids == self.ids.global_].reshape(-1, hidden.shape[-1])
        base = hidden[input_ids == self.ids.object].reshape(-1, 2, hidden.shape[-1])
        objects = base[:, 0, :]
        objness = self.projector.logit_iou_proj(base[:, 1, :]).sigmoid().float()
        self._sync()
        t["readout"] = time.perf_counter() - t0
        return {"objects": objects, "objness": objness, "globals": glob}, t

    @torch.inference_mode()
    def encode_text(self, query: str) -> torch.Tensor:
        """Uncached: rendered, tokenized and run through the full model forward each time."""
        ids = self._render(f"Find an object that matches the given caption. {query} "
                           "<local_text>", with_image=False)
        input_ids = torch.tensor([ids]).to(self.enc.device)
        mask = torch.ones_like(input_ids)
        hidden = self.qwen(input_ids=input_ids, attention_mask=mask,
                           use_cache=False).last_hidden_state
        return hidden[input_ids == self.ids.local_text].reshape(-1, hidden.shape[-1])

    @torch.inference_mode()
    def score(self, query_embedding: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        objs = torch.nn.functional.normalize(out["objects"], dim=-1)
        q = torch.nn.functional.normalize(query_embedding, dim=-1)
        s = q @ objs.transpose(-1, -2) * self.projector.logit_log_scale.exp()
        s = s + self.projector.logit_bias
        s = s.float().sigmoid().cpu().flatten()
        return s * out["objness"].cpu().flatten()

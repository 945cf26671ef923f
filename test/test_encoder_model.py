"""The full image and text passes against an independent, official-style re-implementation
that runs transformers' own ``Qwen3VLModel.forward`` (its placeholder scatter, M-RoPE index
and deepstack injection), plus determinism, scores, caching and input validation."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers_reference import TRANSFORMERS_MAJOR, official_image_processor

from objembed_ros import EncodedFrame, InputError, ObjEmbedEncoder, grounding_scores
from objembed_ros.core.resize import smart_resize
from objembed_ros.encoder import prompts
from objembed_ros.encoder.roi_align import roi_align
from objembed_ros.testing.tiny_objembed import make_tiny_objembed_checkpoint

LOCATE = ("Locate the specific object being described by analyzing its unique instance-level "
          "attributes, its spatial position, and its relationship with surrounding objects. ")
BOXES = np.array([[40.0, 30.0, 300.0, 480.0], [200.5, 100.25, 260.0, 180.0],
                  [0.0, 0.0, 512.0, 512.0]])


@pytest.fixture(scope="module")
def encoder(tiny_objembed_dir: Path) -> ObjEmbedEncoder:
    return ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, attn="sdpa")


@pytest.fixture(scope="module")
def layout_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    return {k: make_tiny_objembed_checkpoint(tmp_path_factory.mktemp(f"layout{k}"),
                                             use_two_tokens=k, seed=10 + k) for k in (0, 1)}


# ---------------------------------------------------------------- official-style reference
def _official_sine(pos: torch.Tensor, dim: int) -> torch.Tensor:
    d = dim // pos.size(-1)
    dim_t = torch.arange(d, dtype=pos.dtype)
    dim_t = 10000 ** (2 * (dim_t // 2) / d)

    def emb(v: torch.Tensor) -> torch.Tensor:
        p = (v * 2 * math.pi)[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    if pos.size(-1) == 2:
        return torch.cat((emb(pos[:, 1]), emb(pos[:, 0])), dim=1)
    return torch.cat((emb(pos[:, 1]), emb(pos[:, 0]), emb(pos[:, 2]), emb(pos[:, 3])), dim=1)


def official_style_pass(enc: ObjEmbedEncoder, rgb: np.ndarray, boxes: np.ndarray,
                        layout: int, user_text: str | None = None) -> dict[str, torch.Tensor]:
    """Re-implements the official inference with transformers doing the LM wiring.
    user_text replaces the whole text after the image (the image-query prompt)."""
    qwen, proj, tok = enc.qwen, enc.projector, enc.tokenizer
    inner, d = proj.model, proj.hidden_size
    oh, ow = rgb.shape[:2]
    rh, rw = smart_resize(oh, ow, 32, 900 * 1024, 1200 * 1024)
    resized = np.asarray(Image.fromarray(rgb).resize((rw, rh)))
    ip = official_image_processor(patch_size=16, temporal_patch_size=2, merge_size=2,
                               image_mean=[0.5] * 3, image_std=[0.5] * 3)
    inputs = ip.preprocess(images=resized, do_resize=False, return_tensors="pt")
    pv, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    # The official rows hold each patch twice (temporal patch 2, channel-major: C, T, P, P).
    # The loaded vision tower's patch embedding is folded over time (encoder/preprocess.py,
    # proven against transformers' Conv3d in test_encoder_preprocess.py) and our pipeline
    # feeds it one slice; feed the official pixels' first slice the same way, after checking
    # that the two slices are identical, so both sides run the same ops on the same values.
    slices = pv.reshape(pv.shape[0], 3, 2, 16 * 16)
    assert torch.equal(slices[:, :, 0], slices[:, :, 1])
    pv = slices[:, :, 0].reshape(pv.shape[0], 3 * 16 * 16).contiguous()
    obj_str = "".join(f"Object {j}: <object><object>. " for j in range(len(boxes)))
    if layout == 0:
        obj_str = obj_str + "The global image is <global>"
    elif layout == 1:
        obj_str = "The global image is <global>. " + obj_str + "The global image is <global>"
    else:
        obj_str = ("The coarse global image is <global>. " + obj_str
                   + " The detailed global image is <global>. ")
    text = LOCATE + obj_str if user_text is None else user_text
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": text}]}]
    text = tok.apply_chat_template(messages, tokenize=False).strip()
    n_img = int(grid.prod()) // 4
    text = text.replace("<|image_pad|>", "<|placeholder|>" * n_img)
    text = text.replace("<|placeholder|>", "<|image_pad|>")
    input_ids = tok([text], return_tensors="pt")["input_ids"]
    object_id = tok.convert_tokens_to_ids("<object>")
    global_id = tok.convert_tokens_to_ids("<global>")

    v5 = TRANSFORMERS_MAJOR >= 5
    with torch.no_grad():
        features = qwen.get_image_features(pv, grid)
        if v5:  # an output object (spec section 7); deepstack per image from 5.2x on
            image_embeds = features.pooler_output
            per_image = not torch.is_tensor(features.deepstack_features[0])
            deepstack = [d[0] if per_image else d for d in features.deepstack_features]
        else:
            image_embeds, deepstack = features
        _, hh, ww = grid[0].tolist()
        hh, ww = hh // 2, ww // 2

        def to_map(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, hh, ww, d).permute(0, 3, 1, 2).contiguous()

        s1 = inner.first_scale_conv1(to_map(deepstack[-2])).permute(0, 2, 3, 1)
        s1 = torch.nn.functional.gelu(inner.first_scale_norm(s1)).permute(0, 3, 1, 2)
        s1 = inner.first_scale_conv2(s1)
        s2 = inner.second_scale_conv(to_map(deepstack[-1]))
        s3 = to_map(image_embeds[0].clone())
        if len(boxes) == 0:
            gt = torch.tensor([[0, 0, ww * 32, hh * 32]], dtype=torch.float32)
        else:
            gt = torch.tensor(boxes, dtype=torch.float32) / (
                torch.tensor([ow, oh, ow, oh], dtype=torch.float32)
                / torch.tensor([ww * 32, hh * 32, ww * 32, hh * 32], dtype=torch.float32))
        r1 = roi_align(s1[0].float(), gt, 7, 1 / 8)
        r2 = roi_align(s2[0].float(), gt, 7, 1 / 16)
        r3 = roi_align(s3[0].float(), gt, 7, 1 / 32)
        xs = torch.linspace(0, ww - 1, ww) / ww
        ys = torch.linspace(0, hh - 1, hh) / hh
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        coor = torch.cat([xx[..., None], yy[..., None]], -1) + 0.5
        image_feat = image_embeds[0] + inner.image_pos_projector(
            _official_sine(coor.flatten(0, 1), d))
        roi = inner.merge(torch.cat([r1, r2, r3], dim=1).permute(0, 2, 3, 1))
        roi = inner.object_vision_projector(roi.flatten(1))
        cxcywh = torch.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2,
                              gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]], -1)
        box_coor = inner.object_pos_projector(_official_sine(
            cxcywh / torch.tensor([ww * 32, hh * 32, ww * 32, hh * 32]), d))
        n = len(boxes)
        pos_emb = proj.logit_pos_embedding(torch.zeros((n,), dtype=torch.long))
        objs = (roi + box_coor)[:n]
        pairs = torch.cat([objs[:, None], (pos_emb + box_coor[:n])[:, None]], 1).flatten(0, 1)

        # transformers' forward: our image features, object features via an embedding hook
        def hook(_module, args, output):
            mask = (args[0] == object_id)[..., None].expand_as(output)
            return output.masked_scatter(mask, pairs)

        handle = qwen.language_model.embed_tokens.register_forward_hook(hook)
        try:
            kwargs = {}
            if v5:  # the 5.x processor also returns token types: 1 = image
                from transformers.models.qwen3_vl.modeling_qwen3_vl import (
                    BaseModelOutputWithDeepstackFeatures,
                )
                image_id = tok.convert_tokens_to_ids("<|image_pad|>")
                kwargs["mm_token_type_ids"] = (input_ids == image_id).int()
                fake = BaseModelOutputWithDeepstackFeatures(
                    pooler_output=(image_feat,),
                    deepstack_features=[(m,) if per_image else m for m in deepstack])
            else:
                fake = ((image_feat,), deepstack)
            if "mm_encoder_outputs" in inspect.signature(qwen.forward).parameters:  # 5.2x
                hidden = qwen(input_ids=input_ids, image_grid_thw=grid,
                              mm_encoder_outputs={"image": fake},
                              attention_mask=torch.ones_like(input_ids), use_cache=False,
                              **kwargs).last_hidden_state[0]
            else:  # 4.57, 5.17: our image features through get_image_features
                def fake_features(*_args, **_kwargs):
                    return fake

                original = qwen.get_image_features
                qwen.get_image_features = fake_features
                try:
                    hidden = qwen(input_ids=input_ids, pixel_values=pv, image_grid_thw=grid,
                                  attention_mask=torch.ones_like(input_ids),
                                  use_cache=False, **kwargs).last_hidden_state[0]
                finally:
                    del qwen.get_image_features
                    assert qwen.get_image_features == original
        finally:
            handle.remove()
        where = (input_ids[0] == object_id).nonzero().squeeze(1).reshape(-1, 2)
        return {"ids": input_ids[0], "objects": hidden[where[:, 0]],
                "ious": proj.logit_iou_proj(hidden[where[:, 1]])[:, 0],
                "globals": hidden[input_ids[0] == global_id]}


def _assert_equal(frame: EncodedFrame, ref: dict[str, torch.Tensor]) -> None:
    """Same operations on the same inputs in float32 on CPU: equal to the last bit."""
    assert torch.equal(frame.object_embeddings, ref["objects"])
    assert torch.equal(frame.iou_logits, ref["ious"])
    assert torch.equal(frame.global_embeddings, ref["globals"])


# ---------------------------------------------------------------- image pass
@pytest.mark.parametrize("nboxes", [3, 0])
def test_image_pass_matches_official_style_forward(encoder: ObjEmbedEncoder, photo: np.ndarray,
                                                   nboxes: int) -> None:
    boxes = BOXES[:nboxes]
    frame = encoder.encode_image(photo, boxes)
    ref = official_style_pass(encoder, photo, boxes, layout=2)
    assert encoder.image_prompt_ids(nboxes, 900) == ref["ids"].tolist()
    assert frame.object_embeddings.shape == (nboxes, 64)
    assert frame.iou_logits.shape == (nboxes,)
    assert frame.global_embeddings.shape == (2, 64)
    _assert_equal(frame, ref)
    # the check has teeth: neighbouring tokens are far from the read-out ones
    if nboxes:
        assert (frame.object_embeddings - frame.object_embeddings.roll(1, 0)).abs().max() > 0.1


def test_image_pass_non_square_photo(encoder: ObjEmbedEncoder, photo_wide: np.ndarray) -> None:
    boxes = np.array([[10.0, 20.0, 300.0, 390.0], [350.0, 5.0, 600.0, 200.0]])
    frame = encoder.encode_image(photo_wide, boxes)
    ref = official_style_pass(encoder, photo_wide, boxes, layout=2)
    # 400x600 -> rounded 384x608 < min_pixels; beta = sqrt(921600/240000) = 1.9596:
    # h = ceil(783.8/32)*32 = 800, w = ceil(1175.8/32)*32 = 1184
    assert frame.image_size == (600, 400) and frame.resized_size == (1184, 800)
    _assert_equal(frame, ref)


@pytest.mark.parametrize("layout", [0, 1])
def test_other_token_layouts(layout_dirs: dict[int, Path], photo: np.ndarray,
                             layout: int) -> None:
    enc = ObjEmbedEncoder.from_pretrained(layout_dirs[layout])
    assert enc.use_two_tokens == layout
    frame = enc.encode_image(photo, BOXES[:2])
    ref = official_style_pass(enc, photo, BOXES[:2], layout=layout)
    assert frame.global_embeddings.shape[0] == (1 if layout == 0 else 2)
    _assert_equal(frame, ref)


def test_cpu_float32_is_deterministic(encoder: ObjEmbedEncoder, photo: np.ndarray) -> None:
    a = encoder.encode_image(photo, BOXES)
    b = encoder.encode_image(photo, BOXES)
    assert torch.equal(a.object_embeddings, b.object_embeddings)
    assert torch.equal(a.iou_logits, b.iou_logits)
    assert torch.equal(a.global_embeddings, b.global_embeddings)
    assert set(a.timings) >= {"preprocess", "vision", "projector", "llm", "total"}


def test_box_i_fills_pair_i(encoder: ObjEmbedEncoder, photo: np.ndarray) -> None:
    """Attention is causal, so object 0 cannot see box 1: changing only box 1 leaves o_0
    unchanged and changes o_1 (a swapped or shifted pair layout would break this)."""
    a = encoder.encode_image(photo, BOXES[[0, 1]])
    b = encoder.encode_image(photo, BOXES[[0, 2]])
    assert (a.object_embeddings[0] - b.object_embeddings[0]).abs().max().item() < 1e-5
    assert (a.object_embeddings[1] - b.object_embeddings[1]).abs().max().item() > 1e-2
    assert a.boxes.tolist() == BOXES[[0, 1]].tolist()


# ---------------------------------------------------------------- validation
def test_box_policy(encoder: ObjEmbedEncoder, photo: np.ndarray) -> None:
    frame = encoder.encode_image(photo, [[300, 400, 100, 50], [-10, -5, 600, 700], [5, 5, 5, 9]])
    assert frame.boxes.tolist() == [[100, 50, 300, 400], [0, 0, 512, 512], [5, 5, 5, 9]]
    with pytest.raises(InputError, match="row"):
        encoder.encode_image(photo, [[0, 0, 10, 10], [0, np.nan, 5, 5]])
    with pytest.raises(InputError, match="inf"):
        encoder.encode_image(photo, [[0, 0, np.inf, 10]])
    with pytest.raises(InputError, match="max_boxes"):
        encoder.encode_image(photo, np.tile([[0.0, 0.0, 10.0, 10.0]], (301, 1)))
    with pytest.raises(InputError, match="shape"):
        encoder.encode_image(photo, [[0, 0, 10]])


@pytest.mark.parametrize("bad", [np.zeros((0, 0, 3), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 5), np.uint8), [[1, 2, 3]]])
def test_bad_images(encoder: ObjEmbedEncoder, bad) -> None:
    with pytest.raises(InputError):
        encoder.encode_image(bad, None)


def test_rgba_and_grey_inputs(encoder: ObjEmbedEncoder, photo: np.ndarray) -> None:
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], axis=2)
    a = encoder.encode_image(rgba, BOXES[:1])
    b = encoder.encode_image(photo, BOXES[:1])
    assert torch.equal(a.object_embeddings, b.object_embeddings)
    grey = encoder.encode_image(photo[:, :, 1], BOXES[:1])
    assert grey.object_embeddings.shape == (1, 64)


# ---------------------------------------------------------------- text pass and scores
def test_text_pass_reads_the_local_text_token(encoder: ObjEmbedEncoder) -> None:
    tok, qwen = encoder.tokenizer, encoder.qwen
    for target, token, sentence in (("object", "<local_text>", "Find an object"),
                                    ("image", "<global_text>", "Find an image")):
        query = "the red cup on the left"
        text = tok.apply_chat_template([{"role": "user", "content": [
            {"type": "text", "text": f"{sentence} that matches the given caption. {query} "
                                     f"{token}"}]}], tokenize=False).strip()
        ids = tok([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = qwen(input_ids=ids, attention_mask=torch.ones_like(ids),
                          use_cache=False).last_hidden_state[0]
        at = (ids[0] == tok.convert_tokens_to_ids(token)).nonzero().item()
        ours = encoder.encode_text(query, target)[0]
        assert torch.equal(ours, hidden[at])  # same ops, same inputs: bit-identical
        assert (ours - hidden[at - 1]).abs().max().item() > 0.1


def test_text_batch_and_cache(tiny_objembed_dir: Path) -> None:
    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, text_cache_size=2)
    texts = ["a cat", "the person in a white space suit", "a red cup"]
    batch = enc.encode_text(texts)
    assert batch.shape == (3, 64)
    singles = [ObjEmbedEncoder.encode_text(enc, [t]) for t in texts]  # now cached (size 2)
    assert len(enc.text_cache) == 2
    fresh = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir, text_cache_size=0)
    alone = torch.cat([fresh.encode_text(t) for t in texts])
    diff = (batch - alone).abs().max().item()
    print(f"MAXDIFF text batch vs single: {diff:.3e}")
    assert diff < 1e-5
    assert all(torch.equal(s[0], batch[i]) or (s[0] - batch[i]).abs().max() < 1e-5
               for i, s in enumerate(singles))
    hits = enc.text_cache.hits
    enc.encode_text("a red cup")
    assert enc.text_cache.hits == hits + 1
    assert not torch.equal(enc.encode_text("a red cup", "image"), enc.encode_text("a red cup"))
    with pytest.raises(InputError):
        enc.encode_text("  ")


def test_scores_against_float64_reference(encoder: ObjEmbedEncoder, photo: np.ndarray,
                                          tiny_objembed_dir: Path) -> None:
    """encoder.score_objects / score_images (thin calls into core.scoring) against the spec's
    formulas in float64 with the scalars read from the safetensors file."""
    with safe_open(str(tiny_objembed_dir / "model.safetensors"), framework="pt") as f:
        scalars = {k: f.get_tensor(k).double().item() for k in (
            "logit_log_scale", "logit_bias", "logit_image_log_scale", "logit_image_bias")}
    frame = encoder.encode_image(photo, BOXES)
    text = encoder.encode_text(["a person", "the sky"])
    t = text.double().numpy()
    o = frame.object_embeddings.double().numpy()
    u = frame.iou_logits.double().numpy()
    cos = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ \
        (o / np.linalg.norm(o, axis=1, keepdims=True)).T

    def sig(x):
        return 1 / (1 + np.exp(-x))

    sim = sig(cos * np.exp(scalars["logit_log_scale"]) + scalars["logit_bias"])
    ref = sim * sig(u)[None]
    parts = encoder.score_objects(text, frame)
    assert isinstance(parts.score, np.ndarray) and parts.score.shape == (2, 3)
    d_f32 = np.abs(parts.score - ref).max()
    assert np.abs(parts.cosine - cos).max() < 1e-5
    assert np.abs(parts.similarity - sim).max() < 1e-5
    assert np.abs(parts.iou - sig(u)[None]).max() < 1e-6
    p = encoder.score_params  # float64 inputs stay float64 in core.scoring
    d_f64 = np.abs(grounding_scores(t, o, u, p.logit_log_scale, p.logit_bias).score - ref).max()
    print(f"MAXDIFF scores float32 embeddings: {d_f32:.3e}, float64: {d_f64:.3e}")
    assert d_f32 < 1e-5 and d_f64 < 1e-12
    g = frame.global_embeddings[:1].double().numpy()
    tg = encoder.encode_text("a person", "image").double().numpy()
    cos_g = (tg @ g.T) / np.linalg.norm(tg) / np.linalg.norm(g)
    img_ref = sig(cos_g * np.exp(scalars["logit_image_log_scale"]) + scalars["logit_image_bias"])
    img = encoder.score_images(torch.from_numpy(tg).float(), frame.global_embeddings[:1])
    assert img.shape == (1, 1) and np.abs(img - img_ref).max() < 1e-5


# The image-query prompt as objembed-spec.md section 4 writes it, typed here by hand: the
# text alone after the image (no "Locate ..." prefix, no objects), ending in a space.
SPEC_IMAGE_QUERY_TEXT = ("The coarse global image is <global>. The detailed global image is "
                         "<global>. ")


def test_image_query_embedding(encoder: ObjEmbedEncoder, photo: np.ndarray) -> None:
    """encode_image_query = the coarse <global> of transformers' own forward on the spec's
    image-query prompt (no boxes: the dummy box runs and is dropped)."""
    q = encoder.encode_image_query(photo)
    ref = official_style_pass(encoder, photo, np.zeros((0, 4)), layout=2,
                              user_text=SPEC_IMAGE_QUERY_TEXT)
    assert ref["globals"].shape == (2, 64)  # coarse, detailed
    assert torch.equal(q, ref["globals"][0])
    # the whole prompt, also after the coarse <global> (causal attention hides that part
    # from the coarse embedding): the ids the encoder feeds equal the spec prompt's
    n_img = int((ref["ids"] == encoder.ids.image_pad).sum())
    assert encoder.image_prompt_ids(0, n_img, prompts.IMAGE_QUERY_TEXT) == ref["ids"].tolist()
    # the check has teeth: the grounding prompt without boxes gives another embedding
    framed = official_style_pass(encoder, photo, np.zeros((0, 4)), layout=2)
    assert (framed["globals"][0] - q).abs().max().item() > 1e-3

"""The ObjEmbed projector against float64 references written from the spec text."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from objembed_ros.encoder import projector as projector_module
from objembed_ros.encoder.projector import ObjectProjector, sine_embedding
from objembed_ros.testing.roi_align_reference import roi_align_reference

STORED_KEYS = {
    "model.image_pos_projector.0.weight", "model.image_pos_projector.0.bias",
    "model.image_pos_projector.2.weight", "model.image_pos_projector.2.bias",
    "model.object_pos_projector.0.weight", "model.object_pos_projector.0.bias",
    "model.object_pos_projector.2.weight", "model.object_pos_projector.2.bias",
    "model.object_vision_projector.0.weight", "model.object_vision_projector.0.bias",
    "model.object_vision_projector.2.weight", "model.object_vision_projector.2.bias",
    "model.second_scale_conv.weight", "model.second_scale_conv.bias",
    "model.first_scale_conv1.weight", "model.first_scale_conv1.bias",
    "model.first_scale_norm.weight", "model.first_scale_norm.bias",
    "model.first_scale_conv2.weight", "model.first_scale_conv2.bias",
    "model.merge.weight", "model.merge.bias",
    "logit_iou_proj.0.weight", "logit_iou_proj.0.bias",
    "logit_iou_proj.2.weight", "logit_iou_proj.2.bias",
    "logit_pos_embedding.weight", "logit_log_scale", "logit_bias",
    "logit_image_log_scale", "logit_image_bias",
}


def sine_reference(vec: np.ndarray, width: int) -> np.ndarray:
    """Spec 5.2 literally: d = D/k; t_m = 10000^(2 floor(m/2)/d); v*2pi/t_m; sin even,
    cos odd, in place. ``vec`` holds the components in block order."""
    d = width // len(vec)
    out = []
    for v in vec:
        for m in range(d):
            t = 10000.0 ** (2 * (m // 2) / d)
            a = v * 2 * math.pi / t
            out.append(math.sin(a) if m % 2 == 0 else math.cos(a))
    return np.array(out)


def _random_projector(d: int, seed: int = 0) -> ObjectProjector:
    torch.manual_seed(seed)
    proj = ObjectProjector(d)
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn_like(p) / math.sqrt(max(p.shape[-1], 1)))
    return proj.double().eval()


def test_state_dict_keys_are_the_stored_names() -> None:
    with torch.device("meta"):
        proj = ObjectProjector(64)
    assert set(proj.state_dict()) == STORED_KEYS
    assert proj.model.object_vision_projector[0].weight.shape == (64, 49 * 64)
    assert proj.model.merge.weight.shape == (64, 16 + 32 + 64)
    assert proj.model.first_scale_conv2.weight.shape == (32, 16, 2, 2)
    assert proj.logit_log_scale.shape == (1,)


def test_wide_threshold_is_4000() -> None:
    with torch.device("meta"):
        narrow, wide = ObjectProjector(4000), ObjectProjector(4008)
    assert narrow.model.object_vision_projector[0].weight.shape == (4000, 49 * 4000)
    assert wide.model.object_vision_projector[0].weight.shape == (4008, 4008)


def test_sine_embedding_points_and_boxes_float64() -> None:
    pts = torch.tensor([[0.5, 0.5], [0.7333, 1.4], [1.2, 0.53]], dtype=torch.float64)  # (x, y)
    ours = sine_embedding(pts, 32).numpy()
    for row, (x, y) in zip(ours, pts.tolist(), strict=True):
        assert np.abs(row - sine_reference(np.array([y, x]), 32)).max() < 1e-12
    boxes = torch.tensor([[0.3, 0.6, 0.2, 0.5]], dtype=torch.float64)  # (cx, cy, w, h)
    ref = sine_reference(np.array([0.6, 0.3, 0.2, 0.5]), 64)  # blocks (cy, cx, w, h)
    diff = np.abs(sine_embedding(boxes, 64).numpy()[0] - ref).max()
    print(f"MAXDIFF sine float64: {diff:.3e}")
    assert diff < 1e-12
    f32 = sine_embedding(boxes.float(), 64).double().numpy()[0]
    print(f"MAXDIFF sine float32 vs float64: {np.abs(f32 - ref).max():.3e}")
    assert np.abs(f32 - ref).max() < 1e-5


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _mlp(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    h = x @ seq[0].weight.T + seq[0].bias
    return _gelu(h) @ seq[2].weight.T + seq[2].bias


def _conv_t(x: torch.Tensor, conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """Kernel 2 stride 2 transposed conv written out: out[o, 2i+a, 2j+b] = sum_c x w."""
    c, h, w = x.shape
    out = torch.einsum("chw,coab->ohawb", x, conv.weight).reshape(-1, 2 * h, 2 * w)
    return out + conv.bias[:, None, None]


def projector_reference(proj: ObjectProjector, e: torch.Tensor, ds2: torch.Tensor,
                        ds1: torch.Tensor, boxes: torch.Tensor, mh: int, mw: int):
    """Spec 5.2-5.8 step by step in float64, with loops where order matters."""
    d = proj.hidden_size
    inner = proj.model
    # positions: cell (r, c) -> x = c/W' + .5, y = r/H' + .5, blocks (y, x)
    pos_in = np.stack([sine_reference(np.array([r / mh + 0.5, c / mw + 0.5]), d)
                       for r in range(mh) for c in range(mw)])
    image_pos = _mlp(inner.image_pos_projector, torch.from_numpy(pos_in))
    s3 = e.T.reshape(d, mh, mw)
    s2 = _conv_t(ds1.T.reshape(d, mh, mw), inner.second_scale_conv)
    s1 = _conv_t(ds2.T.reshape(d, mh, mw), inner.first_scale_conv1)
    s1 = torch.nn.functional.layer_norm(s1.permute(1, 2, 0), (d // 2,),
                                        inner.first_scale_norm.weight,
                                        inner.first_scale_norm.bias, 1e-5)
    s1 = _conv_t(_gelu(s1).permute(2, 0, 1), inner.first_scale_conv2)
    r1 = roi_align_reference(s1, boxes, 7, 1 / 8)
    r2 = roi_align_reference(s2, boxes, 7, 1 / 16)
    r3 = roi_align_reference(s3, boxes, 7, 1 / 32)
    objs, seconds = [], []
    for k in range(boxes.shape[0]):
        cells = []
        for y in range(7):
            for x in range(7):
                v = torch.cat([r1[k, :, y, x], r2[k, :, y, x], r3[k, :, y, x]])
                cells.append(v @ inner.merge.weight.T + inner.merge.bias)
        if proj.wide:
            rk = _mlp(inner.object_vision_projector, torch.stack(cells).mean(0))
        else:
            rk = _mlp(inner.object_vision_projector, torch.cat(cells))
        x1, y1, x2, y2 = boxes[k].tolist()
        vec = np.array([(y1 + y2) / 2 / (32 * mh), (x1 + x2) / 2 / (32 * mw),
                        (x2 - x1) / (32 * mw), (y2 - y1) / (32 * mh)])
        pk = _mlp(inner.object_pos_projector, torch.from_numpy(sine_reference(vec, d)))
        objs.append(rk + pk)
        seconds.append(proj.logit_pos_embedding.weight[0] + pk)
    return torch.stack(objs), torch.stack(seconds), image_pos


@pytest.mark.parametrize("wide", [False, True])
def test_projector_forward_matches_float64_reference(wide: bool, monkeypatch) -> None:
    if wide:  # exercise the D > 4000 branch cheaply by lowering the threshold
        monkeypatch.setattr(projector_module, "WIDE_HIDDEN", 16)
    d, mh, mw = 32, 3, 4
    proj = _random_projector(d, seed=int(wide))
    assert proj.wide is wide
    g = torch.Generator().manual_seed(5)
    e, ds2, ds1 = (torch.randn((mh * mw, d), generator=g, dtype=torch.float64) for _ in range(3))
    boxes = torch.tensor([[0.0, 0.0, 128.0, 96.0], [10.5, 20.25, 70.0, 41.0],
                          [100.0, 60.0, 100.0, 90.0], [127.0, 95.0, 128.0, 96.0]],
                         dtype=torch.float64)
    with torch.no_grad():
        obj, sec, img = proj(e, ds2, ds1, boxes, (mh, mw))
        robj, rsec, rimg = projector_reference(proj, e, ds2, ds1, boxes, mh, mw)
    diffs = [(obj - robj).abs().max().item(), (sec - rsec).abs().max().item(),
             (img - rimg).abs().max().item()]
    print(f"MAXDIFF projector float64 wide={wide}: {max(diffs):.3e}")
    # Not 1e-12: like the official code, RoIAlign runs in float32 and the image-cell
    # coordinates c/W' + .5 are formed in float32 before the cast to the module dtype.
    assert diffs[1] < 1e-12
    assert max(diffs) < 1e-5
    assert obj.shape == (4, d) and img.shape == (mh * mw, d)


def test_projector_float32_close_and_iou_head() -> None:
    proj = _random_projector(32, seed=3)
    g = torch.Generator().manual_seed(6)
    e, ds2, ds1 = (torch.randn((6, 32), generator=g, dtype=torch.float64) for _ in range(3))
    boxes = torch.tensor([[3.0, 4.0, 60.0, 50.0]], dtype=torch.float64)
    with torch.no_grad():
        ref = proj(e, ds2, ds1, boxes, (2, 3))
        p32 = proj.float()
        out = p32(e.float(), ds2.float(), ds1.float(), boxes.float(), (2, 3))
        diff = max((a.double() - b).abs().max().item() for a, b in zip(out, ref, strict=True))
        print(f"MAXDIFF projector float32 vs float64: {diff:.3e}")
        assert diff < 1e-3
        h = torch.randn((5, 32))
        ref_iou = (_gelu(h @ p32.logit_iou_proj[0].weight.T + p32.logit_iou_proj[0].bias)
                   @ p32.logit_iou_proj[2].weight.T + p32.logit_iou_proj[2].bias)[:, 0]
        assert torch.allclose(p32.iou_logits(h), ref_iou, atol=1e-5)
        # no boxes is a valid (empty) call too: the export graph has a dynamic K
        empty = p32(e.float(), ds2.float(), ds1.float(), boxes[:0].float(), (2, 3))
        assert empty[0].shape == (0, 32) and empty[1].shape == (0, 32)

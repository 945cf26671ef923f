"""WeDetectProposer end to end on a small random checkpoint in the original file layout,
with float64 references for the model pieces and an independent numpy selection pipeline."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from test_proposals_select import reference_batched_nms

from objembed_ros import InputError, Proposer, WeDetectProposer
from objembed_ros.core.letterbox import letterbox
from objembed_ros.proposals.wedetect_keys import WeDetectCheckpointError, simple_to_original
from objembed_ros.proposals.wedetect_model import (
    STRIDES,
    ContrastHead,
    ConvNeXtBlock,
    LayerNormChannelsFirst,
    WeDetectConfig,
    WeDetectModel,
    dfl_distances,
    grid_priors,
)
from objembed_ros.testing.tiny_wedetect import make_wedetect_checkpoint, make_wedetect_state_dict

PHOTOS = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}


@pytest.fixture(scope="module")
def proposer(tiny_wedetect_path: Path) -> WeDetectProposer:
    return WeDetectProposer.from_checkpoint(tiny_wedetect_path)


@pytest.fixture(scope="module")
def proposer320(tiny_wedetect_path: Path) -> WeDetectProposer:
    return WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320)


# ----------------------------------------------------------------- pieces vs float64


def test_layernorm_channels_first_float64() -> None:
    torch.manual_seed(0)
    ln = LayerNormChannelsFirst(8)
    ln.weight.data.uniform_(0.5, 1.5)
    ln.bias.data.normal_()
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    xd = x.double().numpy()
    mu = xd.mean(1, keepdims=True)
    var = ((xd - mu) ** 2).mean(1, keepdims=True)  # biased
    w, b = ln.weight.detach().double().numpy(), ln.bias.detach().double().numpy()
    ref = ((xd - mu) / np.sqrt(var + 1e-6) * w[:, None, None]
           + b[:, None, None])
    assert np.abs(ln(x).detach().double().numpy() - ref).max() < 1e-5


def test_convnext_block_float64() -> None:
    torch.manual_seed(1)
    blk = ConvNeXtBlock(16)
    for p in blk.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(1, 16, 9, 9)
    with torch.no_grad():
        got = blk(x).double()
        p = {k: v.double() for k, v in blk.state_dict().items()}
        xd = x.double()
        y = F.conv2d(xd, p["dwconv.weight"], p["dwconv.bias"], padding=3, groups=16)
        y = y.permute(0, 2, 3, 1)
        mu = y.mean(-1, keepdim=True)
        var = ((y - mu) ** 2).mean(-1, keepdim=True)
        y = (y - mu) / torch.sqrt(var + 1e-6) * p["norm.weight"] + p["norm.bias"]
        y = y @ p["pwconv1.weight"].T + p["pwconv1.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact (erf) GELU
        y = y @ p["pwconv2.weight"].T + p["pwconv2.bias"]
        ref = xd + (p["gamma"] * y).permute(0, 3, 1, 2)
    assert (got - ref).abs().max().item() < 1e-4


def test_contrast_head_uses_raw_prompts() -> None:
    torch.manual_seed(2)
    head = ContrastHead(12).eval()
    head.norm.running_mean.normal_()
    head.norm.running_var.uniform_(0.5, 2)
    head.norm.weight.data.uniform_(0.5, 1.5)
    head.bias.data.fill_(-1.5)
    head.logit_scale.data.fill_(0.3)
    x = torch.randn(1, 12, 3, 4)
    prompts = torch.randn(5, 12) * 4  # far from unit norm
    with torch.no_grad():
        got = head(x, prompts).double()
    n = head.norm
    e = ((x.double() - n.running_mean.double()[:, None, None])
         / torch.sqrt(n.running_var.double()[:, None, None] + 1e-3)
         * n.weight.double()[:, None, None] + n.bias.double()[:, None, None])
    ref = torch.einsum("bchw,kc->bkhw", e, prompts.double()) * math.exp(0.3) - 1.5
    assert (got - ref).abs().max().item() < 1e-4
    normalised = torch.einsum("bchw,kc->bkhw", e, F.normalize(prompts.double(), dim=1))
    assert (got - (normalised * math.exp(0.3) - 1.5)).abs().max().item() > 1.0


def test_dfl_distances_float64_and_side_major_layout() -> None:
    torch.manual_seed(3)
    reg = torch.randn(2, 64, 3, 5) * 2
    got = dfl_distances(reg).double().numpy()  # [B, HW, 4]
    r = reg.double().numpy().reshape(2, 4, 16, 15)
    p = np.exp(r - r.max(2, keepdims=True))
    p /= p.sum(2, keepdims=True)
    ref = (p * np.arange(16)[None, None, :, None]).sum(2).transpose(0, 2, 1)
    assert np.abs(got - ref).max() < 1e-5
    # channel = side * 16 + bin: a sharp peak at bin 3 + side gives distance 3 + side
    peak = torch.full((1, 64, 1, 1), -50.0)
    for side in range(4):
        peak[0, side * 16 + 3 + side] = 50.0
    assert torch.allclose(dfl_distances(peak)[0, 0], torch.tensor([3.0, 4.0, 5.0, 6.0]))


def test_priors_anchor_order() -> None:
    pri = grid_priors(2, 3, 8)
    assert pri.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert sum((640 // s) ** 2 for s in STRIDES) == 8400


def test_dense_output_order_and_decoding_float64(proposer320: WeDetectProposer) -> None:
    """forward() flattens P3, P4, P5 row-major and decodes (px - l*s, ..., py + b*s)."""
    x, _ = proposer320.preprocess(PHOTOS["coffee"])
    model = proposer320.model
    with torch.no_grad():
        boxes, scores = model(x)
        logits, regs = model.forward_levels(x)
    sizes = [lg.shape[-1] for lg in logits]
    assert boxes.shape[1] == sum(s * s for s in sizes) == 2100
    rng = np.random.default_rng(0)
    offsets = np.cumsum([0] + [s * s for s in sizes])
    for a in rng.choice(boxes.shape[1], 60, replace=False).tolist() + [0, 1599, 1600, 2099]:
        lvl = int(np.searchsorted(offsets, a, side="right") - 1)
        i, j = divmod(a - int(offsets[lvl]), sizes[lvl])
        s = STRIDES[lvl]
        lg = logits[lvl][0, :, i, j].double()
        assert torch.allclose(scores[0, a].double(), torch.sigmoid(lg), atol=1e-6)
        r = regs[lvl][0, :, i, j].double().reshape(4, 16).softmax(1)
        d = (r * torch.arange(16).double()).sum(1) * s
        px, py = (j + 0.5) * s, (i + 0.5) * s
        ref = torch.tensor([px - d[0], py - d[1], px + d[2], py + d[3]])
        assert (boxes[0, a].double() - ref).abs().max().item() < 2e-4 * s


def test_float32_model_close_to_float64(proposer320: WeDetectProposer) -> None:
    x, _ = proposer320.preprocess(PHOTOS["chelsea"])
    m64 = WeDetectModel(proposer320.config)
    m64.load_state_dict(proposer320.model.state_dict())
    m64 = m64.double().eval()
    with torch.no_grad():
        b32, s32 = proposer320.model(x)
        b64, s64 = m64(x.double())
    assert (s32.double() - s64).abs().max().item() < 1e-4
    assert (b32.double() - b64).abs().max().item() < 0.05  # px, of boxes ~100 px


def test_input_tensor_is_uint8_over_255_in_float32(proposer: WeDetectProposer) -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)[:, :, None].repeat(3, 2)
    x, geo = proposer.preprocess(img)
    canvas, _ = letterbox(np.ascontiguousarray(img), 640)
    ref = canvas.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    assert x.dtype == torch.float32 and np.array_equal(x[0].numpy(), ref)


# ----------------------------------------------------------------- end to end


def _reference_proposals(proposer: WeDetectProposer, rgb: np.ndarray, k: int = 100
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent selection from the dense output: numpy flatten/sort, literal NMS loop,
    first k, and the official back-mapping written out in float32."""
    x, geo = proposer.preprocess(rgb)
    boxes, scores = proposer.dense(x)
    b, s = boxes[0].numpy(), scores[0].numpy()
    flat = s.reshape(-1)
    valid = np.flatnonzero(flat > 0)
    top = valid[np.argsort(-flat[valid], kind="stable")][:30000]
    anchors, labels = top // s.shape[1], top % s.shape[1]
    keep = reference_batched_nms(b[anchors], flat[top], labels)[:k]
    kb = b[anchors[keep]]
    hx, hy = geo.half_pad
    out = (kb - np.array([hx, hy, hx, hy], np.float32)) / np.float32(geo.ratio)
    out[:, 0::2] = np.clip(out[:, 0::2], np.float32(0), np.float32(geo.width))
    out[:, 1::2] = np.clip(out[:, 1::2], np.float32(0), np.float32(geo.height))
    return out, flat[top][keep], labels[keep]


def _by_score(scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray
              ) -> list[tuple[float, list[tuple]]]:
    """[(score, sorted [(label, box), ...]) per distinct score, in output order]."""
    groups: dict[float, list[tuple]] = {}
    for score, label, box in zip(scores.tolist(), labels.tolist(), boxes.tolist(), strict=True):
        groups.setdefault(score, []).append((label, tuple(box)))
    return [(score, sorted(rows)) for score, rows in groups.items()]


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_propose_equals_reference_pipeline(proposer: WeDetectProposer, name: str) -> None:
    rgb = PHOTOS[name]
    out = proposer.propose(rgb)
    rb, rs, rl = _reference_proposals(proposer, rgb)
    assert len(out) == 100 and out.source == "wedetect-base"
    assert np.array_equal(out.scores, rs)
    # rows of exactly equal score may come in either order (torch.topk, like the official
    # sorts, does not define the order of ties): compare them as sets per score
    assert _by_score(out.scores, out.labels, out.boxes) == _by_score(rs, rl, rb)
    h, w = rgb.shape[:2]
    assert out.image_size == (w, h)
    assert out.boxes.dtype == np.float32 and out.scores.dtype == np.float32
    assert out.labels.dtype == np.int64
    assert np.isfinite(out.boxes).all() and np.isfinite(out.scores).all()
    assert (out.boxes[:, 0::2] >= 0).all() and (out.boxes[:, 0::2] <= w).all()
    assert (out.boxes[:, 1::2] >= 0).all() and (out.boxes[:, 1::2] <= h).all()
    assert (np.diff(out.scores) <= 0).all()
    assert ((out.labels >= 0) & (out.labels < 256)).all()
    assert set(out.timings) >= {"preprocess", "model", "topk", "nms", "total"}


def test_duplicate_boxes_across_prompts_are_kept(proposer: WeDetectProposer) -> None:
    out = proposer.propose(PHOTOS["astronaut"])
    uniq, counts = np.unique(out.boxes, axis=0, return_counts=True)
    assert len(uniq) < len(out)  # as in the official output (3-10 duplicates per photo)
    dup = uniq[counts > 1][0]
    rows = np.flatnonzero((out.boxes == dup).all(1))
    assert len(set(out.labels[rows].tolist())) == len(rows)  # each under another prompt


def test_num_proposals_prefix(tiny_wedetect_path: Path,
                             proposer320: WeDetectProposer) -> None:
    few = WeDetectProposer.from_checkpoint(tiny_wedetect_path, num_proposals=7, input_size=320)
    a, b = few.propose(PHOTOS["coffee"]), proposer320.propose(PHOTOS["coffee"])
    assert len(a) == 7 and np.array_equal(a.boxes, b.boxes[:7])


def test_grey_and_rgba_inputs(proposer320: WeDetectProposer) -> None:
    grey = np.ascontiguousarray(data.camera()[::2, ::2])
    a = proposer320.propose(grey)
    b = proposer320.propose(np.repeat(grey[:, :, None], 3, 2))
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    rgb = PHOTOS["chelsea"]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])  # alpha dropped, as PIL
    c, d = proposer320.propose(rgba), proposer320.propose(rgb)
    assert np.array_equal(c.boxes, d.boxes) and np.array_equal(c.scores, d.scores)


def test_tiny_images(proposer320: WeDetectProposer) -> None:
    for shape in [(1, 1, 3), (2, 3, 3), (3, 2), (1, 700, 3)]:
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        out = proposer320.propose(img)
        h, w = shape[:2]
        assert 0 < len(out) <= 100 and np.isfinite(out.boxes).all()
        assert (out.boxes[:, 2] <= w).all() and (out.boxes[:, 3] <= h).all()


def test_bad_images(proposer320: WeDetectProposer, tiny_wedetect_path: Path) -> None:
    for bad in [np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros((4, 4, 2), np.uint8), None]:
        with pytest.raises(InputError):
            proposer320.propose(bad)  # type: ignore[arg-type]
    small = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320,
                                             max_pixels=10_000)
    with pytest.raises(InputError, match="max_pixels"):
        small.propose(np.zeros((101, 100, 3), np.uint8))


def test_huge_image_is_letterboxed(proposer320: WeDetectProposer) -> None:
    img = np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    out = proposer320.propose(img)
    assert len(out) == 100 and out.boxes[:, 2].max() <= 4000 and out.boxes[:, 3].max() <= 3000


def test_channels_last_keeps_selection(tiny_wedetect_path: Path,
                                       proposer320: WeDetectProposer) -> None:
    cl = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320,
                                          channels_last=True)
    for rgb in (PHOTOS["astronaut"], PHOTOS["coffee"]):
        a, b = cl.propose(rgb), proposer320.propose(rgb)
        assert np.array_equal(a.labels, b.labels)
        assert np.abs(a.boxes - b.boxes).max() < 0.05
        assert np.abs(a.scores - b.scores).max() < 5e-5


def test_non_finite_weights_give_finite_outputs(tiny_wedetect_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    state = torch.load(tiny_wedetect_path, weights_only=True)
    key = simple_to_original("bbox_head.reg_preds.0.6.bias")
    state[key][0] = float("nan")  # every P3 box gets a NaN side
    with torch.device("meta"):
        model = WeDetectModel(WeDetectConfig.for_size("base", (1, 1, 1, 1)))
    from objembed_ros.proposals.wedetect_keys import convert_state_dict
    model.load_state_dict(convert_state_dict(state).state_dict, assign=True)
    prop = WeDetectProposer(model, input_size=320)
    with caplog.at_level(logging.WARNING):
        out = prop.propose(PHOTOS["astronaut"])
    assert len(out) == 100 and np.isfinite(out.boxes).all() and np.isfinite(out.scores).all()
    assert "non-finite" in caplog.text


# ----------------------------------------------------------------- checkpoint handling


def test_unused_keys_reported_once(tiny_wedetect_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="objembed_ros.proposals"):
        prop = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320)
    assert sorted(prop.unused_keys) == sorted([
        "backbone.image_model.model.norm.weight", "backbone.image_model.model.norm.bias",
        "backbone.image_model.model.head.weight", "backbone.image_model.model.head.bias",
        "backbone.text_model.model.embeddings.word_embeddings.weight",
        "backbone.text_model.head.weight", "backbone.text_model.head.bias"])
    records = [r for r in caplog.records if "not used" in r.getMessage()]
    assert len(records) == 1 and "backbone.text_model.* (3)" in records[0].getMessage()
    assert prop.config.depths == (1, 1, 1, 1) and prop.config.size == "base"


def test_checkpoint_errors(tmp_path: Path) -> None:
    state = make_wedetect_state_dict("base", (1, 1, 1, 1), seed=3)
    orig = {simple_to_original(k): v for k, v in state.items()}
    del orig["neck.Rep_n4.cv3.block.bn.weight"]
    orig["embeddings"] = orig["embeddings"][:, :700]
    path = tmp_path / "broken.pth"
    torch.save(orig, path)
    with pytest.raises(WeDetectCheckpointError) as info:
        WeDetectProposer.from_checkpoint(path)
    msg = str(info.value)
    assert "neck.Rep_n4.cv3.block.bn.weight" in msg and "embeddings: (256, 700)" in msg
    with pytest.raises(WeDetectCheckpointError, match="not found"):
        WeDetectProposer.from_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeDetectCheckpointError, match="cannot read"):
        WeDetectProposer.from_checkpoint(tmp_path / "junk.pth")
    good = make_wedetect_checkpoint(tmp_path / "base_named_large.pth",
                                    stage_depths=(1, 1, 1, 1), extra_keys=False)
    with pytest.raises(WeDetectCheckpointError, match="'large' was asked"):
        WeDetectProposer.from_checkpoint(good, size="large")
    # the file name never decides the size
    assert WeDetectProposer.from_checkpoint(good, input_size=320).config.size == "base"


def test_protocol(proposer320: WeDetectProposer) -> None:
    assert isinstance(proposer320, Proposer)


def test_real_shaped_base_checkpoint(tmp_path: Path) -> None:
    """The released layout: 906 tensors + extras, 27 blocks in stage 3, ~430 MB."""
    path = make_wedetect_checkpoint(tmp_path / "wedetect_base_random.pth")
    assert path.stat().st_size > 420e6
    prop = WeDetectProposer.from_checkpoint(path, input_size=256)
    path.unlink()
    assert prop.config == WeDetectConfig.for_size("base")
    assert prop.config.official_depths and len(prop.unused_keys) == 7
    sd = prop.model.state_dict()
    assert len(sd) == 906 and sum(t.numel() for t in sd.values()) == 107_356_725
    out = prop.propose(PHOTOS["coffee"][:200, :300])
    assert len(out) == 100 and np.isfinite(out.boxes).all()


def test_large_widths_run_end_to_end() -> None:
    """Large widths (192..1536, neck x1.5) with 1 block per stage, in memory."""
    from objembed_ros.proposals.wedetect_keys import convert_state_dict

    state = make_wedetect_state_dict("large", (1, 1, 1, 1), seed=4)
    weights = convert_state_dict({simple_to_original(k): v for k, v in state.items()})
    assert weights.config.size == "large" and weights.config.input_size == 1280
    with torch.device("meta"):
        model = WeDetectModel(weights.config)
    model.load_state_dict(weights.state_dict, strict=True, assign=True)
    prop = WeDetectProposer(model, input_size=256)
    assert prop.source == "wedetect-large"
    out = prop.propose(PHOTOS["coffee"])
    assert len(out) == 100 and np.isfinite(out.boxes).all() and (np.diff(out.scores) <= 0).all()

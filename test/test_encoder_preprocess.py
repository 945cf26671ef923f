"""The folded patch embedding against transformers' Conv3d, the device preprocessing and
letterbox against the exact host paths, and the one-upload-per-frame staging."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

from objembed_ros.core.letterbox import PAD_VALUE, letterbox
from objembed_ros.core.resize import (
    ImageProcessorConfig,
    patchify,
    preprocess_image,
    repeat_temporal,
    resize_rgb,
    smart_resize,
)
from objembed_ros.device_frames import StagingUploader, resize_on_device
from objembed_ros.encoder.preprocess import (
    FoldedPatchEmbedding,
    preprocess_on_device,
    resolve_preprocess_mode,
)
from objembed_ros.grounder import Grounder, GrounderConfig
from objembed_ros.proposals.letterbox_device import letterbox_on_device

CFG = ImageProcessorConfig()
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


def _photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(data, name)())


def _official_patch_embed(hidden: int = 96, seed: int = 0) -> Qwen3VLVisionPatchEmbed:
    """transformers' own module (the unfolded Conv3d), randomly initialised."""
    torch.manual_seed(seed)
    cfg = Qwen3VLVisionConfig(hidden_size=hidden, patch_size=16, temporal_patch_size=2,
                              in_channels=3)
    module = Qwen3VLVisionPatchEmbed(cfg).eval()
    with torch.no_grad():  # weights like a trained kernel: not symmetric in time
        module.proj.weight.normal_(0, 0.02)
        module.proj.bias.normal_(0, 0.02)
    return module


def _dot_error_bound(module: Qwen3VLVisionPatchEmbed, official_rows: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """Per-output bound on |folded - unfolded|: each is a dot product of n = 3*2*16*16 terms,
    so each differs from the exact value by at most n*eps*sum|w*x| (Higham's gamma_n,
    first order); with the bias added (one more rounding) the two differ by at most twice
    that plus an ulp of the result. The folded kernel itself is exact in float64 (the sum of
    two float64 numbers of similar size: one rounding, inside the same bound)."""
    n = official_rows.shape[1]
    w = module.proj.weight.detach().abs().reshape(module.proj.out_channels, -1).double()
    magnitude = official_rows.double().abs() @ w.T
    return 2 * (n + 2) * eps * magnitude + eps


def test_folded_equals_unfolded_conv3d_float64() -> None:
    """Real-photo pixels through transformers' Conv3d (frame repeated, the official layout)
    and through the folded Linear (one slice): equal up to float64 rounding."""
    official = _official_patch_embed().double()
    folded = FoldedPatchEmbedding(copy.deepcopy(official))
    pixels = torch.from_numpy(preprocess_image(_photo("coffee"), CFG).pixel_values).double()
    rows = torch.from_numpy(repeat_temporal(pixels.numpy(), CFG))
    with torch.no_grad():
        want = official(rows)
        got = folded(pixels)
    assert got.shape == want.shape == (pixels.shape[0], 96)
    diff = (got - want).abs()
    bound = _dot_error_bound(official, rows, float(torch.finfo(torch.float64).eps))
    print(f"fold float64: max |diff| {diff.max():.2e}, max bound {bound.max():.2e}")
    assert bool((diff <= bound).all())
    assert diff.max() < 1e-13  # in practice a few ulps of outputs of size ~1
    assert want.abs().max() > 0.1  # non-trivial outputs


def test_folded_equals_unfolded_conv3d_float32() -> None:
    """The model's CPU dtype: same comparison, float32 bound."""
    official = _official_patch_embed(seed=1)
    folded = FoldedPatchEmbedding(copy.deepcopy(official))
    pixels = torch.from_numpy(preprocess_image(_photo("astronaut"), CFG).pixel_values)
    rows = torch.from_numpy(repeat_temporal(pixels.numpy(), CFG))
    with torch.no_grad():
        diff = (folded(pixels).double() - official(rows).double()).abs()
    bound = _dot_error_bound(official, rows, float(torch.finfo(torch.float32).eps))
    print(f"fold float32: max |diff| {diff.max():.2e}, max bound {bound.max():.2e}")
    assert bool((diff <= bound).all())
    assert diff.max() < 5e-5  # measured 4e-6 (outputs of size ~1): typical float32 noise


def test_official_layout_still_runs_the_conv3d() -> None:
    """Rows of the official width (even with different temporal slices) are not folded."""
    official = _official_patch_embed(seed=2)
    folded = FoldedPatchEmbedding(copy.deepcopy(official))
    rows = torch.randn(12, 3 * 2 * 16 * 16)
    with torch.no_grad():
        assert torch.equal(folded(rows), official(rows))
    with pytest.raises(ValueError, match="768"):
        folded(torch.zeros(4, 100))


def test_checkpoint_loads_folded(tiny_objembed_dir: Path) -> None:
    from objembed_ros.encoder.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_objembed_dir)
    embed = ck.qwen.visual.patch_embed
    assert isinstance(embed, FoldedPatchEmbedding)
    assert "patch_embed.proj.weight" in dict(ck.qwen.visual.named_parameters())
    assert "patch_embed.folded_weight" not in ck.qwen.visual.state_dict()


# ---------------------------------------------------------------------- device mode
@pytest.mark.parametrize("name", PHOTOS)
def test_device_preprocessing_is_exact_arithmetic_on_a_pil_like_resize(name: str) -> None:
    """Device mode = the exact host arithmetic and layout (bit for bit, checked with the host
    patchify, itself checked against transformers) applied to its own resize, and that resize
    is within 2 grey levels of PIL's on under 1% of the values."""
    rgb = _photo(name)
    pre = preprocess_on_device(torch.from_numpy(rgb), CFG, torch.float32)
    rh, rw = smart_resize(*rgb.shape[:2], CFG.factor, CFG.min_pixels, CFG.max_pixels)
    assert pre.resized_hw == (rh, rw) and pre.grid_thw == (1, rh // 16, rw // 16)
    resized = resize_on_device(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), rh, rw,
                               "bicubic")[0].permute(1, 2, 0).to(torch.uint8).numpy()
    np.testing.assert_array_equal(pre.pixel_values.numpy(), patchify(resized, CFG)[0])
    level_diff = np.abs(resized.astype(int) - resize_rgb(rgb, rh, rw).astype(int))
    print(f"{name}: device resize vs PIL: max {level_diff.max()} levels, "
          f"{(level_diff > 0).mean():.4%} of values differ")
    assert level_diff.max() <= 2 and (level_diff > 0).mean() < 0.01


def test_device_preprocessing_model_dtype() -> None:
    pre = preprocess_on_device(torch.from_numpy(_photo("chelsea")), CFG, torch.bfloat16)
    assert pre.pixel_values.dtype == torch.bfloat16
    assert pre.pixel_values.shape == (pre.grid_thw[1] * pre.grid_thw[2], 3 * 16 * 16)


@pytest.mark.parametrize("name", PHOTOS)
def test_letterbox_on_device_against_pil(name: str) -> None:
    rgb = _photo(name)
    canvas, geo = letterbox(rgb, 640)
    x, geo_dev = letterbox_on_device(torch.from_numpy(rgb), 640, torch.float32)
    assert geo_dev == geo and x.shape == (1, 3, 640, 640) and x.dtype == torch.float32
    levels = (x[0].permute(1, 2, 0) * 255).round().to(torch.int64).numpy()
    pad = np.ones((640, 640), bool)
    pad[geo.top:geo.top + geo.new_height, geo.left:geo.left + geo.new_width] = False
    assert (levels[pad] == PAD_VALUE).all()
    exact = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
    assert torch.equal(x[:, :, torch.from_numpy(pad)], exact[:, :, torch.from_numpy(pad)])
    diff = np.abs(levels - canvas.astype(np.int64))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.2


def test_resolve_preprocess_mode() -> None:
    assert resolve_preprocess_mode("auto", "cpu") == "exact"
    assert resolve_preprocess_mode("auto", "cuda:0") == "device"
    assert resolve_preprocess_mode("device", "cpu") == "device"
    with pytest.raises(ValueError, match="preprocess"):
        resolve_preprocess_mode("fast", "cpu")


# ---------------------------------------------------------------------- uploads
def test_uploader_shares_one_upload_per_frame() -> None:
    up = StagingUploader()
    frame, other = _photo("astronaut"), _photo("astronaut")
    cpu = torch.device("cpu")
    with up.sharing(frame):
        a = up.upload_frame(frame, cpu)
        b = up.upload_frame(frame, cpu)
        c = up.upload_frame(other, cpu)  # same pixels, other memory: not the shared frame
    assert a is b and c is not a and up.uploads == 2
    up.upload_frame(frame, cpu)  # outside the block nothing is shared
    assert up.uploads == 3 and up.uploaded_bytes == 3 * frame.nbytes
    assert torch.equal(a, torch.from_numpy(frame))


@pytest.mark.parametrize("mode,uploads", [("device", 1), ("exact", 2)])
def test_grounder_frame_uploads(tiny_objembed_dir: Path, tiny_wedetect_path: Path,
                                mode: str, uploads: int) -> None:
    """Device mode: ONE upload (the uint8 frame) feeds WeDetect and ObjEmbed. Exact mode: the
    letterbox canvas and the float32 pixels (host-made) are uploaded separately."""
    grounder = Grounder.load(GrounderConfig(
        checkpoint=str(tiny_objembed_dir), wedetect_checkpoint=str(tiny_wedetect_path),
        num_proposals=5, preprocess=mode))
    assert grounder.preprocess == mode == grounder.encoder.preprocessor.mode
    assert grounder.proposer.uploader is grounder.encoder.preprocessor.uploader
    rgb = np.ascontiguousarray(_photo("coffee")[:240, :320])
    up = grounder.encoder.preprocessor.uploader
    before = up.uploads
    frame = grounder.encode_frame(rgb)
    assert up.uploads - before == uploads
    assert frame.num_boxes == 5 and np.isfinite(frame.object_embeddings).all()
    assert Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir),
                                        proposer="external")).preprocess == "exact"  # auto


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned staging needs CUDA")
def test_pinned_staging_reuses_buffers_without_corruption() -> None:
    up = StagingUploader(max_buffers=2)
    dev = torch.device("cuda")
    frames = [np.full((720, 1280, 3), i, np.uint8) for i in range(6)]
    outs = [up.upload(f, dev) for f in frames]  # each refill waits for the previous copy
    torch.cuda.synchronize()
    assert [int(o.float().mean()) for o in outs] == list(range(6))
    assert len(up._buffers) == 1  # one pinned buffer for the one resolution

"""Random WeDetect-Uni checkpoints in the ORIGINAL file layout, for tests and benches.

Why: the released file is 430 MB (base) and cannot be fetched in tests. These files have
the original key names (spec 9.2), dtypes and shapes, so they exercise the real loader
(renaming, size inference from shapes, unused-key reporting). ``stage_depths`` lets a test
use fewer ConvNeXt blocks with the real channel widths; the loader infers the depths.

The weights are random but *sane*: BatchNorm running variances positive, layer scales
small, convolutions scaled by fan-in, so activations stay O(1), outputs are finite, scores
are spread over (0, 1) without saturating to exact ties, and neighbouring anchors predict
overlapping boxes, so NMS really suppresses.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from objembed_ros.proposals.wedetect_keys import simple_to_original
from objembed_ros.proposals.wedetect_model import (
    BottleRep,
    ContrastHead,
    ConvNeXtBlock,
    LayerNormChannelsFirst,
    WeDetectConfig,
    WeDetectModel,
)


# Stand-ins for keys a real file very probably carries but the proposal network ignores
# (ConvNeXt's output norm and 1000-class head; a text tower); small fake text shapes.
def _extra_keys(c4: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    pre = "backbone.image_model.model."
    return {
        pre + "norm.weight": torch.ones(c4),
        pre + "norm.bias": torch.zeros(c4),
        pre + "head.weight": torch.randn(1000, c4, generator=gen) * 0.01,
        pre + "head.bias": torch.zeros(1000),
        "backbone.text_model.model.embeddings.word_embeddings.weight":
            torch.randn(32, 16, generator=gen),
        "backbone.text_model.head.weight": torch.randn(768, 16, generator=gen) * 0.1,
        "backbone.text_model.head.bias": torch.zeros(768),
    }


def _init(name: str, module: nn.Module, leaf: str, shape: tuple[int, ...],
          gen: torch.Generator) -> torch.Tensor:
    def normal(std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.empty(shape).normal_(mean, std, generator=gen)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(shape).uniform_(lo, hi, generator=gen)

    if isinstance(module, nn.BatchNorm2d):
        if leaf == "num_batches_tracked":
            return torch.tensor(0, dtype=torch.long)
        # BottleRep units stay small next to their alpha * x shortcut: 30 3x3 units in a
        # row would otherwise amplify any texture the calibration image lacks.
        lo, hi = (0.1, 0.3) if ".m." in name else (0.6, 1.4)
        return {"weight": lambda: uniform(lo, hi), "bias": lambda: normal(0.1),
                "running_mean": lambda: normal(0.1),
                "running_var": lambda: uniform(0.5, 1.5)}[leaf]()
    if isinstance(module, (nn.LayerNorm, LayerNormChannelsFirst)):
        return uniform(0.8, 1.2) if leaf == "weight" else normal(0.05)
    if isinstance(module, ConvNeXtBlock):  # gamma (layer scale)
        return uniform(0.05, 0.2)
    if isinstance(module, BottleRep):  # alpha
        return uniform(0.5, 1.0)
    if isinstance(module, ContrastHead):
        level = int(name.split(".")[-1])
        return (torch.tensor(-2.0 - 0.5 * level) if leaf == "bias"
                else torch.tensor(-0.7 + 0.1 * level))  # exp(-0.7) ~ 0.5: no 1.0 ties
    if name.startswith("bbox_head.reg_preds.") and name.endswith(".6"):
        # DFL logits: peaky enough that box sizes vary from anchor to anchor.
        return normal(2.0 / math.sqrt(shape[1])) if leaf == "weight" else normal(1.0)
    if isinstance(module, nn.ConvTranspose2d):
        return normal(1.0 / math.sqrt(shape[0])) if leaf == "weight" else normal(0.02)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if leaf == "bias":
            return normal(0.02)
        fan_in = math.prod(shape[1:])
        gain = 1.0 if name.endswith((".6", "pwconv2")) else 1.4
        return normal(gain / math.sqrt(fan_in))
    if name == "" and leaf == "embeddings":
        return normal(1.0 / math.sqrt(shape[1]))
    raise AssertionError(f"no init rule for {name}.{leaf}")


def make_wedetect_state_dict(size: str = "base",
                             stage_depths: tuple[int, int, int, int] | None = None,
                             seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in *simple* key names (what :class:`WeDetectModel` loads)."""
    config = WeDetectConfig.for_size(size, stage_depths)
    with torch.device("meta"):
        model = WeDetectModel(config)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        tensors = list(module.named_parameters(recurse=False))
        tensors += list(module.named_buffers(recurse=False))
        for leaf, t in tensors:
            key = f"{mod_name}.{leaf}" if mod_name else leaf
            out[key] = _init(mod_name, module, leaf, tuple(t.shape), gen)
    order = list(model.state_dict().keys())
    state = {k: out[k] for k in order}
    _calibrate_batchnorm(config, state, gen)
    return state


def _calibration_batch(side: int, gen: torch.Generator) -> torch.Tensor:
    """Real photos (scikit-image's astronaut, coffee, chelsea) as a [3, 3, side, side] batch;
    smooth random noise when scikit-image is missing. Real photos matter: a random network
    calibrated on noise alone amplifies the texture of real images by orders of magnitude
    through its 30 3x3 units and saturates the scores."""
    try:
        from skimage import data
        photos = [data.astronaut(), data.coffee(), data.chelsea()]
    except Exception:  # scikit-image is a test dependency; stay usable without it
        low = torch.rand(3, 3, side // 16, side // 16, generator=gen)
        return torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")
    arrays = [np.asarray(Image.fromarray(np.ascontiguousarray(p)).resize((side, side),
                                                                        Image.BILINEAR))
              for p in photos]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def _calibrate_batchnorm(config: WeDetectConfig, state: dict[str, torch.Tensor],
                         gen: torch.Generator, side: int = 256) -> None:
    """Set every BN's running stats near the statistics it really sees on a small batch of
    photos (a pre-hook, in forward order), so activations stay O(1) through the network and
    scores do not saturate to exact 0/1 ties. Updates ``state`` in place."""
    with torch.device("meta"):
        model = WeDetectModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()

    def hook(module: nn.Module, args: tuple[torch.Tensor]) -> None:
        x = args[0].float()
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        jitter = torch.empty_like(var).uniform_(0.8, 1.25, generator=gen)
        module.running_mean.copy_(mean)
        module.running_var.copy_((var * jitter).clamp_(min=1e-3))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.BatchNorm2d)]
    try:
        model(_calibration_batch(side, gen))
    finally:
        for h in handles:
            h.remove()


def make_wedetect_checkpoint(path: str | os.PathLike, *, size: str = "base",
                             stage_depths: tuple[int, int, int, int] | None = None,
                             seed: int = 0, extra_keys: bool = True) -> Path:
    """Write a random WeDetect-Uni ``.pth`` in the original layout and return its path.

    ``stage_depths=None`` gives the released depths (3, 3, 27, 3): 430 MB for base, so use
    it only where the real shapes matter. ``extra_keys`` adds stand-ins for the unused
    ConvNeXt ``norm``/``head`` and ``backbone.text_model.*`` keys.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    simple = make_wedetect_state_dict(size, stage_depths, seed)
    original = {simple_to_original(k): v for k, v in simple.items()}
    if extra_keys:
        c4 = WeDetectConfig.for_size(size).dims[3]
        original.update(_extra_keys(c4, torch.Generator().manual_seed(seed + 1)))
    torch.save(original, path)
    return path

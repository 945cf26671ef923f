"""WeDetect-Uni as a plain torch module: ConvNeXt + CSPRepBiFPAN + YOLO-World-style head.

Why our own: the official ``SimpleYOLOWorldDetector`` hard-codes ``.cuda()``, reads images
from paths and loads with ``strict=False`` (silently dropping keys). This module reproduces
its arithmetic exactly (WeDetect spec sections 3-6) and its module names equal the *simple*
key names of spec 9.1, so ``load_state_dict(strict=True)`` works after
:func:`objembed_ros.proposals.wedetect_keys.original_to_simple`.

Depths and widths are constructor arguments read from the checkpoint's shapes, so a test
checkpoint with fewer ConvNeXt blocks (and the real widths) runs the very same code as the
released base (3,3,27,3 / 128..1024) and large (192..1536) models.

:meth:`WeDetectModel.forward` is the dense part (what ONNX/TensorRT export): letterboxed
image -> decoded boxes in letterbox pixels [B, A, 4] and sigmoid scores [B, A, P]. Top-k and
NMS live in :mod:`objembed_ros.proposals.select`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

STRIDES = (8, 16, 32)
REG_MAX = 16  # DFL bins per side
CLS_HIDDEN = 256
REG_HIDDEN = 64  # max(16, in0 // 4, 4 * REG_MAX) = 64 for both released sizes
EMBED_DIM = 768
NECK_BN_EPS = 1e-5
HEAD_BN_EPS = 1e-3
LN_EPS = 1e-6

# Official sizes (spec sections 3, 4, 11). ``neck`` is the P3 width; P4 = 2x, P5 = 4x.
SIZES: dict[str, dict] = {
    "base": {"dims": (128, 256, 512, 1024), "depths": (3, 3, 27, 3), "neck": 128,
             "input_size": 640},
    "large": {"dims": (192, 384, 768, 1536), "depths": (3, 3, 27, 3), "neck": 192,
              "input_size": 1280},
}


@dataclass(frozen=True)
class WeDetectConfig:
    """Architecture numbers; :func:`wedetect_keys.infer_config` reads them from shapes."""

    size: str = "base"  # "base" or "large": the released family these widths belong to
    dims: tuple[int, int, int, int] = (128, 256, 512, 1024)
    depths: tuple[int, int, int, int] = (3, 3, 27, 3)
    neck: int = 128
    num_prompts: int = 256
    embed_dim: int = EMBED_DIM
    input_size: int = 640

    @classmethod
    def for_size(cls, size: str, depths: tuple[int, int, int, int] | None = None
                 ) -> WeDetectConfig:
        if size not in SIZES:
            raise ValueError(f"unknown WeDetect size {size!r}; expected one of {sorted(SIZES)}")
        s = SIZES[size]
        return cls(size=size, dims=s["dims"], depths=tuple(depths or s["depths"]),
                   neck=s["neck"], input_size=s["input_size"])

    @property
    def official_depths(self) -> bool:
        return self.depths == SIZES[self.size]["depths"]


# ----------------------------------------------------------------------------- backbone


class LayerNormChannelsFirst(nn.Module):
    """ConvNeXt's hand-written channels-first LayerNorm (mean over C, biased variance)."""

    def __init__(self, channels: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> NHWC LayerNorm -> Linear 4C -> erf GELU -> Linear C -> gamma -> residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + y


class ConvNeXt(nn.Module):
    """The four ConvNeXt stages; returns every stage output (c1..c4, strides 4..32)."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNormChannelsFirst(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNormChannelsFirst(dims[i]),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dims[i]) for _ in range(depths[i])]) for i in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
            outs.append(x)
        return outs


# ----------------------------------------------------------------------------- neck


class ConvBNAct(nn.Module):
    """Conv (no bias, pad k//2) -> BatchNorm (eps 1e-5) -> ReLU / SiLU; keys ``block.*``."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1,
                 act: str = "relu") -> None:
        super().__init__()
        self.block = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)),
            ("bn", nn.BatchNorm2d(cout, eps=NECK_BN_EPS)),
            ("act", nn.ReLU() if act == "relu" else nn.SiLU()),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Transpose(nn.Module):
    """2x up-sampling by ConvTranspose2d (k 2, stride 2, with bias, no BN/activation)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upsample_transpose = nn.ConvTranspose2d(cin, cout, 2, 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample_transpose(x)


class BottleRep(nn.Module):
    """y = unit2(unit1(x)) + alpha * x with two 3x3 ConvBNSiLU units."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(c, c, 3, act="silu")
        self.conv2 = ConvBNAct(c, c, 3, act="silu")
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.alpha * x


class RepBlock(nn.Module):
    """``conv1`` + ``block.0..n//2-2``: n//2 BottleReps in a row (6 for n = 12)."""

    def __init__(self, c: int, n: int = 12) -> None:
        super().__init__()
        self.conv1 = BottleRep(c)
        self.block = nn.Sequential(*[BottleRep(c) for _ in range(n // 2 - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv1(x))


class BepC3(nn.Module):
    """cv3(concat[m(cv1 x), cv2 x]) with hidden width out/2 (the m branch first)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        h = cout // 2
        self.cv1 = ConvBNAct(cin, h, 1, act="silu")
        self.cv2 = ConvBNAct(cin, h, 1, act="silu")
        self.cv3 = ConvBNAct(2 * h, cout, 1, act="silu")
        self.m = RepBlock(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class BiFusion(nn.Module):
    """cv3(concat[up(x0), cv1(x1), downsample(cv2(x2))]), all ReLU units."""

    def __init__(self, in0: int, in1: int, out: int) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(in0, out, 1)
        self.cv2 = ConvBNAct(in1, out, 1)
        self.cv3 = ConvBNAct(3 * out, out, 1)
        self.upsample = Transpose(out, out)
        self.downsample = ConvBNAct(out, out, 3, 2)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat(
            [self.upsample(x0), self.cv1(x1), self.downsample(self.cv2(x2))], 1))


class CSPRepBiFPANNeck(nn.Module):
    """c1..c4 -> [P3 (/8), P4 (/16), P5 (/32)] with widths n, 2n, 4n."""

    def __init__(self, dims: tuple[int, ...], n: int) -> None:
        super().__init__()
        self.reduce_layer0 = ConvBNAct(dims[3], 2 * n, 1)
        self.Bifusion0 = BiFusion(dims[2], dims[1], 2 * n)
        self.Rep_p4 = BepC3(2 * n, 2 * n)
        self.reduce_layer1 = ConvBNAct(2 * n, n, 1)
        self.Bifusion1 = BiFusion(dims[1], dims[0], n)
        self.Rep_p3 = BepC3(n, n)
        self.downsample2 = ConvBNAct(n, n, 3, 2)
        self.Rep_n3 = BepC3(2 * n, 2 * n)
        self.downsample1 = ConvBNAct(2 * n, 2 * n, 3, 2)
        self.Rep_n4 = BepC3(4 * n, 4 * n)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c1, c2, c3, c4 = feats
        fpn_out0 = self.reduce_layer0(c4)
        f_out0 = self.Rep_p4(self.Bifusion0(fpn_out0, c3, c2))
        fpn_out1 = self.reduce_layer1(f_out0)
        p3 = self.Rep_p3(self.Bifusion1(fpn_out1, c2, c1))
        p4 = self.Rep_n3(torch.cat([self.downsample2(p3), fpn_out1], 1))
        p5 = self.Rep_n4(torch.cat([self.downsample1(p4), fpn_out0], 1))
        return [p3, p4, p5]


# ----------------------------------------------------------------------------- head


def _head_branch(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """[0] conv3x3 [1] BN [2] SiLU [3] conv3x3 [4] BN [5] SiLU [6] conv1x1 (bias)."""
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden, eps=HEAD_BN_EPS),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden, eps=HEAD_BN_EPS),
        nn.SiLU(),
        nn.Conv2d(hidden, cout, 1))


class ContrastHead(nn.Module):
    """BN on the 768-d embedding, a per-level ``logit_scale`` and ``bias`` (scalars)."""

    def __init__(self, dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim, eps=HEAD_BN_EPS)
        self.bias = nn.Parameter(torch.tensor(0.0))
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Logits [B, P, H, W] against the *raw* prompt embeddings (not L2-normalised)."""
        x = self.norm(x)
        x = torch.einsum("bchw,kc->bkhw", x, prompts)
        return x * self.logit_scale.exp() + self.bias


class YOLOWorldHead(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.cls_preds = nn.ModuleList(_head_branch(c, CLS_HIDDEN, embed_dim)
                                       for c in in_channels)
        self.reg_preds = nn.ModuleList(_head_branch(c, REG_HIDDEN, 4 * REG_MAX)
                                       for c in in_channels)
        self.cls_contrasts = nn.ModuleList(ContrastHead(embed_dim) for _ in in_channels)


# ----------------------------------------------------------------------------- detector


def dfl_distances(reg: torch.Tensor) -> torch.Tensor:
    """[B, 64, H, W] side-major DFL logits -> [B, H*W, 4] expected (l, t, r, b) in strides."""
    b, _, h, w = reg.shape
    probs = reg.reshape(b, 4, REG_MAX, h * w).permute(0, 3, 1, 2).softmax(3)
    proj = torch.arange(REG_MAX, dtype=probs.dtype, device=probs.device)
    return probs.matmul(proj.view(-1, 1)).squeeze(-1)


def grid_priors(h: int, w: int, stride: int, device: torch.device | None = None
                ) -> torch.Tensor:
    """Anchor centres [H*W, 2] ((j+0.5)s, (i+0.5)s), row-major (y outer, x inner), float32."""
    xs = (torch.arange(w, device=device) + 0.5) * stride
    ys = (torch.arange(h, device=device) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).float()


def decode_boxes(priors: torch.Tensor, dist: torch.Tensor, stride: int) -> torch.Tensor:
    """(px - l*s, py - t*s, px + r*s, py + b*s); no clipping (boxes may leave the canvas)."""
    d = dist * stride
    return torch.stack([priors[:, 0] - d[..., 0], priors[:, 1] - d[..., 1],
                        priors[:, 0] + d[..., 2], priors[:, 1] + d[..., 3]], -1)


class WeDetectModel(nn.Module):
    """WeDetect-Uni with the simple key names; ``forward`` gives dense boxes and scores."""

    def __init__(self, config: WeDetectConfig | None = None) -> None:
        super().__init__()
        cfg = config or WeDetectConfig()
        self.config = cfg
        self.embeddings = nn.Parameter(torch.zeros(cfg.num_prompts, cfg.embed_dim))
        self.backbone = ConvNeXt(cfg.dims, cfg.depths)
        self.neck = CSPRepBiFPANNeck(cfg.dims, cfg.neck)
        self.bbox_head = YOLOWorldHead((cfg.neck, 2 * cfg.neck, 4 * cfg.neck), cfg.embed_dim)

    def set_compute_dtype(self, dtype: torch.dtype) -> WeDetectModel:
        """Run the convolutions in ``dtype`` (e.g. fp16 on a GPU).

        The contrastive BN, the prompt product, the sigmoid and the DFL decoding stay in
        float32: they are cheap and decide the ranking, so reduced precision there would
        buy nothing and change selections more.
        """
        for part in (self.backbone, self.neck, self.bbox_head.cls_preds,
                     self.bbox_head.reg_preds):
            part.to(dtype)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.backbone.downsample_layers[0][0].weight.dtype

    def forward_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Raw per-level outputs: logits [B, P, H, W] and DFL logits [B, 64, H, W].

        They come out in the dtype of ``embeddings`` (float32 unless the whole module was
        converted, e.g. to float64 for a reference run), whatever the convolutions ran in.
        """
        feats = self.neck(self.backbone(x))
        head = self.bbox_head
        prompts = self.embeddings
        logits, regs = [], []
        for lvl, f in enumerate(feats):
            emb = head.cls_preds[lvl](f).to(prompts.dtype)
            logits.append(head.cls_contrasts[lvl](emb, prompts))
            regs.append(head.reg_preds[lvl](f).to(prompts.dtype))
        return logits, regs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] image in [0, 1] -> boxes [B, A, 4] (letterbox px), scores [B, A, P].

        Anchors run P3, P4, P5, each row-major: A = 8400 at 640.
        """
        return self.decode(*self.forward_levels(x))

    @staticmethod
    def decode(logits: list[torch.Tensor], regs: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-level outputs -> boxes [B, A, 4] (letterbox px) and sigmoid scores [B, A, P]."""
        boxes, scores = [], []
        for lvl, (lg, rg) in enumerate(zip(logits, regs, strict=True)):
            b, p, h, w = lg.shape
            scores.append(lg.reshape(b, p, h * w).permute(0, 2, 1))
            priors = grid_priors(h, w, STRIDES[lvl], device=lg.device)
            boxes.append(decode_boxes(priors, dfl_distances(rg), STRIDES[lvl]))
        return torch.cat(boxes, 1), torch.cat(scores, 1).sigmoid()

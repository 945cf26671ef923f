"""objembed-ground: ground text queries in image files offline (JSON + overlay out).

Examples::

    objembed-ground --checkpoint model/ObjEmbed-2B --image a.jpg --query "the red cup" \\
        --wedetect-checkpoint model/wedetect_base_uni.pth --top-k 3 --out r.json --overlay o.png
    objembed-ground --checkpoint DIR --image a.jpg b.jpg --query "a dog" --boxes boxes.json

The same Grounder as the node (grounder.build + grounder.session): each image is encoded
once, each query is one cached text pass plus core.scoring. Box proposals, in order of
precedence: ``--boxes`` (JSON: a list of [x1,y1,x2,y2] for every image, or an object
mapping image path -> list); ``--proposer wedetect`` (needs ``--wedetect-checkpoint``;
implied when that flag is given); ``--proposer whole-image`` (one box = the image);
otherwise ``--proposer grid``: a documented multi-scale sliding-window grid
(``proposals.base.GridProposer``), a proposer-free fallback that is much weaker than
WeDetect and is labelled as such in the output. ``python -m objembed_ros.demo
--offline-only`` runs this on tiny random checkpoints.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from objembed_ros.core.overlay import OverlayBox
from objembed_ros.core.overlay import draw_overlay as render_overlay

UNTRAINED_BANNER = "UNTRAINED random weights - scores are meaningless"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="objembed-ground", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, help="ObjEmbed checkpoint directory")
    p.add_argument("--image", nargs="+", type=Path, default=[], help="image file(s)")
    p.add_argument("--query", action="append", default=[], help="object query (repeatable)")
    p.add_argument("--boxes", type=Path, help="JSON boxes (see the module help)")
    p.add_argument("--proposer", choices=("wedetect", "whole-image", "grid"), default=None)
    p.add_argument("--wedetect-checkpoint", type=Path)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", type=Path, help="write results JSON here")
    p.add_argument("--overlay", type=Path, help="write an overlay PNG (image index appended "
                                                "when several images)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--max-boxes", type=int, default=300)
    p.add_argument("--untrained", action="store_true",
                   help="label every output as coming from untrained random weights (demo)")
    return p


def load_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 RGB / HxWx4 RGBA / HxW grey uint8 (the encoder converts)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            return np.asarray(im.convert("RGBA")).copy()
        if im.mode == "L":
            return np.asarray(im).copy()
        return np.asarray(im.convert("RGB")).copy()


def _supplied_boxes(spec: Path, images: Sequence[str]) -> dict[str, np.ndarray]:
    raw = json.loads(spec.read_text())
    if isinstance(raw, dict):
        missing = [p for p in images if p not in raw]
        if missing:
            raise SystemExit(f"--boxes has no entry for: {', '.join(missing)}")
        return {p: np.asarray(raw[p], dtype=np.float64).reshape(-1, 4) for p in images}
    arr = np.asarray(raw, dtype=np.float64).reshape(-1, 4)
    return {p: arr for p in images}


class _BoxSource:
    """Which boxes each image gets: supplied (--boxes, passed with each frame) or the
    Grounder's own proposer (WeDetect, whole image, grid)."""

    def __init__(self, args: argparse.Namespace, names: Sequence[str]) -> None:
        self.kind = args.proposer or ("wedetect" if args.wedetect_checkpoint else "grid")
        self.supplied = _supplied_boxes(args.boxes, names) if args.boxes else None
        if self.supplied is not None:
            self.kind = "supplied"
        if self.kind == "wedetect" and args.wedetect_checkpoint is None:
            raise SystemExit("--proposer wedetect needs --wedetect-checkpoint")

    @property
    def grounder_proposer(self) -> str:
        """The GrounderConfig.proposer value for this source."""
        return {"supplied": "external", "whole-image": "whole_image"}.get(self.kind, self.kind)

    def boxes_for(self, name: str) -> np.ndarray | None:
        """Boxes to pass to the Grounder, or None when its own proposer runs."""
        return None if self.supplied is None else self.supplied[name]

    @property
    def label(self) -> str:
        if self.kind == "grid":
            return "grid (multi-scale sliding windows; fallback, no proposer)"
        return self.kind


def ground(grounder: Any, images: Sequence[tuple[str, np.ndarray]], queries: Sequence[str],
           boxes: _BoxSource, top_k: int, untrained: bool = False) -> dict[str, Any]:
    """Encode each image once through the Grounder (the node's path), keep the top-k boxes
    per query."""
    out: dict[str, Any] = {"untrained": untrained, "proposals": boxes.label,
                           "queries": list(queries), "images": []}
    if untrained:
        out["warning"] = UNTRAINED_BANNER
    for index, (name, rgb) in enumerate(images):
        frame = grounder.encode_frame(rgb, index, name, boxes=boxes.boxes_for(name),
                                      cache=False)
        entry: dict[str, Any] = {"image": name, "size": list(frame.image_size),
                                 "num_boxes": int(len(frame.boxes)),
                                 "timings": {k: round(v, 4) for k, v in frame.timings.items()},
                                 "results": []}
        for res in grounder.ground(list(queries), frame, top_k=top_k):
            entry["results"].append({"query": res.query, "top": [{
                "index": obj.proposal_index, "box": [round(float(v), 2) for v in obj.box],
                "score": obj.score, "similarity": obj.similarity, "iou": obj.iou,
                "cosine": obj.cosine,
            } for obj in res.objects]})
        out["images"].append(entry)
    return out


def draw_overlay(rgb: np.ndarray, entry: dict[str, Any], path: Path, untrained: bool) -> None:
    """The best box of every query on the image (core.overlay, as the node's debug image),
    labelled with query and score, written as PNG."""
    from PIL import Image

    groups = [[OverlayBox(tuple(res["top"][0]["box"]),  # type: ignore[arg-type]
                          f"{res['query']} {res['top'][0]['score']:.3f}")]
              if res["top"] else [] for res in entry["results"]]
    drawn = render_overlay(rgb, groups, banner=UNTRAINED_BANNER if untrained else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawn).save(path)


def _table(result: dict[str, Any]) -> str:
    lines = []
    if result.get("untrained"):
        lines += ["!" * 60, f"!! {UNTRAINED_BANNER}", "!" * 60]
    lines.append(f"proposals: {result['proposals']}")
    for entry in result["images"]:
        t = entry["timings"]
        lines.append(f"\n{entry['image']}  {entry['size'][0]}x{entry['size'][1]}  "
                     f"{entry['num_boxes']} boxes  proposals {t.get('proposals', 0):.3f} s + "
                     f"encode {t.get('encode', 0):.3f} s")
        lines.append(f"  {'query':32s} {'rank':>4s} {'score':>7s} {'sim':>7s} {'iou':>7s}  box")
        for res in entry["results"]:
            for rank, hit in enumerate(res["top"], start=1):
                box = ", ".join(f"{v:.0f}" for v in hit["box"])
                lines.append(f"  {res['query'][:32]:32s} {rank:4d} {hit['score']:7.4f} "
                             f"{hit['similarity']:7.4f} {hit['iou']:7.4f}  [{box}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint is None or not args.image or not args.query:
        _parser().error("--checkpoint, --image and --query are required")
    import torch

    from objembed_ros.core.errors import InputError, ModelFailure
    from objembed_ros.core.resize import to_rgb
    from objembed_ros.encoder.checkpoint import CheckpointError
    from objembed_ros.grounder import Grounder, GrounderConfig
    from objembed_ros.proposals.wedetect_keys import WeDetectCheckpointError

    images: list[tuple[str, np.ndarray]] = []
    for path in args.image:
        try:
            images.append((str(path), load_image(path)))
        except OSError as exc:
            print(f"error: cannot read image {path}: {exc}", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    try:
        source = _BoxSource(args, [n for n, _ in images])
        grounder = Grounder.load(GrounderConfig(
            checkpoint=str(args.checkpoint), proposer=source.grounder_proposer,
            wedetect_checkpoint=str(args.wedetect_checkpoint or ""), device=args.device,
            dtype=dtype_name, max_boxes=args.max_boxes, max_query_tokens=1 << 20))
        images = [(name, to_rgb(rgb)) for name, rgb in images]
        result = ground(grounder, images, args.query, source, args.top_k, args.untrained)
    except (CheckpointError, WeDetectCheckpointError, FileNotFoundError, InputError,
            ModelFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.overlay:
        for i, ((_, rgb), entry) in enumerate(zip(images, result["images"], strict=True)):
            path = args.overlay if len(images) == 1 else args.overlay.with_name(
                f"{args.overlay.stem}_{i}{args.overlay.suffix}")
            draw_overlay(rgb, entry, path, args.untrained)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""objembed-ground end to end on image files, with the tiny checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from objembed_ros.cli import UNTRAINED_BANNER, main
from objembed_ros.core.boxes import grid_boxes
from objembed_ros.core.overlay import BANNER_COLOUR


def test_untrained_label(tmp_path: Path, tiny_objembed_dir: Path, photo: np.ndarray,
                         capsys) -> None:
    """--untrained (what the demo passes with its random checkpoints) labels every output;
    the default proposer without a detector checkpoint is the grid, labelled as a fallback."""
    img, out, overlay = tmp_path / "p.png", tmp_path / "r.json", tmp_path / "o.png"
    Image.fromarray(photo).save(img)
    assert main(["--checkpoint", str(tiny_objembed_dir), "--image", str(img), "--query", "x",
                 "--query", "y", "--top-k", "2", "--out", str(out), "--overlay", str(overlay),
                 "--untrained"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == ["!" * 60, f"!! {UNTRAINED_BANNER}", "!" * 60]
    result = json.loads(out.read_text())
    assert result["untrained"] is True and result["warning"] == UNTRAINED_BANNER
    assert result["proposals"] == "grid (multi-scale sliding windows; fallback, no proposer)"
    assert result["images"][0]["num_boxes"] == len(grid_boxes(512, 512))
    assert [len(r["top"]) for r in result["images"][0]["results"]] == [2, 2]
    drawn = np.asarray(Image.open(overlay))
    assert drawn.shape == (512, 512, 3)

    def red(img: np.ndarray) -> np.ndarray:  # the banner's (antialiased) pure red
        return (img[..., 0] > 128) & (img[..., 1] == 0) & (img[..., 2] == 0)

    assert BANNER_COLOUR == (255, 0, 0)
    assert red(drawn)[490:, :200].any() and not red(photo)[490:, :200].any()


def test_files_with_supplied_boxes(tmp_path: Path, tiny_objembed_dir: Path,
                                   photo_wide: np.ndarray, photo: np.ndarray) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(photo_wide).save(a)
    Image.fromarray(photo).save(b)
    boxes = {str(a): [[10, 10, 300, 300], [300, 0, 600, 400], [50, 50, 60, 60]],
             str(b): [[0, 0, 512, 512]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "r.json"
    rc = main(["--checkpoint", str(tiny_objembed_dir), "--image", str(a), str(b),
               "--query", "a coffee cup", "--query", "a saucer", "--boxes",
               str(tmp_path / "boxes.json"), "--top-k", "2", "--out", str(out),
               "--overlay", str(tmp_path / "ov.png")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["untrained"] is False and result["proposals"] == "supplied"
    first = result["images"][0]
    assert first["size"] == [600, 400] and first["num_boxes"] == 3
    for res in first["results"]:
        scores = [hit["score"] for hit in res["top"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        hit = res["top"][0]
        assert abs(hit["score"] - hit["similarity"] * hit["iou"]) < 1e-6
    assert len(result["images"][1]["results"][0]["top"]) == 1
    # the spec's score in float64 from the encoder's embeddings of the same pixels
    # (a.png is lossless)
    from objembed_ros import ObjEmbedEncoder

    enc = ObjEmbedEncoder.from_pretrained(tiny_objembed_dir)
    t = enc.encode_text(["a coffee cup", "a saucer"]).double().numpy()
    frame = enc.encode_image(photo_wide, np.array(boxes[str(a)], np.float32))
    o = frame.object_embeddings.double().numpy()
    cos = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ \
        (o / np.linalg.norm(o, axis=1, keepdims=True)).T
    p = enc.score_params
    ref = 1 / (1 + np.exp(-(cos * np.exp(p.logit_log_scale) + p.logit_bias))) / \
        (1 + np.exp(-frame.iou_logits.double().numpy()))[None]
    for qi, res in enumerate(first["results"]):
        for hit in res["top"]:
            assert abs(hit["score"] - float(ref[qi, hit["index"]])) < 1e-6
    assert (tmp_path / "ov_0.png").is_file() and (tmp_path / "ov_1.png").is_file()


def test_whole_image_and_errors(tmp_path: Path, tiny_objembed_dir: Path, photo: np.ndarray,
                                capsys) -> None:
    img = tmp_path / "p.png"
    Image.fromarray(photo).save(img)
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(tiny_objembed_dir), "--image", str(img), "--query", "x",
                 "--proposer", "whole-image", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["images"][0]["results"][0]["top"][0]["box"] == \
        [0, 0, 512, 512]
    capsys.readouterr()
    assert main(["--checkpoint", str(tmp_path / "missing"), "--image", str(img),
                 "--query", "x"]) == 2
    assert capsys.readouterr().err == (f"error: ObjEmbed checkpoint directory not found: "
                                       f"{tmp_path / 'missing'}\n")


def test_wedetect_proposer(tmp_path: Path, tiny_objembed_dir: Path, tiny_wedetect_path: Path,
                           photo_wide: np.ndarray) -> None:
    img = tmp_path / "c.png"
    Image.fromarray(photo_wide).save(img)
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(tiny_objembed_dir), "--image", str(img), "--query", "a cup",
                 "--wedetect-checkpoint", str(tiny_wedetect_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["proposals"] == "wedetect"
    assert 0 < result["images"][0]["num_boxes"] <= 100

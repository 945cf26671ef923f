"""Same numbers under transformers 4.57.x and 5.x: the encoder run in this process (4.57, the
default .venv) against the same checkpoint, photo, boxes and queries run in a subprocess on
each transformers 5.x overlay (scripts/install_transformers5.sh, installed by ``make test``).

Text passes are bit-identical; the image pass differs by float32 rounding only (5.x reorders
the vision tower's position-embedding arithmetic): measured max |diff| 1.2e-6 on values up to
3.1, hence atol 1e-5 here, and every score decision (top-1, order) must be the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers_reference import (
    TRANSFORMERS_MAJOR,
    transformers5_overlay,
    transformers5_versions,
)

BOXES = [[40.0, 30.0, 300.0, 480.0], [200.5, 100.25, 260.0, 180.0], [0.0, 0.0, 512.0, 512.0],
         [300.0, 20.0, 500.0, 250.0]]
QUERIES = ["a person in a white space suit", "the red cup on the left", "a rocket flag", "x 10"]

# Runs in either environment; writes every number the node's answers are made of.
SCRIPT = r"""
import json, sys
import numpy as np
import transformers
from skimage import data
from objembed_ros import ObjEmbedEncoder

ckpt, out = sys.argv[1], sys.argv[2]
boxes, queries = json.loads(sys.argv[3]), json.loads(sys.argv[4])
enc = ObjEmbedEncoder.from_pretrained(ckpt, attn="sdpa")
photo = np.ascontiguousarray(data.astronaut())
frame = enc.encode_image(photo, np.array(boxes))
text = enc.encode_text(queries)
scores = enc.score_objects(text, frame)
np.savez(out, objects=frame.object_embeddings.numpy(), ious=frame.iou_logits.numpy(),
         globals=frame.global_embeddings.numpy(), text=text.numpy(),
         image_text=enc.encode_text(queries, target="image").numpy(),
         image_query=enc.encode_image_query(photo[::2, ::2].copy()).numpy(),
         scores=scores.score, prompt=np.array(enc.image_prompt_ids(len(boxes), 4)))
print(json.dumps({"transformers": transformers.__version__}))
"""


def _run(checkpoint: Path, out: Path, overlay: Path | None) -> str:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if overlay is not None:
        env["PYTHONPATH"] = str(overlay)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint), str(out),
                           json.dumps(BOXES), json.dumps(QUERIES)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["transformers"]


@pytest.mark.skipif(TRANSFORMERS_MAJOR != 4, reason="runs from the 4.57 environment")
@pytest.mark.parametrize("version", transformers5_versions())
def test_transformers_4_and_5_give_the_same_numbers(tiny_objembed_dir: Path, tmp_path: Path,
                                                    version: str) -> None:
    overlay = transformers5_overlay(version)
    if not (overlay / "transformers").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{overlay} missing: make test installs it (install_transformers5.sh)")
        pytest.skip(f"no transformers {version} overlay at {overlay} "
                    "(bash scripts/install_transformers5.sh)")
    v4 = _run(tiny_objembed_dir, tmp_path / "v4.npz", None)
    v5 = _run(tiny_objembed_dir, tmp_path / "v5.npz", overlay)
    assert v4.startswith("4.57.") and v5 == version, (v4, v5)
    a, b = np.load(tmp_path / "v4.npz"), np.load(tmp_path / "v5.npz")
    np.testing.assert_array_equal(a["prompt"], b["prompt"])
    np.testing.assert_array_equal(a["text"], b["text"])
    np.testing.assert_array_equal(a["image_text"], b["image_text"])
    for key in ("objects", "ious", "globals", "image_query", "scores"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=key)
    # the decisions the node makes from them are the same
    np.testing.assert_array_equal(a["scores"].argmax(axis=1), b["scores"].argmax(axis=1))
    np.testing.assert_array_equal(np.argsort(-a["scores"], axis=1),
                                  np.argsort(-b["scores"], axis=1))
    # the comparison has teeth: the outputs are far from constant
    assert np.abs(a["objects"] - a["objects"][::-1]).max() > 0.1

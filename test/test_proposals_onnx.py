"""ONNX export of the dense WeDetect graph: onnxruntime parity on CPU and the same
selection from onnxruntime outputs as from torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from skimage import data

from objembed_ros import WeDetectProposer
from objembed_ros.accel.wedetect_onnx import OnnxWeDetectDense, export_wedetect_onnx

pytest.importorskip("onnxruntime")


def test_onnx_parity_and_selection(tiny_wedetect_path: Path, tmp_path: Path) -> None:
    prop = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320)
    path = export_wedetect_onnx(prop, tmp_path / "wedetect.onnx")
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["boxes", "scores"]
    runner = OnnxWeDetectDense(path)
    for rgb in (data.astronaut(), data.coffee()):
        x, _ = prop.preprocess(rgb)
        tb, ts = prop.dense(x)
        ob, os_ = runner(x)
        assert ob.shape == tb.shape == (1, 2100, 4) and os_.shape == ts.shape == (1, 2100, 256)
        assert np.abs(ob.numpy() - tb.numpy()).max() < 0.05  # px; boxes span ~20-600 px
        assert np.abs(os_.numpy() - ts.numpy()).max() < 1e-4
    # the exact selection on onnxruntime outputs picks the same proposals
    ort_prop = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320)
    ort_prop.dense = runner  # type: ignore[method-assign]
    for rgb in (data.chelsea(),):
        a, b = ort_prop.propose(rgb), prop.propose(rgb)
        assert np.array_equal(a.labels, b.labels)
        assert np.abs(a.boxes - b.boxes).max() < 0.05


def test_export_rejects_bad_size(tiny_wedetect_path: Path, tmp_path: Path) -> None:
    prop = WeDetectProposer.from_checkpoint(tiny_wedetect_path, input_size=320)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_wedetect_onnx(prop, tmp_path / "x.onnx", size=300)
    with pytest.raises(TypeError):
        export_wedetect_onnx(object(), tmp_path / "x.onnx")

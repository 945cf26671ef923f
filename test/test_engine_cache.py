"""Stale TensorRT engines are detected, never silently used."""
from __future__ import annotations

import dataclasses

from objembed_ros.accel.engine_cache import (
    EngineKey,
    file_sha256,
    lookup_engine,
    record_engine,
)

KEY = EngineKey(graph="projector", model="objembed-2b", onnx_sha256="a" * 64, precision="fp16",
                gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.9.0",
                box_profile="1/100/300")


def test_missing_then_ok_after_record(tmp_path) -> None:
    assert lookup_engine(tmp_path, KEY).status == "missing"
    found = lookup_engine(tmp_path, KEY)
    found.path.write_bytes(b"engine")
    assert lookup_engine(tmp_path, KEY).status == "missing"  # no sidecar: not trusted
    record_engine(found.path, KEY)
    assert lookup_engine(tmp_path, KEY).status == "ok"


def test_every_key_field_makes_an_engine_stale(tmp_path) -> None:
    path = lookup_engine(tmp_path, KEY).path
    path.write_bytes(b"engine")
    record_engine(path, KEY)
    for field in dataclasses.fields(EngineKey):
        changed = dataclasses.replace(KEY, **{field.name: getattr(KEY, field.name) + "x"})
        # Same file name forced: a stale sidecar must still be caught.
        changed_path = lookup_engine(tmp_path, changed).path
        if changed_path != path:
            changed_path.write_bytes(b"engine")
            changed_path.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
        result = lookup_engine(tmp_path, changed)
        assert result.status == "stale", field.name
        assert field.name in result.reason


def test_file_names_differ_per_gpu_and_precision() -> None:
    names = {dataclasses.replace(KEY, gpu=g, precision=p).filename()
             for g in ("NVIDIA H100 80GB HBM3", "Orin") for p in ("fp16", "bf16")}
    assert len(names) == 4


def test_file_sha256(tmp_path) -> None:
    f = tmp_path / "x.onnx"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

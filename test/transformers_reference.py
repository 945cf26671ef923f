"""transformers' own reference pieces for the parity tests, under 4.57.x and 5.x alike."""
from __future__ import annotations

from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
TRANSFORMERS_MINOR = int(transformers.__version__.split(".")[1])


def transformers5_versions() -> list[str]:
    """The 5.x versions make test installs as overlays (.venv/transformers-VERSION)."""
    lines = (REPO / "transformers5-versions.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def transformers5_overlay(version: str) -> Path:
    return REPO / ".venv" / f"transformers-{version}"


def official_image_processor(**kwargs: object) -> object:
    """transformers' own CPU Qwen2-VL image processor: the numpy "slow" class in 4.57, the
    PIL backend in 5.x (its default class needs torchvision, which has no CPU wheel)."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as Processor,
        )
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
            Qwen2VLImageProcessor as Processor,
        )
    return Processor(**kwargs)

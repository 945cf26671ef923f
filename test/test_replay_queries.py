"""objembed-replay's --queries-file: a list, {queries: [...]}, or a node params file."""
from __future__ import annotations

from pathlib import Path

import pytest

from objembed_ros.replay.cli import load_queries


@pytest.mark.parametrize("text", [
    "- the red cup\n- a mug\n",
    "queries: [the red cup, a mug]\n",
    "/**:\n  ros__parameters:\n    top_k: 3\n    standing_queries: [the red cup, a mug]\n",
])
def test_query_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(text)
    assert load_queries(path) == ["the red cup", "a mug"]


def test_query_file_without_queries(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    for text in ("top_k: 3\n", "node:\n  ros__parameters:\n    image_topics: [image]\n"):
        path.write_text(text)
        with pytest.raises(SystemExit, match="no list of queries"):
            load_queries(path)
    with pytest.raises(SystemExit, match="cannot read"):
        load_queries(tmp_path / "missing.yaml")

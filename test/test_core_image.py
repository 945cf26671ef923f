"""One image check serves the encoder, the proposer and the grounder."""
from __future__ import annotations

import numpy as np
import pytest

from objembed_ros.core.errors import InputError
from objembed_ros.core.image import check_image
from objembed_ros.core.letterbox import to_rgb_uint8
from objembed_ros.core.resize import to_rgb

BAD = [
    (np.zeros((0, 5, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4, 2), np.uint8), "channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    ([[1, 2], [3, 4]], "numpy"),
]


@pytest.mark.parametrize("bad,match", BAD)
@pytest.mark.parametrize("entry", [check_image, to_rgb, to_rgb_uint8])
def test_every_entry_point_rejects_the_same_images(entry, bad: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        entry(bad)


def test_grey_becomes_hxwx1_and_the_conversions_keep_their_alpha_policies() -> None:
    assert check_image(np.zeros((3, 5), np.uint8)).shape == (3, 5, 1)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 10  # fully transparent dark pixels
    assert (to_rgb(rgba) == 255).all()  # ObjEmbed: composited on white
    assert (to_rgb_uint8(rgba) == 10).all()  # WeDetect: alpha dropped (PIL convert("RGB"))


def test_grounder_wants_rgb(tiny_objembed_dir) -> None:
    from objembed_ros.grounder import Grounder, GrounderConfig

    grounder = Grounder.load(GrounderConfig(checkpoint=str(tiny_objembed_dir),
                                            proposer="external"))
    with pytest.raises(InputError, match="HxWx3 RGB"):
        grounder.encode_frame(np.zeros((32, 32, 4), np.uint8))
    with pytest.raises(InputError, match="empty"):
        grounder.encode_frame(np.zeros((0, 32, 3), np.uint8))

"""utils.io.png: unfiltered PNG rows decode to the pixels and metadata PIL writes."""

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from utils.io.png import encode_rgb


def _images():
    rng = np.random.default_rng(3)
    yield rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)             # noise
    yield np.full((1, 1, 3), 200, np.uint8)                              # one pixel
    flat = np.full((300, 451, 4), 255, np.uint8)                         # RGBA, opaque figure
    flat[40:80, 10:400, :3] = (31, 119, 180)
    yield flat
    yield rng.integers(0, 256, (64, 7, 4), dtype=np.uint8)[:, ::-1]      # not contiguous


@pytest.mark.parametrize("n", range(4))
@pytest.mark.parametrize("level", [1, 3, 9])
def test_decodes_to_the_pixels_and_metadata_of_pil(n, level):
    image = list(_images())[n]
    text = {"Software": "Matplotlib version3.11.2, https://matplotlib.org/"}
    ours = Image.open(io.BytesIO(encode_rgb(image, dpi=110, text=text, level=level)))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", text["Software"])
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., :3])).save(buffer, format="png",
                                                             dpi=(110, 110), pnginfo=info)
    theirs = Image.open(buffer)
    assert ours.mode == theirs.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(ours), image[..., :3])
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert ours.info == theirs.info  # dpi (pHYs, the same rounding) and the text


def test_rejects_other_images():
    with pytest.raises(ValueError):
        encode_rgb(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_rgb(np.zeros((4, 4, 3), np.uint16))

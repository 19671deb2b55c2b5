"""Training images: square, aspect kept, pixels only (no ancillary PNG chunks)."""

import io

import numpy as np
import pytest
from PIL import Image

from lib_lora_train.dataset.images import fit_square, png_bytes, png_chunk_types


def test_pad_keeps_aspect_and_letterboxes_with_black():
    wide = np.full((100, 200), 200, dtype=np.uint8)
    image = fit_square(wide, 64, "pad")
    array = np.asarray(image)
    assert image.size == (64, 64) and image.mode == "L"
    assert array[0].max() == 0 and array[-1].max() == 0  # padding rows
    assert array[32, 5] == 200  # content spans the full width


def test_crop_fills_the_square_from_the_centre():
    tall = np.zeros((200, 100, 3), dtype=np.uint8)
    tall[90:110] = 255
    image = fit_square(tall, 64, "crop")
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image)[32].min() == 255  # the centre band survives
    assert np.asarray(image)[0].max() == 0


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_has_no_ancillary_chunks(mode):
    image = Image.new(mode, (16, 16), 128)
    data = png_bytes(image)
    assert png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]
    again = Image.open(io.BytesIO(data))
    assert again.mode == mode and not again.info


def test_chunk_reader_rejects_non_png():
    with pytest.raises(ValueError):
        png_chunk_types(b"GIF89a")

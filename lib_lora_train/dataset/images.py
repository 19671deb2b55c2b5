"""Training images: square 8-bit PNGs at the training resolution, pixels only.

PNGs are encoded with Pillow and no ``pnginfo``/``exif``/``dpi``/``icc_profile`` arguments,
so the file holds only IHDR, IDAT and IEND chunks: no text chunk can carry a file name,
UID or any other trace of the source.
"""

import io

import numpy as np
from PIL import Image

RESAMPLE = Image.BICUBIC
PNG_COMPRESS_LEVEL = 4


def fit_square(pixels, size, mode="pad"):
    """Resize an 8-bit image to ``size`` x ``size``, keeping its aspect ratio.

    Args:
        pixels (`np.ndarray`): ``uint8`` HxW or HxWx3.
        size (`int`): output side in pixels.
        mode (`str`): ``"pad"`` (letterbox with black) or ``"crop"`` (centre crop).

    Returns:
        `PIL.Image.Image` in mode ``L`` or ``RGB``.
    """
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    width, height = image.size
    if width == height == size:
        return image
    scale = size / max(width, height) if mode == "pad" else size / min(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), RESAMPLE)
    if mode == "crop":
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return resized.crop((left, top, left + size, top + size))
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


def png_bytes(image):
    """Encode an image as PNG with no ancillary chunks."""
    buffer = io.BytesIO()
    # zlib level 4: on CT slices as small as level 6 (within 1%) and about 2.5x faster to encode.
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def png_chunk_types(data):
    """List the chunk types of a PNG byte string (for provenance checks and tests)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    types, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        types.append(data[offset + 4:offset + 8].decode("ascii"))
        offset += 12 + length
    return types

"""Image bytes -> RGB pixels, refusing bad input before it costs anything.

The header is parsed first (Pillow reads dimensions without decoding pixels), so a 30000x30000
image is refused as `too_large` without allocating it; truncated or corrupt data raises
`InvalidImageError` instead of yielding a half-grey picture. Runs in a worker thread.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

__all__ = ["ACCEPTED_MEDIA_TYPES", "decode_image"]

ACCEPTED_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/bmp"})
_ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})
_EXIF_ORIENTATION = 0x0112

# Our own pixel limit is checked first; Pillow's bomb guard stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP `data` into (H, W, 3) uint8 RGB, EXIF orientation applied."""
    if not data:
        raise InvalidImageError("empty body: send a JPEG, PNG, WebP or BMP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not a decodable image (expected JPEG, PNG, WebP or BMP)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    if image.format not in _ACCEPTED_FORMATS:
        raise UnsupportedMediaTypeError(f"image format {image.format} is not accepted (use JPEG, PNG, WebP or BMP)")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    try:
        image.load()
        upright: Image.Image = image
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            upright = ImageOps.exif_transpose(image)
        rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"corrupt or truncated image data: {exc}") from exc
    return np.asarray(rgb)

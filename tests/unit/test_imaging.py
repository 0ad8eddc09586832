"""Image decoding refuses bad bytes with typed errors, before decoding pixels where it can."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from service.imaging import decode_image, upright_size

pytestmark = pytest.mark.unit


def encode(fmt: str, w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A small PNG whose header claims w x h but that carries only a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_decodes_accepted_formats(fmt: str) -> None:
    rgb = decode_image(encode(fmt), max_pixels=10_000)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8


def test_empty_body() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"", max_pixels=10_000)


def test_random_bytes() -> None:
    with pytest.raises(InvalidImageError):
        decode_image(np.random.default_rng(0).bytes(5000), max_pixels=10_000)


def test_truncated_jpeg() -> None:
    data = encode("JPEG", 256, 256)
    with pytest.raises(InvalidImageError, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=1_000_000)


def jpeg_app0_then_random() -> bytes:
    return b"\xff\xd8\xff\xe0" + np.random.default_rng(3).bytes(600)


def bmp_with_bit_depth(bits: int) -> bytes:
    data = bytearray(encode("BMP"))
    data[28:30] = struct.pack("<H", bits)
    return bytes(data)


def webp_with_random_frame() -> bytes:
    data = encode("WEBP")
    return data[:20] + np.random.default_rng(4).bytes(len(data) - 20)


def png_with_short_ihdr() -> bytes:
    data = bytearray(encode("PNG"))
    data[8:12] = struct.pack(">I", 5)  # IHDR length 5 < 13
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [jpeg_app0_then_random, lambda: bmp_with_bit_depth(7), webp_with_random_frame, png_with_short_ihdr],
    ids=["jpeg app0 then random", "bmp 7 bits per pixel", "webp random frame", "png short ihdr"],
)
def test_broken_headers_are_invalid_image(make: Callable[[], bytes]) -> None:
    """Pillow fails these in `Image.open` (OSError "Truncated File Read", "Unsupported BMP pixel
    depth", "could not create decoder object"; ValueError "Truncated IHDR chunk")."""
    with pytest.raises(InvalidImageError, match="corrupt"):
        decode_image(make(), max_pixels=1_000_000)


def test_huge_header_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="30000x30000"):
        decode_image(png_header_only(30000, 30000), max_pixels=40_000_000)


def test_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(encode("PNG", 200, 100), max_pixels=19_999)


def test_gif_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="GIF"):
        decode_image(encode("GIF"), max_pixels=10_000)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.new("RGB", (64, 32)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), max_pixels=10_000).shape == (64, 32, 3)
    # the header-only size of a file is the served frame's too
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    (tmp_path / "plain.png").write_bytes(encode("PNG", 64, 48))
    assert upright_size(tmp_path / "rotated.jpg") == (32, 64)
    assert upright_size(tmp_path / "plain.png") == (64, 48)


def test_jpeg_photos_decode_to_pillows_pixels(pose_sample_images: list[Path]) -> None:
    """The libjpeg-turbo fast path (upright colour JPEGs at full size) gives Pillow's own pixels."""
    photos = [p for p in pose_sample_images if p.suffix.lower() in (".jpg", ".jpeg")]
    assert photos
    for path in photos:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        np.testing.assert_array_equal(decode_image(data, max_pixels=100_000_000), expected, err_msg=path.name)


def test_a_jpeg_libjpeg_warns_about_is_still_decoded_as_pillow_does() -> None:
    """Stray bytes between markers: libjpeg warns (the fast path refuses) and Pillow decodes."""
    data = encode("JPEG", 64, 48)
    sos = data.index(b"\xff\xda")
    warned = data[:sos] + b"\x00\x00\x00" + data[sos:]
    expected = np.asarray(Image.open(io.BytesIO(warned)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(warned, max_pixels=10_000), expected)

"""bot.images: only what Pillow opens as a PNG, JPEG, GIF or WebP within the limits is sent."""

from __future__ import annotations

import struct
import zlib

import pytest

from bot.images import MAX_SIDE_PX, ImageCheck, check_image
from tests.payloads.images import PNG_1PX

LIMIT = 100_000


def _png(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming ``width`` x ``height`` (its pixels are not all
    there: the size check must not need them)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * 5)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_real_png_is_sent_as_one() -> None:
    assert check_image("dot.png", PNG_1PX, LIMIT) == ImageCheck(media_type="image/png")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "dot.png is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not an image Claude reads"),
        (PNG_1PX[:40], "not an image Claude reads"),  # cut short
        (b"BM" + b"\0" * 100, "not an image Claude reads"),  # a BMP: not a type the API reads
        (b"%PDF-1.7\n" + b"x" * 100, "not an image Claude reads"),
        (b"x" * (LIMIT + 1), "party.max_image_bytes"),
        (_png(MAX_SIDE_PX + 1, 10), f"at most {MAX_SIDE_PX} a side"),
    ],
)
def test_anything_else_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    checked = check_image("dot.png", data, LIMIT)
    assert checked.media_type == ""
    assert reason in checked.refusal

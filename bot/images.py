"""Which images reach Claude: the types its API reads, as Pillow finds them, within limits.

Invariant: an image goes to the agent only when Pillow opens it as one of `IMAGE_TYPES`,
verifies it, and it is within ``party.max_image_bytes`` and `MAX_SIDE_PX` a side; what a
platform or a client claims the type is does not count. Everything else is named in the
prompt instead, with the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image as Pillow

__all__ = ["IMAGE_TYPES", "MAX_SIDE_PX", "ImageCheck", "check_image", "image_refusal"]

# The media types the Messages API accepts in an image block, by Pillow's format name.
_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
IMAGE_TYPES = tuple(_FORMATS.values())
# The API refuses larger images outright.
MAX_SIDE_PX = 8000


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """What `check_image` found: the media type, or why the bytes are not sent."""

    media_type: str = ""
    refusal: str = ""


def check_image(name: str, data: bytes, limit: int) -> ImageCheck:
    """The media type of the image ``data`` is, or why it will not be sent to Claude."""
    if refusal := image_refusal(name, len(data), limit):
        return ImageCheck(refusal=refusal)
    unreadable = ImageCheck(refusal=f"{name} is not an image Claude reads (PNG, JPEG, GIF or WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Pillow.DecompressionBombWarning)
            with Pillow.open(io.BytesIO(data)) as image:
                media_type = _FORMATS.get(str(image.format))
                width, height = image.size
                image.verify()
    except Exception:  # noqa: BLE001 - hostile bytes raise many kinds; each is "not an image"
        return unreadable
    if media_type is None:
        return unreadable
    if max(width, height) > MAX_SIDE_PX:
        return ImageCheck(
            refusal=f"{name} is {width}x{height} pixels; Claude takes at most {MAX_SIDE_PX} a side"
        )
    return ImageCheck(media_type=media_type)


def image_refusal(name: str, size: int, limit: int) -> str | None:
    """Why an image of ``size`` bytes is not sent to Claude, or None when its size is fine."""
    if size > limit:
        return (
            f"{name} ({size:,} bytes) is larger than the {limit:,} bytes an image may have "
            "(party.max_image_bytes)"
        )
    if size == 0:
        return f"{name} is empty"
    return None

"""Which images reach Claude: the types its API reads, told by their bytes, not their name.

Invariant: an image goes to the agent only when its first bytes are one of `IMAGE_TYPES`
and it is within ``party.max_image_bytes``; what a platform claims the type is does not
count. Everything else is named in the prompt instead, with the reason.
"""

from __future__ import annotations

__all__ = ["IMAGE_TYPES", "image_refusal", "sniff_image_type"]

# The media types the Messages API accepts in an image block.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_type(data: bytes) -> str | None:
    """The media type ``data`` starts like, or None when it is none the API reads."""
    for signature, media_type in _SIGNATURES:
        if data.startswith(signature):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


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

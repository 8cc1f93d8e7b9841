"""Small real images for the attachment tests: valid files, not just their magic bytes."""

from __future__ import annotations

import base64

__all__ = ["PNG_1PX", "PNG_1PX_B64"]

# A 1x1 transparent PNG (68 bytes): signature, IHDR, one zlib IDAT row, IEND.
PNG_1PX_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="
)
PNG_1PX = base64.b64decode(PNG_1PX_B64)

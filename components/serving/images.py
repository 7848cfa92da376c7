"""Untrusted image input for the serving API: base64 or raw bytes in, a checked RGB image out.

Every way an upload can be bad (not base64, too many bytes, not an image, a decompression bomb) raises
``ImageRejected`` with a message fit for a 4xx answer, before the image reaches the model. The pixel
count is checked from the header, before decoding, so a 100-megapixel PNG of a few KB is refused
without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


class ImageRejected(ValueError):
    """An uploaded image is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def decode_base64(text: str, field: str, max_bytes: int) -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is allowed); size checked before decoding fully."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageRejected(f"{field}: the image is larger than the {max_bytes}-byte limit", status=413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected(f"{field}: not valid base64 ({exc})") from exc
    if not data:
        raise ImageRejected(f"{field}: empty image")
    return data


def open_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an RGB image, refusing oversize files, non-images and decompression bombs."""
    if len(data) > max_bytes:
        raise ImageRejected(f"{field}: the image is {len(data)} bytes; the limit is {max_bytes}", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRejected(
                        f"{field}: the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                        status=413,
                    )
                image.load()
                return image.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"{field}: refused as a decompression bomb ({exc})", status=413) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"{field}: not a decodable image ({type(exc).__name__}: {exc})") from exc

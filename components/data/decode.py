"""Robust decoding of raw (image bytes, caption bytes) records.

A web corpus holds truncated files, decompression bombs, CMYK/palette/alpha images, EXIF-rotated
photos, animations and captions in the wrong encoding. None of them may crash a worker: each record
comes out either decoded (RGB, orientation applied, first frame) or marked with the rule it failed.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import unicodedata
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from components.data import schema

Verdict = tuple[str, str] | None


# Invisible characters that only hide text from the eye: stripped (BERT's tokenizer drops them too).
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
# Control characters (tab, newline, CR aside: whitespace), DEL and C1, and the bidi embeddings,
# overrides and isolates that make text display other than it reads ("Trojan Source").
_UNSAFE_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def normalise_caption(text: str) -> tuple[str, Verdict]:
    """Zero-width characters stripped, NFC; a control or bidi-control character rejects the caption."""
    text = unicodedata.normalize("NFC", text.translate(_ZERO_WIDTH))
    found = _UNSAFE_CHARACTER.search(text)  # before strip(), which would drop some controls (\x1c-\x1f)
    text = text.strip()
    if found:
        char = found.group()
        name = unicodedata.name(char, "a control character")
        return text, (
            schema.RULE_CAPTION_UNSAFE_CHARACTERS,
            f"caption holds U+{ord(char):04X} ({name}) at character {found.start()}; refused",
        )
    return text, None


def decode_caption(raw: bytes) -> tuple[str, Verdict]:
    """UTF-8 (BOM tolerated) caption text, normalised by ``normalise_caption``; undecodable bytes are kept
    readable for the rejects table."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        shown = raw.decode("utf-8", errors="replace").strip()
        return shown, (schema.RULE_CAPTION_NOT_UTF8, f"caption is not UTF-8: {err.reason} at byte {err.start}")
    return normalise_caption(text)


def decode_image(data: bytes, max_pixels: int, min_short_side: int = 0) -> tuple[Image.Image | None, Verdict]:
    """Decode to RGB; ``width``/``height`` of the *original* are in ``image.info["original_size"]``.

    ``min_short_side`` > 0 lets JPEG decoding use draft mode (DCT scaling): the decoder skips detail
    that a resize to that shorter side would throw away anyway, which is most of the decode cost for
    large web photos (ARCHITECTURE.md, measured facts).
    """
    if not data:
        return None, (schema.RULE_IMAGE_UNDECODABLE, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and errors past 2x) on huge images; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return None, (schema.RULE_IMAGE_TOO_LARGE, f"{width}x{height} exceeds {max_pixels} pixels")
            if width <= 0 or height <= 0:
                return None, (schema.RULE_IMAGE_UNDECODABLE, f"degenerate size {width}x{height}")
            image.seek(0)  # animated images: the first frame
            if min_short_side > 0 and image.format == "JPEG":
                scale = min_short_side / min(width, height)
                if scale < 1:
                    image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            # EXIF orientations 5-8 swap the sides; the size rules see the image as displayed.
            swapped = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            ImageOps.exif_transpose(image, in_place=True)  # in place: the default copies (~6% of decode)
            image = to_rgb(image)
        image.info["original_size"] = (height, width) if swapped else (width, height)
        return image, None
    # Pillow's plugins raise more than OSError on hostile bytes (struct.error, IndexError, TypeError in
    # EXIF handling ...): whatever one file raises, that file is what cannot be decoded.
    except Exception as err:  # noqa: BLE001 - per record, with the exception named in the detail
        return None, (schema.RULE_IMAGE_UNDECODABLE, f"{type(err).__name__}: {err}"[:300])


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode; transparency becomes white (clip art and logos are drawn on a page, not on black)."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: robust to re-encoding and small resizes, so it finds near-duplicates."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    if scale == 1:
        return image
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # reducing_gap: a box pre-shrink to within 3x of the target, then bicubic; Pillow documents the
    # result as indistinguishable from a full-support resize at 3.0, and it is ~10% faster here.
    return image.resize(new_size, Image.BICUBIC, reducing_gap=3.0)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

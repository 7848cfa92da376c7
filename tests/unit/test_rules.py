"""ALIGN's filter rules: exact (strict) thresholds, robust decoding, near-duplicate hashing."""

import io

import numpy as np
import pytest
from PIL import Image

from components.config import FilterConfig
from components.data import rules, schema
from components.data.decode import decode_caption, decode_image, dhash, resize_short_side

CFG = FilterConfig()


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ((201, 201), None),
        ((200, 300), schema.RULE_IMAGE_TOO_SMALL),  # shorter side must be > 200, not >= 200
        ((201, 602), None),  # aspect 602/201 = 2.995 < 3 passes
        ((201, 603), schema.RULE_IMAGE_ASPECT),  # exactly 3 fails (< 3 required)
        ((603, 201), schema.RULE_IMAGE_ASPECT),
    ],
)
def test_image_size_rules_are_strict(size, rule):
    verdict = rules.short_side_rule(*size, CFG) or rules.aspect_rule(*size, CFG)
    assert (verdict[0] if verdict else None) == rule


def test_word_count_bounds_are_inclusive_3_to_20():
    assert rules.word_count_rule("two words", CFG)[0] == schema.RULE_TEXT_TOO_FEW_WORDS
    assert rules.word_count_rule("just three words", CFG) is None
    assert rules.word_count_rule(" ".join(["w"] * 20), CFG) is None
    assert rules.word_count_rule(" ".join(["w"] * 21), CFG)[0] == schema.RULE_TEXT_TOO_MANY_WORDS


def test_ngrams_are_unigrams_then_bigrams():
    assert rules.ngrams("A red  circle") == ["a", "red", "circle", "a red", "red circle"]


def test_nsfw_rule_rejects_at_the_threshold():
    assert rules.nsfw_rule(CFG.nsfw_threshold, CFG)[0] == schema.RULE_NSFW
    assert rules.nsfw_rule(CFG.nsfw_threshold - 1e-3, CFG) is None


def test_normalised_text_folds_case_and_space():
    assert rules.normalise_text("  Click   HERE ") == "click here"


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_decode_handles_bad_files_without_raising():
    assert decode_image(b"", 10**8)[1][0] == schema.RULE_IMAGE_UNDECODABLE
    assert decode_image(b"not an image at all", 10**8)[1][0] == schema.RULE_IMAGE_UNDECODABLE
    good = _jpeg(Image.new("RGB", (300, 300), "red"))
    assert decode_image(good[:200], 10**8)[1][0] == schema.RULE_IMAGE_UNDECODABLE  # truncated
    assert decode_image(good, 300 * 300 - 1)[1][0] == schema.RULE_IMAGE_TOO_LARGE  # bomb guard


def test_decode_converts_modes_and_applies_exif_orientation():
    for mode in ("P", "RGBA", "CMYK", "L"):
        buffer = io.BytesIO()
        Image.new(mode, (40, 20)).save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
        image, verdict = decode_image(buffer.getvalue(), 10**8)
        assert verdict is None and image.mode == "RGB"
    rotated = Image.new("RGB", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    rotated.save(buffer, format="JPEG", exif=exif)
    image, _ = decode_image(buffer.getvalue(), 10**8)
    assert image.size == (20, 40)


def test_animated_images_take_the_first_frame():
    frames = [Image.new("RGB", (30, 30), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image, verdict = decode_image(buffer.getvalue(), 10**8)
    assert verdict is None and image.getpixel((5, 5))[0] > 200


def test_caption_decoding_flags_non_utf8():
    assert decode_caption("café".encode()) == ("café", None)
    text, verdict = decode_caption(b"caf\xe9 \xff")
    assert verdict[0] == schema.RULE_CAPTION_NOT_UTF8 and "caf" in text


def test_dhash_survives_reencoding_but_separates_different_images():
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    again = Image.open(io.BytesIO(_jpeg(base, quality=60)))
    other = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    eval_hashes = np.array([dhash(base)], dtype=np.uint64)
    assert rules.near_duplicate_rule(dhash(again), eval_hashes, CFG)[0] == schema.RULE_NEAR_DUPLICATE_EVAL
    assert rules.near_duplicate_rule(dhash(other), eval_hashes, CFG) is None


def test_resize_short_side():
    assert resize_short_side(Image.new("RGB", (800, 400)), 100).size == (200, 100)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a zero\u200b width\u200c joiner\u200d word\u2060 joiner", "a zero width joiner word joiner"),
        ("\ufeffa byte order mark\ufeff inside", "a byte order mark inside"),
        ("cafe\u0301 cre\u0300me", "caf\u00e9 cr\u00e8me"),  # NFD -> NFC
        # Tab, newline, CR and the right-to-left mark are text: kept while the invisible ones go.
        ("tabs\tand\nnew\u200blines\r\nstay", "tabs\tand\nnewlines\r\nstay"),
        ("\u05e9\u05dc\u05d5\u05dd \u200fright\u200b-to-left", "\u05e9\u05dc\u05d5\u05dd \u200fright-to-left"),
    ],
)
def test_captions_are_normalised(raw, text):
    assert decode_caption(raw.encode()) == (text, None)


@pytest.mark.parametrize(
    ("raw", "code_point"),
    [
        ("a nul\x00 byte", "U+0000"),
        ("\x1b[31mred terminal text", "U+001B"),
        ("a vertical\x0btab", "U+000B"),
        ("trailing unit separator\x1f", "U+001F"),
        ("delete\x7f char", "U+007F"),
        ("a c1\x85 control", "U+0085"),
        ("invoice \u202egpj.exe", "U+202E"),
        ("embedded \u202aleft to right\u202c", "U+202A"),
        ("isolate \u2066x\u2069", "U+2066"),
    ],
)
def test_captions_with_control_or_bidi_characters_are_rejected(raw, code_point):
    text, verdict = decode_caption(raw.encode())
    assert verdict[0] == schema.RULE_CAPTION_UNSAFE_CHARACTERS and code_point in verdict[1]
    assert text  # kept readable for the rejects table


def test_any_exception_decoding_one_image_is_that_image_undecodable(monkeypatch):
    from components.data import decode

    def broken(image, in_place=False):
        raise TypeError("EXIF orientation is a tuple")

    monkeypatch.setattr(decode.ImageOps, "exif_transpose", broken)
    image, verdict = decode_image(_jpeg(Image.new("RGB", (40, 20))), 10**8)
    assert image is None and verdict == (schema.RULE_IMAGE_UNDECODABLE, "TypeError: EXIF orientation is a tuple")

"""Column names and rule names shared by the data stage and its consumers."""

from __future__ import annotations

# Raw records: what every source reader yields, before decoding. ``caption_raw`` is bytes because
# the encoding is checked downstream; readers that already decoded text (HTML, SVG) store UTF-8.
# A reader that cannot produce a pair still yields a record, with ``reject_rule`` set, so nothing is lost.
RAW_COLUMNS = ["key", "source", "locator", "image", "caption_raw", "reject_rule", "reject_detail"]

# Pairs table (what the filter keeps, after decoding).
PAIR_COLUMNS = ["key", "image", "text", "source", "locator", "width", "height", "image_sha256"]
# Rejects table: enough to find the original record and to see why it was dropped.
REJECT_COLUMNS = ["key", "locator", "source", "rule", "detail", "text", "width", "height", "image_sha256"]

KEPT_DIR = "kept"
REJECTS_DIR = "rejects"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"

# Rules, in the order they are checked; a row is rejected for the first one it fails.
RULE_MISSING_IMAGE = "missing_image"
RULE_MISSING_CAPTION = "missing_caption"
RULE_UNREADABLE = "unreadable_file"
RULE_OUTSIDE_ROOT = "image_outside_corpus"  # a path or src that escapes the corpus root, or a URL
RULE_UNSAFE_FILE = "unsafe_file"  # e.g. XML with entity declarations (billion laughs), a directory link
# An SVG whose drawing would exceed the per-record budget (elements after <use> expansion, render time).
RULE_RENDER_OVER_BUDGET = "render_over_budget"
# An exception one record raised that no rule names: type and message in the detail. Rejecting the
# record keeps the ingest going; the rule of its own keeps a reader bug visible in report.json.
RULE_READER_ERROR = "reader_error"
RULE_CAPTION_NOT_UTF8 = "caption_not_utf8"
# NUL and other control characters (tab, newline and carriage return aside), or bidi embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069), which can make a caption display as
# something other than what it says. Zero-width characters are stripped instead (decode.decode_caption).
RULE_CAPTION_UNSAFE_CHARACTERS = "caption_unsafe_characters"
RULE_IMAGE_UNDECODABLE = "image_undecodable"
RULE_IMAGE_TOO_LARGE = "image_too_many_pixels"
RULE_NSFW = "nsfw"
RULE_IMAGE_TOO_SMALL = "image_too_small"
RULE_IMAGE_ASPECT = "image_aspect_ratio"
RULE_TEXT_TOO_FEW_WORDS = "text_too_few_words"
RULE_TEXT_TOO_MANY_WORDS = "text_too_many_words"
RULE_IMAGE_MANY_TEXTS = "image_too_many_texts"
RULE_TEXT_MANY_IMAGES = "text_shared_by_too_many_images"
RULE_TEXT_RARE_TOKEN = "text_rare_token"
RULE_NEAR_DUPLICATE_EVAL = "near_duplicate_of_eval"

# Check order: what the reader found, decoding, the per-record image rules, the per-record text rules,
# then the dataset-wide rules (which need pass-1 statistics). A row is rejected for the first it fails.
ALL_RULES = [
    RULE_MISSING_IMAGE,
    RULE_MISSING_CAPTION,
    RULE_UNREADABLE,
    RULE_OUTSIDE_ROOT,
    RULE_UNSAFE_FILE,
    RULE_RENDER_OVER_BUDGET,
    RULE_READER_ERROR,
    RULE_CAPTION_NOT_UTF8,
    RULE_CAPTION_UNSAFE_CHARACTERS,
    RULE_IMAGE_UNDECODABLE,
    RULE_IMAGE_TOO_LARGE,
    RULE_IMAGE_TOO_SMALL,
    RULE_IMAGE_ASPECT,
    RULE_NSFW,
    RULE_NEAR_DUPLICATE_EVAL,
    RULE_TEXT_TOO_FEW_WORDS,
    RULE_TEXT_TOO_MANY_WORDS,
    RULE_IMAGE_MANY_TEXTS,
    RULE_TEXT_MANY_IMAGES,
    RULE_TEXT_RARE_TOKEN,
]

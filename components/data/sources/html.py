"""Crawled HTML pages: every ``<img>`` with its ``alt`` text becomes a candidate pair, as in ALIGN.

Pages come from the open web, so nothing in them is trusted: ``src`` may only name a file inside the
corpus root (never a URL, absolute path or ``../`` escape; nothing is ever fetched), and a page's
bytes are decoded the way a browser would guess (BOM, then ``<meta charset>``, then UTF-8, then
windows-1252). Every ``<img>`` becomes a record; one that cannot be a pair carries its reason.
"""

from __future__ import annotations

import codecs
import posixpath
import re
from functools import partial
from html.parser import HTMLParser
from urllib.parse import unquote

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.sources import common
from components.data.sources.common import Verdict

SUFFIXES = {".html", ".htm", ".xhtml"}
SNIFF_BYTES = 2048
FALLBACK_ENCODING = "cp1252"

# Checked longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
]
# <meta charset="x">, <meta http-equiv=... content="...; charset=x"> and <?xml ... encoding="x"?>.
_DECLARED = re.compile(
    rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)|<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)""",
    re.IGNORECASE,
)
# The WHATWG encoding standard reads these labels as windows-1252, and a page that could be
# searched for an ASCII <meta> cannot really be UTF-16.
_LABEL_ALIASES = {"iso8859_1": FALLBACK_ENCODING, "ascii": FALLBACK_ENCODING, "utf_16": "utf-8"}


def _declared_codec(head: bytes) -> str | None:
    """The Python codec a page declares in its first bytes, or None if absent or unknown."""
    match = _DECLARED.search(head)
    if not match:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii")
    try:
        name = codecs.lookup(label).name.replace("-", "_")
    except LookupError:
        return None
    if name.startswith("utf_16"):
        name = "utf_16"
    return _LABEL_ALIASES.get(name, name)


def decode_page(page: bytes) -> tuple[str, str]:
    """(text, codec used): BOM, declared charset, UTF-8, then windows-1252 with replacement."""
    for bom, codec in _BOMS:
        if page.startswith(bom):
            return page[len(bom) :].decode(codec, errors="replace"), codec
    candidates = [c for c in (_declared_codec(page[:SNIFF_BYTES]), "utf-8") if c]
    for codec in dict.fromkeys(candidates):
        try:
            return page.decode(codec), codec
        except (UnicodeError, LookupError):  # also catches non-text codecs such as "rot13"
            continue
    return page.decode(FALLBACK_ENCODING, errors="replace"), FALLBACK_ENCODING


def normalise_text(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs, NBSP ...) to one space; strip the ends."""
    return " ".join(text.split())


class PageParseError(Exception):
    """The page's markup made the parser raise (html.parser raises AssertionError on ``<![foo[``)."""


class _ImgCollector(HTMLParser):
    """Collects the attributes of every ``<img>`` in document order (values already unescaped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            found: dict[str, str | None] = {}
            for name, value in attrs:
                found.setdefault(name, value if value is not None else "")
            self.images.append(found)


def _image_path(src: str | None, page_dir: str, root: str) -> tuple[str, Verdict]:
    if src is None:
        return "", (schema.RULE_MISSING_IMAGE, "<img> without src")
    reference = unquote(re.split(r"[?#]", src.strip(), maxsplit=1)[0])
    return common.confine(root, page_dir, reference)


def _alt_text(alt: str | None) -> tuple[str | None, Verdict]:
    if alt is None:
        return None, (schema.RULE_MISSING_CAPTION, "<img> without alt text")
    text = normalise_text(alt)
    if not text:
        return None, (schema.RULE_MISSING_CAPTION, "empty alt (decorative image)")
    return text, None


def harvest_page(page: bytes, page_path: str, root: str) -> list[dict]:
    """One entry per ``<img>`` in document order: ``id``, ``alt``, ``image_path`` and ``verdict``.

    Pure: reads no file and fetches nothing. An image problem is reported before a caption one.
    Raises ``PageParseError`` for markup the parser cannot take.
    """
    text, _ = decode_page(page)
    collector = _ImgCollector()
    try:
        collector.feed(text)
        collector.close()
    except Exception as err:  # noqa: BLE001 - whatever the parser raises, the page is what is wrong
        raise PageParseError(f"{type(err).__name__}: {err}") from err
    page_id = common.relative_id(page_path, root)
    page_dir = posixpath.dirname(page_path)
    entries = []
    for n, attrs in enumerate(collector.images):
        image_path, image_verdict = _image_path(attrs.get("src"), page_dir, root)
        alt, alt_verdict = _alt_text(attrs.get("alt"))
        entries.append(
            {"id": f"{page_id}#img{n}", "alt": alt, "image_path": image_path, "verdict": image_verdict or alt_verdict}
        )
    return entries


def read_page(path: str, source: SourceConfig, root: str) -> list[dict]:
    """The raw records of one page: one per ``<img>``, or one ``#page`` record if the page is unreadable.

    Each ``<img>`` is isolated: an exception loading one becomes that record's reject, not the page's.
    """
    fs, _ = common.filesystem(source.path)
    locator = common.scheme_prefix(source.path) + path
    page_key = f"{source.name}/{common.relative_id(path, root)}#page"
    page_record = partial(common.raw_record, key=page_key, source=source.name, locator=locator)
    verdict = common.check_listed(source.path, root, path)
    page, verdict = (b"", verdict) if verdict is not None else common.read_bytes(fs, path)
    if verdict is not None:
        rule, detail = verdict
        page_verdict = (schema.RULE_UNREADABLE if rule == schema.RULE_MISSING_IMAGE else rule, f"page: {detail}")
        return [page_record(verdict=page_verdict)]
    try:
        entries = harvest_page(page, path, root)
    except PageParseError as err:
        return [page_record(verdict=(schema.RULE_UNREADABLE, f"page does not parse: {err}"[:300]))]
    loaded: dict[str, tuple[bytes, Verdict]] = {}
    records = []
    for entry in entries:
        image, verdict = b"", entry["verdict"]
        try:
            if verdict is None:
                if entry["image_path"] not in loaded:
                    loaded[entry["image_path"]] = common.read_confined(fs, root, entry["image_path"])
                image, verdict = loaded[entry["image_path"]]
            caption = entry["alt"].encode("utf-8") if entry["alt"] else b""
        except Exception as err:  # noqa: BLE001 - one record's problem; see common.error_verdict
            image, caption, verdict = b"", b"", common.error_verdict(err, f"{locator}#{entry['id']}")
        records.append(
            common.raw_record(
                key=f"{source.name}/{entry['id']}",
                source=source.name,
                locator=f"{locator}#{entry['id'].rsplit('#', 1)[1]}",
                image=image if verdict is None else b"",
                caption=caption,
                verdict=verdict,
            )
        )
    return records


def read(source: SourceConfig, cfg: FilterConfig | None = None):
    """A Ray dataset of raw records, one per ``<img>`` of every page under ``source.path``."""
    root = common.confinement_root(source.path, source.root)
    listing = common.list_source(source.path, SUFFIXES, source.max_files)
    reader = partial(read_page, source=source, root=root)
    return common.per_file_dataset(listing, reader, source.name, source.path, root)

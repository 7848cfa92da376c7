"""SVG clip art (openclipart) with RDF metadata: the title (and keywords) caption a rendered PNG.

SVG is XML that can declare entities (billion laughs) and point at other files or URLs, so it is
parsed with defusedxml (entity declarations refused) and rendered with a fetcher that reads nothing
but self-contained ``data:`` URIs. The render has a fixed shorter side, so a huge declared size is
scaled, never allocated; clip art is transparent, so it is flattened onto white.
"""

from __future__ import annotations

import base64
import io
import math
import re
from functools import partial
from urllib.parse import unquote_to_bytes
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from components.config import SourceConfig
from components.data import schema
from components.data.sources import common
from components.data.sources.common import Verdict

SUFFIXES = {".svg"}
CAPTION_MODES = ("title", "title_keywords", "title_description")
MAX_ASPECT = 100.0
PLACEHOLDER_KEYWORDS = {"unsorted"}

DC = "{http://purl.org/dc/elements/1.1/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
CC_NAMESPACES = ("{http://web.resource.org/cc/}", "{http://creativecommons.org/ns#}")
SVG = "{http://www.w3.org/2000/svg}"

# CSS pixels per unit; "em"/"ex" assume the default 16 px font. Percentages have no intrinsic size.
_UNIT_PX = {
    "": 1.0,
    "px": 1.0,
    "pt": 96 / 72,
    "pc": 16.0,
    "mm": 96 / 25.4,
    "cm": 96 / 2.54,
    "in": 96.0,
    "em": 16.0,
    "ex": 8.0,
}
_LENGTH = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z%]*)\s*$")


def _text(element: Element | None) -> str:
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def _unsafe_or_malformed(err: Exception) -> Verdict:
    if isinstance(err, defusedxml.DefusedXmlException):
        return (
            schema.RULE_UNSAFE_FILE,
            f"SVG declares XML entities or external references: refused ({type(err).__name__})",
        )
    return schema.RULE_IMAGE_UNDECODABLE, f"SVG is not well-formed XML: {err}"[:300]


def _works(root: Element) -> list[Element]:
    """The ``cc:Work`` elements: their own ``dc:title`` is the artwork's, not an agent's name."""
    return [work for cc in CC_NAMESPACES for work in root.iter(f"{cc}Work")]


def _keywords(work: Element) -> list[str]:
    words: list[str] = []
    for subject in work.findall(f"{DC}subject"):
        items = subject.findall(f".//{RDF}li") or [subject]
        words += [_text(item) for item in items]
    kept = [w for w in words if w and w.lower() not in PLACEHOLDER_KEYWORDS]
    return list(dict.fromkeys(kept))


def _svg_title(root: Element) -> str:
    """The document's own ``<title>`` (a direct child of the root), namespaced or not."""
    for tag in (f"{SVG}title", "title"):
        title = _text(root.find(tag))
        if title:
            return title
    return ""


def parse_metadata(svg: bytes) -> tuple[dict | None, Verdict]:
    """(``{"title", "description", "keywords"}``, None), or (None, verdict) for unsafe or broken XML."""
    try:
        root = SafeET.fromstring(svg)
    except (defusedxml.DefusedXmlException, ParseError) as err:
        return None, _unsafe_or_malformed(err)
    title = description = ""
    keywords: list[str] = []
    for work in _works(root):
        title = title or _text(work.find(f"{DC}title"))
        description = description or _text(work.find(f"{DC}description"))
        keywords = keywords or _keywords(work)
    return {"title": title or _svg_title(root), "description": description, "keywords": keywords}, None


def caption_from(meta: dict, mode: str) -> str:
    """The caption text for ``mode``; empty when the artwork has no title.

    Keywords that merely repeat the title are left out ("card, card, simple" reads as noise).
    """
    if mode not in CAPTION_MODES:
        raise ValueError(f"unknown svg_caption mode {mode!r}; expected one of {CAPTION_MODES}")
    title = meta.get("title", "")
    if not title:
        return ""
    head = title.rstrip(" .,;:")
    keywords = [k for k in meta.get("keywords", []) if k.lower() not in {title.lower(), head.lower()}]
    if mode == "title_keywords" and keywords:
        return f"{head}, {', '.join(keywords)}"
    description = meta.get("description", "")
    if mode == "title_description" and description and description.lower() != title.lower():
        return f"{head}. {description}"
    return title


class ExternalResourceRefused(Exception):
    """Raised by the render's fetcher: an SVG asked for a file or URL, and none is ever read."""


def _data_uri_bytes(url: str) -> bytes:
    header, _, payload = url[len("data:") :].partition(",")
    if header.endswith(";base64"):
        return base64.b64decode(unquote_to_bytes(payload))
    return unquote_to_bytes(payload)


def refuse_external(url: str, resource_type: str = "") -> bytes:
    """cairosvg ``url_fetcher``: decodes inline ``data:`` URIs; refuses http, file: and paths."""
    if url.startswith("data:"):
        return _data_uri_bytes(url)
    raise ExternalResourceRefused(url[:200])


def _length_px(value: str | None) -> float | None:
    """A length in CSS pixels, or None when absent, a percentage or unparseable."""
    match = _LENGTH.match(value or "")
    if not match or match.group(2).lower() not in _UNIT_PX:
        return None
    return float(match.group(1)) * _UNIT_PX[match.group(2).lower()]


def _view_box(value: str | None) -> tuple[float, float] | None:
    parts = re.split(r"[\s,]+", (value or "").strip())
    try:
        return (float(parts[2]), float(parts[3])) if len(parts) == 4 else None
    except ValueError:
        return None


def _root_attributes(svg: bytes) -> dict[str, str]:
    """The root element's attributes, without building the whole tree (still entity-guarded)."""
    for _, element in SafeET.iterparse(io.BytesIO(svg), events=("start",)):
        return dict(element.attrib)
    return {}


def intrinsic_size(attrs: dict[str, str]) -> tuple[tuple[float, float] | None, Verdict]:
    """(width, height) from the root's width/height, or the viewBox where those are missing or relative."""
    width, height = _length_px(attrs.get("width")), _length_px(attrs.get("height"))
    box = _view_box(attrs.get("viewBox"))
    sizes = [s for s in (width, height, *(box or ())) if s is not None]
    if any(not 0 < s < math.inf for s in sizes):  # also catches "1e999" (inf) and nan
        declared = f"{attrs.get('width')} x {attrs.get('height')}, viewBox {attrs.get('viewBox')}"
        return None, (schema.RULE_IMAGE_UNDECODABLE, f"SVG has a zero, negative or infinite size: {declared}")
    if width is not None and height is not None:
        return (width, height), None
    if box is not None:
        return box, None
    return None, (schema.RULE_IMAGE_UNDECODABLE, "SVG declares no usable size (width/height or viewBox)")


def output_size(size: tuple[float, float], short_side: int, max_pixels: int) -> tuple[tuple[int, int] | None, Verdict]:
    """The render's (width, height): shorter side ``short_side``, aspect kept; refuses absurd shapes."""
    width, height = size
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        return None, (schema.RULE_IMAGE_TOO_LARGE, f"SVG aspect ratio {aspect:.0f}:1 exceeds {MAX_ASPECT:.0f}:1")
    long_side = max(short_side, round(short_side * aspect))
    if short_side * long_side > max_pixels:
        return None, (
            schema.RULE_IMAGE_TOO_LARGE,
            f"SVG render of {short_side}x{long_side} exceeds {max_pixels} pixels",
        )
    return ((long_side, short_side) if width >= height else (short_side, long_side)), None


def _on_white(png: bytes) -> bytes:
    from PIL import Image

    from components.data.decode import to_rgb

    with Image.open(io.BytesIO(png)) as image:
        flat = to_rgb(image)
    out = io.BytesIO()
    flat.save(out, format="PNG")
    return out.getvalue()


def render_png(svg: bytes, short_side: int, max_pixels: int = 40_000_000) -> tuple[bytes, Verdict]:
    """An RGB PNG of ``svg`` on white with shorter side ``short_side``, or (b"", verdict)."""
    from cairosvg.surface import PNGSurface

    try:
        attrs = _root_attributes(svg)
    except (defusedxml.DefusedXmlException, ParseError) as err:
        return b"", _unsafe_or_malformed(err)
    size, verdict = intrinsic_size(attrs)
    if verdict is None:
        dims, verdict = output_size(size, short_side, max_pixels)
    if verdict is not None:
        return b"", verdict
    try:
        # svg2png() does not pass url_fetcher on in cairosvg 2.9; PNGSurface.convert() does.
        png = PNGSurface.convert(
            bytestring=svg, output_width=dims[0], output_height=dims[1], unsafe=False, url_fetcher=refuse_external
        )
        return _on_white(png), None
    except ExternalResourceRefused as err:
        return b"", (
            schema.RULE_OUTSIDE_ROOT,
            f"SVG references {err} outside itself; external resources are never read",
        )
    except Exception as err:  # noqa: BLE001 - cairosvg raises many types for broken drawings
        return b"", (schema.RULE_IMAGE_UNDECODABLE, f"SVG does not render: {type(err).__name__}: {err}"[:300])


def read_svg(path: str, source: SourceConfig, root: str) -> list[dict]:
    """One raw record for one SVG file: its rendered PNG and its metadata caption."""
    fs, _ = common.filesystem(source.path)
    record = partial(
        common.raw_record,
        key=f"{source.name}/{common.relative_id(path, root)}",
        source=source.name,
        locator=common.scheme_prefix(source.path) + path,
    )
    svg, verdict = common.read_bytes(fs, path)
    if verdict is not None:
        return [record(verdict=verdict)]
    meta, verdict = parse_metadata(svg)
    if verdict is not None:
        return [record(verdict=verdict)]
    caption = caption_from(meta, source.svg_caption)
    if not caption:
        return [record(verdict=(schema.RULE_MISSING_CAPTION, "SVG has no title in its metadata"))]
    image, verdict = render_png(svg, source.svg_render_size)
    return [record(image=image, caption=caption.encode("utf-8"), verdict=verdict)]


def read(source: SourceConfig):
    """A Ray dataset of raw records, one per SVG under ``source.path``."""
    root = common.confinement_root(source.path, source.root)
    paths = common.list_files(source.path, SUFFIXES, source.max_files)
    return common.per_file_dataset(paths, partial(read_svg, source=source, root=root))

"""SVG clip art (openclipart) with RDF metadata: the title (and keywords) caption a rendered PNG.

SVG is XML that can declare entities (billion laughs) and point at other files or URLs, so it is
parsed with defusedxml (entity declarations refused) and rendered with a fetcher that reads nothing
but self-contained ``data:`` URIs. The render has a fixed shorter side, so a huge declared size is
scaled, never allocated; clip art is transparent, so it is flattened onto white.

Rendering has a per-file budget (``RenderLimits``, from the filter config): ``<use>``, pattern, mask,
clip and marker references are expanded and counted before anything is drawn (a 1.4 KB ``<use>`` bomb
grows ×11 per nesting level), every element cairosvg draws is counted again while it draws (markers
repeat per vertex, nested SVG images draw too) against a deadline, and an embedded raster's size is
read from its header before cairo or Pillow decodes it. A file over budget is one rejected record.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from urllib.parse import unquote_to_bytes
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET

from components.config import FilterConfig, SourceConfig
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
XLINK = "{http://www.w3.org/1999/xlink}"

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


class RenderRefused(Exception):
    """Raised while rendering: the file exceeds its budget. Not a ValueError or TypeError, which
    cairosvg catches and ignores in places."""

    def __init__(self, rule: str, detail: str):
        super().__init__(detail)
        self.verdict = (rule, detail[:300])


@dataclass(frozen=True)
class RenderLimits:
    """One SVG's render budget: elements drawn, seconds, and pixels of the rasters it embeds."""

    max_elements: int
    max_seconds: float
    max_raster_pixels: int

    @classmethod
    def of(cls, cfg: FilterConfig | None = None) -> RenderLimits:
        cfg = cfg or FilterConfig()
        return cls(cfg.max_svg_elements, cfg.max_svg_render_seconds, cfg.max_image_pixels)


class _Budget:
    """What one render has spent so far; cairosvg's draw calls and our fetcher charge it."""

    def __init__(self, limits: RenderLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.elements = 0
        self.raster_pixels = 0

    def draw(self) -> None:
        self.elements += 1
        if self.elements > self.limits.max_elements:
            raise RenderRefused(
                schema.RULE_RENDER_OVER_BUDGET,
                f"SVG draws more than {self.limits.max_elements} elements (patterns, markers or nested images)",
            )
        if time.monotonic() > self.deadline:
            raise RenderRefused(
                schema.RULE_RENDER_OVER_BUDGET,
                f"SVG render exceeded {self.limits.max_seconds:g} s after {self.elements} elements",
            )

    def raster(self, width: int, height: int) -> None:
        self.raster_pixels += width * height
        if self.raster_pixels > self.limits.max_raster_pixels:
            raise RenderRefused(
                schema.RULE_IMAGE_TOO_LARGE,
                f"SVG embeds a {width}x{height} raster image: {self.raster_pixels} pixels drawn in all "
                f"exceed {self.limits.max_raster_pixels}",
            )


_RENDERING = threading.local()  # .budget: the _Budget of the render running on this thread


@functools.cache
def _count_draws() -> None:
    """Charge every element cairosvg draws to the budget of the render running on this thread.

    cairosvg has no budget of its own (its one guard stops at 100,000 ``<use>`` nodes, minutes of
    work), and patterns, masks, markers and nested SVG images all draw through ``Surface.draw``, so it
    is wrapped once per process; with no render of ours running on the thread it only passes through.
    """
    from cairosvg.surface import Surface

    draw = Surface.draw

    @functools.wraps(draw)
    def counted(self, node):
        budget = getattr(_RENDERING, "budget", None)
        if budget is not None:
            budget.draw()
        return draw(self, node)

    Surface.draw = counted


def _data_uri_bytes(url: str) -> bytes:
    header, _, payload = url[len("data:") :].partition(",")
    if header.endswith(";base64"):
        return base64.b64decode(unquote_to_bytes(payload))
    return unquote_to_bytes(payload)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _raster_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a raster image's header, without decoding it; None if Pillow knows no such
    format (e.g. a nested SVG). Too big for Pillow to even open counts as unbounded."""
    from PIL import Image

    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24:  # cairo decodes PNGs itself: read its IHDR
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except Image.DecompressionBombError:
            return (1 << 31, 1 << 31)
        except Exception:  # noqa: BLE001 - not a raster Pillow reads: cairosvg may still take it as SVG
            return None


def refuse_external(url: str, resource_type: str = "", budget: _Budget | None = None) -> bytes:
    """cairosvg ``url_fetcher``: decodes inline ``data:`` URIs; refuses http, file: and paths.

    With a ``budget``, an embedded raster is charged its pixels before anything decodes it, and a
    gzip-compressed one (which cairosvg would inflate without a limit) is refused.
    """
    if not url.startswith("data:"):
        raise ExternalResourceRefused(url[:200])
    data = _data_uri_bytes(url)
    if budget is not None:
        if data.startswith(b"\x1f\x8b"):
            raise RenderRefused(schema.RULE_UNSAFE_FILE, "SVG embeds gzip-compressed data: refused (no inflate limit)")
        size = _raster_size(data)
        if size is not None:
            budget.raster(*size)
        else:
            _check_nested_svg(data, budget.limits.max_elements)
    return data


def _check_nested_svg(data: bytes, max_elements: int) -> None:
    """A nested SVG image gets the same ``<use>`` count as the file, before cairosvg draws it."""
    try:
        nested = SafeET.fromstring(data)
    except (defusedxml.DefusedXmlException, ParseError):
        return  # not XML, or refused by cairosvg's own defused parser as it loads it
    if expanded_elements(nested, max_elements) > max_elements:
        raise RenderRefused(
            schema.RULE_RENDER_OVER_BUDGET,
            f"SVG embeds an SVG image that expands to more than {max_elements} elements through its references",
        )


# Drawn again for every element that references them (gradients and filters are not drawn elements).
_DRAWN_PER_REFERENCE = {"pattern", "mask", "clipPath", "marker"}
_URL_REFERENCE = re.compile(r"url\(\s*['\"]?#([^)'\"\s]+)")


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def expanded_elements(root: Element, limit: int) -> int:
    """How many elements drawing ``root`` visits with every same-document ``<use>``, pattern, mask,
    clip path and marker reference expanded (a marker once, though it is drawn per vertex), counted
    without drawing; saturates at ``limit + 1``. Iterative (deep trees cost no recursion); a reference
    that reaches itself counts as over the limit."""
    cap = limit + 1
    ids: dict[str, Element] = {"": root}  # cairosvg draws the whole document again for href="#"
    for element in root.iter():
        if element.get("id"):
            ids.setdefault(element.get("id"), element)

    def edges(element: Element) -> list[Element]:
        out = list(element)
        if _local(element.tag) == "use":
            href = element.get(f"{XLINK}href") or element.get("href") or ""
            target = ids.get(href[1:]) if href.startswith("#") else None
            if target is not None:
                out.append(target)
        for value in element.attrib.values():  # fill="url(#p)", style="mask:url(#m)", ...
            for name in _URL_REFERENCE.findall(value) if "url(" in value else ():
                target = ids.get(name)
                if target is not None and _local(target.tag) in _DRAWN_PER_REFERENCE:
                    out.append(target)
        return out

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Element, bool]] = [(root, False)]
    while stack:
        element, done = stack.pop()
        key = id(element)
        if done:
            on_path.discard(key)
            sizes[key] = min(cap, 1 + sum(sizes[id(child)] for child in edges(element)))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return cap  # a reference cycle: cairosvg would recurse until it fails
        on_path.add(key)
        stack.append((element, True))
        stack.extend((child, False) for child in edges(element) if id(child) not in sizes)
    return sizes[id(root)]


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

    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        # Saved inside the block: an opaque render is already RGB, and to_rgb returns it still unloaded.
        to_rgb(image).save(out, format="PNG")
    return out.getvalue()


def render_png(
    svg: bytes, short_side: int, max_pixels: int = 40_000_000, limits: RenderLimits | None = None
) -> tuple[bytes, Verdict]:
    """An RGB PNG of ``svg`` on white with shorter side ``short_side``, or (b"", verdict).

    ``max_pixels`` bounds the render itself; ``limits`` (default: the filter config's defaults) bound
    the work of drawing it and the rasters it embeds.
    """
    from cairosvg.surface import PNGSurface

    limits = limits or RenderLimits.of()
    try:
        root = SafeET.fromstring(svg)
    except (defusedxml.DefusedXmlException, ParseError) as err:
        return b"", _unsafe_or_malformed(err)
    size, verdict = intrinsic_size(dict(root.attrib))
    if verdict is None:
        dims, verdict = output_size(size, short_side, max_pixels)
    if verdict is None and expanded_elements(root, limits.max_elements) > limits.max_elements:
        verdict = (
            schema.RULE_RENDER_OVER_BUDGET,
            f"SVG expands to more than {limits.max_elements} elements through <use>, pattern, mask, clip or "
            "marker references (or a reference cycle)",
        )
    if verdict is not None:
        return b"", verdict
    _count_draws()
    budget = _Budget(limits)
    _RENDERING.budget = budget
    try:
        # svg2png() does not pass url_fetcher on in cairosvg 2.9; PNGSurface.convert() does.
        png = PNGSurface.convert(
            bytestring=svg,
            output_width=dims[0],
            output_height=dims[1],
            unsafe=False,
            url_fetcher=partial(refuse_external, budget=budget),
        )
        return _on_white(png), None
    except ExternalResourceRefused as err:
        return b"", (
            schema.RULE_OUTSIDE_ROOT,
            f"SVG references {err} outside itself; external resources are never read",
        )
    except RenderRefused as err:
        return b"", err.verdict
    except Exception as err:  # noqa: BLE001 - cairosvg raises many types for broken drawings
        return b"", (schema.RULE_IMAGE_UNDECODABLE, f"SVG does not render: {type(err).__name__}: {err}"[:300])
    finally:
        _RENDERING.budget = None


def read_svg(path: str, source: SourceConfig, root: str, limits: RenderLimits | None = None) -> list[dict]:
    """One raw record for one SVG file: its rendered PNG and its metadata caption."""
    fs, _ = common.filesystem(source.path)
    record = partial(
        common.raw_record,
        key=f"{source.name}/{common.relative_id(path, root)}",
        source=source.name,
        locator=common.scheme_prefix(source.path) + path,
    )
    verdict = common.check_listed(source.path, root, path)
    svg, verdict = (b"", verdict) if verdict is not None else common.read_bytes(fs, path)
    if verdict is not None:
        return [record(verdict=verdict)]
    meta, verdict = parse_metadata(svg)
    if verdict is not None:
        return [record(verdict=verdict)]
    caption = caption_from(meta, source.svg_caption)
    if not caption:
        return [record(verdict=(schema.RULE_MISSING_CAPTION, "SVG has no title in its metadata"))]
    image, verdict = render_png(svg, source.svg_render_size, limits=limits)
    return [record(image=image, caption=caption.encode("utf-8"), verdict=verdict)]


def read(source: SourceConfig, cfg: FilterConfig | None = None):
    """A Ray dataset of raw records, one per SVG under ``source.path``, rendered within ``cfg``'s limits."""
    root = common.confinement_root(source.path, source.root)
    listing = common.list_source(source.path, SUFFIXES, source.max_files)
    reader = partial(read_svg, source=source, root=root, limits=RenderLimits.of(cfg))
    return common.per_file_dataset(listing, reader, source.name, source.path, root)

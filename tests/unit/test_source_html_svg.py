"""HTML and SVG source readers: hostile input becomes a reject record, never a read outside the corpus.

Fixtures are small files written to tmp_path; nothing here starts Ray.
"""

import base64
import io
import os
import time

import pytest
from PIL import Image

from components.config import SourceConfig
from components.data import schema
from components.data.sources import common, html, svg

PNG_BYTES = b"\x89PNG fake image bytes"


# ---------------------------------------------------------------- HTML


def _site(tmp_path, page: bytes, files: dict[str, bytes] | None = None, name: str = "page.html"):
    site = tmp_path / "site"
    (site / "img").mkdir(parents=True, exist_ok=True)
    for rel, data in (files or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    page_path = site / name
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_bytes(page)
    source = SourceConfig(name="web", format="html", path=str(site))
    return source, str(page_path), common.confinement_root(source.path, source.root)


def _read(tmp_path, page: bytes, files: dict[str, bytes] | None = None) -> list[dict]:
    source, path, root = _site(tmp_path, page, files)
    return html.read_page(path, source, root)


def _alts(page: bytes) -> list[str | None]:
    return [e["alt"] for e in html.harvest_page(page, "/site/p.html", "/site")]


def test_alt_entities_and_whitespace_are_normalised():
    page = b'<p><img src="a.png" alt="  Caf&eacute; &amp;\n\tcr&#232;me&nbsp;&nbsp;br&ucirc;l&#xE9;e  "></p>'
    assert _alts(page) == ["Café & crème brûlée"]


@pytest.mark.parametrize(
    "page",
    [
        b'<html><head><meta charset="windows-1252"></head><img src="a.png" alt="caf\xe9 \x93ok\x94">',
        # WHATWG reads a latin-1 label as windows-1252 (curly quotes live in 0x80-0x9f).
        b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1"><img src=a.png alt="caf\xe9 \x93ok\x94">',
        # No declaration and invalid UTF-8: the windows-1252 fallback.
        b'<img src="a.png" alt="caf\xe9 \x93ok\x94">',
    ],
)
def test_legacy_charsets_are_decoded(page):
    assert _alts(page) == ["café \u201cok\u201d"]


def test_utf8_is_the_default_and_a_bom_beats_a_wrong_meta():
    assert _alts('<img src="a.png" alt="café ☕">'.encode()) == ["café ☕"]
    lying = '<meta charset="windows-1252"><img src="a.png" alt="café">'
    assert _alts(b"\xef\xbb\xbf" + lying.encode()) == ["café"]
    assert _alts("\ufeff".encode("utf-16-le") + lying.encode("utf-16-le")) == ["café"]


def test_unknown_or_non_text_charset_falls_back():
    assert _alts(b'<meta charset="x-no-such"><img src="a.png" alt="caf\xc3\xa9">') == ["café"]
    assert _alts(b'<meta charset="rot13"><img src="a.png" alt="caf\xc3\xa9">') == ["café"]


@pytest.mark.parametrize(
    ("tag", "detail"),
    [
        ('<img src="img/a.png">', "<img> without alt text"),
        ('<img src="img/a.png" alt="">', "empty alt (decorative image)"),
        ('<img src="img/a.png" alt=" &nbsp;\n ">', "empty alt (decorative image)"),
    ],
)
def test_missing_or_empty_alt_is_a_missing_caption_record(tmp_path, tag, detail):
    (record,) = _read(tmp_path, tag.encode(), {"img/a.png": PNG_BYTES})
    assert (record["reject_rule"], record["reject_detail"]) == (schema.RULE_MISSING_CAPTION, detail)
    assert record["caption_raw"] == b"" and record["image"] == b""


@pytest.mark.parametrize(
    "src",
    [
        "../../etc/passwd",
        "img/../../../etc/passwd",
        "/etc/passwd",
        "http://example.com/x.jpg",
        "HTTPS://example.com/x.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "//host/x.png",
        "file:///etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_src_outside_the_corpus_is_refused_without_reading(tmp_path, monkeypatch, src):
    reads = []
    real_read = common.read_bytes
    monkeypatch.setattr(common, "read_bytes", lambda fs, path: reads.append(path) or real_read(fs, path))
    source, path, root = _site(tmp_path, f'<img src="{src}" alt="a caption">'.encode())
    (record,) = html.read_page(path, source, root)
    assert record["reject_rule"] == schema.RULE_OUTSIDE_ROOT
    assert record["image"] == b""
    assert reads == [path]  # only the page itself
    (entry,) = html.harvest_page(f'<img src="{src}" alt="x">'.encode(), path, root)
    assert entry["image_path"] == "" and entry["verdict"][0] == schema.RULE_OUTSIDE_ROOT


def test_a_bad_src_is_reported_before_a_bad_alt():
    (entry,) = html.harvest_page(b'<img src="http://x/y.png">', "/site/p.html", "/site")
    assert entry["verdict"][0] == schema.RULE_OUTSIDE_ROOT
    (entry,) = html.harvest_page(b"<img alt=x>", "/site/p.html", "/site")
    assert entry["verdict"] == (schema.RULE_MISSING_IMAGE, "<img> without src")


def test_symlink_inside_the_root_pointing_outside_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    source, path, root = _site(tmp_path, b'<img src="img/link.png" alt="a linked picture">')
    os.symlink(secret, tmp_path / "site" / "img" / "link.png")
    (record,) = html.read_page(path, source, root)
    assert record["reject_rule"] == schema.RULE_OUTSIDE_ROOT
    assert b"secret" not in record["image"]


def test_missing_image_file(tmp_path):
    (record,) = _read(tmp_path, b'<img src="img/gone.png" alt="a vanished picture">')
    assert record["reject_rule"] == schema.RULE_MISSING_IMAGE
    assert "gone.png" in record["reject_detail"]


def test_good_pair_has_image_bytes_utf8_caption_key_and_locator(tmp_path):
    page = '<img src="img/my%20cat.png?size=large#top" alt="Ma chatte “Zoé”">'.encode()
    source, path, root = _site(tmp_path, page, {"pets/img/my cat.png": PNG_BYTES}, name="pets/cats.html")
    (record,) = html.read_page(path, source, root)
    assert set(record) == set(schema.RAW_COLUMNS)
    assert record["reject_rule"] == "" and record["reject_detail"] == ""
    assert record["image"] == PNG_BYTES
    assert record["caption_raw"] == "Ma chatte “Zoé”".encode()
    assert record["key"] == "web/pets/cats#img0"
    assert record["source"] == "web"
    assert record["locator"] == f"{path}#img0"


def test_several_images_keep_document_order_distinct_keys_and_one_read_per_file(tmp_path, monkeypatch):
    reads = []
    real_read = common.read_bytes
    monkeypatch.setattr(common, "read_bytes", lambda fs, path: reads.append(path) or real_read(fs, path))
    page = b"""<html><body>
        <img src="img/a.png" alt="first">
        <!-- <img src="img/hidden.png" alt="commented out"> -->
        <script>document.write('<img src="img/js.png" alt="scripted">')</script>
        <img src="img/b.png" alt="second"/>
        <img src="img/a.png" alt="first again">
    </body></html>"""
    records = _read(tmp_path, page, {"img/a.png": b"A-bytes", "img/b.png": b"B-bytes"})
    assert [r["caption_raw"] for r in records] == [b"first", b"second", b"first again"]
    assert [r["image"] for r in records] == [b"A-bytes", b"B-bytes", b"A-bytes"]
    assert [r["key"] for r in records] == ["web/page#img0", "web/page#img1", "web/page#img2"]
    assert sorted(os.path.basename(p) for p in reads) == ["a.png", "b.png", "page.html"]


def test_an_unreadable_page_yields_one_page_record(tmp_path):
    source, _, root = _site(tmp_path, b"")
    missing = str(tmp_path / "site" / "vanished.html")
    (record,) = html.read_page(missing, source, root)
    assert record["key"] == "web/vanished#page"
    assert record["reject_rule"] == schema.RULE_UNREADABLE


def test_html_read_uses_the_configured_root(tmp_path):
    source = SourceConfig(name="web", format="html", path=str(tmp_path / "site"), root=str(tmp_path))
    assert common.confinement_root(source.path, source.root) == str(tmp_path)


# ---------------------------------------------------------------- SVG

META = b"""
  <metadata>
    <rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
             xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <cc:Work rdf:about="">
        <dc:title>  Red
          Apple </dc:title>
        <dc:description>A shiny red apple on a branch</dc:description>
        <dc:subject><rdf:Bag>
          <rdf:li>fruit</rdf:li><rdf:li>unsorted</rdf:li><rdf:li>red apple</rdf:li><rdf:li>food</rdf:li>
        </rdf:Bag></dc:subject>
        <dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
        <dc:creator><cc:Agent><dc:title>some artist</dc:title></cc:Agent></dc:creator>
      </cc:Work>
    </rdf:RDF>
  </metadata>"""


def _svg(
    body: bytes = b"", size: bytes = b'width="200pt" height="100pt"', meta: bytes = META, head: bytes = b""
) -> bytes:
    return (
        head
        + b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        + size
        + b">"
        + meta
        + body
        + b"</svg>"
    )


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE svg [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><title>&lol9;</title></svg>"""


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _svg_source(tmp_path, data: bytes, mode: str = "title_keywords", size: int = 64):
    folder = tmp_path / "art" / "fruit"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "apple.svg").write_bytes(data)
    source = SourceConfig(name="clip", format="svg", path=str(tmp_path / "art"), svg_caption=mode, svg_render_size=size)
    return source, str(folder / "apple.svg"), str(tmp_path / "art")


def test_entity_declarations_are_refused_never_expanded():
    started = time.perf_counter()
    meta, verdict = svg.parse_metadata(BILLION_LAUGHS)
    assert meta is None and verdict[0] == schema.RULE_UNSAFE_FILE
    png, verdict = svg.render_png(BILLION_LAUGHS, 32)
    assert png == b"" and verdict[0] == schema.RULE_UNSAFE_FILE
    assert time.perf_counter() - started < 1


def test_external_entity_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = f'<!DOCTYPE svg [<!ENTITY x SYSTEM "file://{secret}">]><svg><title>&x;</title></svg>'.encode()
    meta, verdict = svg.parse_metadata(xxe)
    assert meta is None and verdict[0] == schema.RULE_UNSAFE_FILE


def test_malformed_xml_is_undecodable(tmp_path):
    meta, verdict = svg.parse_metadata(b"<svg><title>unclosed</svg>")
    assert meta is None and verdict[0] == schema.RULE_IMAGE_UNDECODABLE
    assert verdict[1].startswith("SVG is not well-formed XML")
    source, path, root = _svg_source(tmp_path, b"<svg")
    (record,) = svg.read_svg(path, source, root)
    assert record["reject_rule"] == schema.RULE_IMAGE_UNDECODABLE and record["image"] == b""


@pytest.mark.parametrize("href", ["file://{secret}", "{secret}", "secret.txt", "http://127.0.0.1:9/x.png"])
def test_external_references_are_never_fetched(tmp_path, href):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    link = href.format(secret=secret).encode()
    for element in (b'<image width="10" height="10" xlink:href="%s"/>', b'<use xlink:href="%s#thing"/>'):
        png, verdict = svg.render_png(_svg(element % link), 32)
        assert png == b""
        assert verdict[0] == schema.RULE_OUTSIDE_ROOT
        assert "TOPSECRET" not in verdict[1]
    with pytest.raises(svg.ExternalResourceRefused):
        svg.refuse_external(f"file://{secret}")


def test_inline_data_uri_images_still_render():
    red = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(red, format="PNG")
    uri = b"data:image/png;base64," + base64.b64encode(red.getvalue())
    body = b'<image x="0" y="0" width="200" height="100" preserveAspectRatio="none" xlink:href="%s"/>' % uri
    png, verdict = svg.render_png(_svg(body, size=b'width="200" height="100"'), 20)
    assert verdict is None
    assert _png(png).getpixel((20, 10))[:3] == (255, 0, 0)


def test_metadata_takes_the_works_title_not_an_agents():
    meta, verdict = svg.parse_metadata(_svg())
    assert verdict is None
    assert meta == {
        "title": "Red Apple",
        "description": "A shiny red apple on a branch",
        "keywords": ["fruit", "red apple", "food"],
    }


def test_svg_title_is_the_fallback_and_no_title_is_empty():
    meta, _ = svg.parse_metadata(_svg(meta=b"<title>  Green\npear </title>"))
    assert meta["title"] == "Green pear"
    meta, _ = svg.parse_metadata(b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')
    assert meta == {"title": "", "description": "", "keywords": []}
    assert svg.caption_from(meta, "title_keywords") == ""


def test_caption_modes():
    meta, _ = svg.parse_metadata(_svg())
    assert svg.caption_from(meta, "title") == "Red Apple"
    assert svg.caption_from(meta, "title_keywords") == "Red Apple, fruit, food"  # "red apple" repeats the title
    assert svg.caption_from(meta, "title_description") == "Red Apple. A shiny red apple on a branch"
    same = {"title": "Card.", "description": "card.", "keywords": ["card", "simple"]}
    assert svg.caption_from(same, "title_description") == "Card."
    assert svg.caption_from(same, "title_keywords") == "Card, simple"
    assert svg.caption_from({"title": "Pear", "description": "", "keywords": []}, "title_keywords") == "Pear"
    with pytest.raises(ValueError):
        svg.caption_from(meta, "alt")


def test_render_keeps_aspect_with_the_short_side_requested_on_white():
    body = b'<rect x="0" y="0" width="100" height="133.333" fill="#ff0000"/>'  # left half of 200pt x 100pt
    png, verdict = svg.render_png(_svg(body), 64)
    assert verdict is None
    image = _png(png)
    assert image.mode == "RGB" and image.size == (128, 64)
    assert image.getpixel((10, 32)) == (255, 0, 0)
    assert image.getpixel((120, 32)) == (255, 255, 255)  # transparent became white


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (b'width="100%" height="100%" viewBox="0 0 50 100"', (64, 128)),
        (b'viewBox="-10,-10 300 100"', (192, 64)),
        (b'width="3in" height="6in"', (64, 128)),
        (b'width="100000mm" height="50000mm"', (128, 64)),  # a huge declared size is scaled, not allocated
    ],
)
def test_render_size_from_units_and_viewbox(size, expected):
    png, verdict = svg.render_png(_svg(size=size), 64)
    assert verdict is None
    assert _png(png).size == expected


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        (b'width="10000" height="10"', schema.RULE_IMAGE_TOO_LARGE),
        (b'viewBox="0 0 1 500"', schema.RULE_IMAGE_TOO_LARGE),
        (b'width="0" height="10"', schema.RULE_IMAGE_UNDECODABLE),
        (b'viewBox="0 0 -5 10"', schema.RULE_IMAGE_UNDECODABLE),
        (b'width="1e999" height="1e999"', schema.RULE_IMAGE_UNDECODABLE),
        (b'width="50%" height="50%"', schema.RULE_IMAGE_UNDECODABLE),
        (b"", schema.RULE_IMAGE_UNDECODABLE),
    ],
)
def test_absurd_or_degenerate_sizes_are_refused(size, rule):
    png, verdict = svg.render_png(_svg(size=size), 64)
    assert png == b"" and verdict[0] == rule


def test_pixel_budget_is_enforced():
    png, verdict = svg.render_png(_svg(size=b'width="10" height="40"'), 256, max_pixels=100_000)
    assert png == b"" and verdict[0] == schema.RULE_IMAGE_TOO_LARGE


def test_read_svg_record(tmp_path):
    source, path, root = _svg_source(tmp_path, _svg(), mode="title_description", size=32)
    (record,) = svg.read_svg(path, source, root)
    assert set(record) == set(schema.RAW_COLUMNS)
    assert record["key"] == "clip/fruit/apple"
    assert record["locator"] == path
    assert record["reject_rule"] == ""
    assert record["caption_raw"] == b"Red Apple. A shiny red apple on a branch"
    assert _png(record["image"]).size == (64, 32)


def test_read_svg_without_title_is_a_missing_caption_record(tmp_path):
    source, path, root = _svg_source(tmp_path, _svg(meta=b""))
    (record,) = svg.read_svg(path, source, root)
    assert (record["reject_rule"], record["reject_detail"]) == (
        schema.RULE_MISSING_CAPTION,
        "SVG has no title in its metadata",
    )


def test_read_svg_unsafe_file_record(tmp_path):
    source, path, root = _svg_source(tmp_path, BILLION_LAUGHS)
    (record,) = svg.read_svg(path, source, root)
    assert record["reject_rule"] == schema.RULE_UNSAFE_FILE and record["image"] == b""


# ---------------------------------------------------------------- hostile input (issue 19)


def test_nul_byte_in_src_is_a_reject_not_an_exception(tmp_path):
    records = _read(tmp_path, b'<img src="img/a.png%00.txt" alt="a nul"><img src="img/a.png" alt="fine">',
                    {"img/a.png": PNG_BYTES})
    assert records[0]["reject_rule"] == schema.RULE_UNREADABLE and "NUL" in records[0]["reject_detail"]
    assert (records[1]["reject_rule"], records[1]["image"]) == ("", PNG_BYTES)


def test_a_page_the_parser_cannot_take_is_one_unreadable_page_record(tmp_path):
    (record,) = _read(tmp_path, b'<p><![foo[ x ]]><img src="img/a.png" alt="never seen">', {"img/a.png": PNG_BYTES})
    assert record["key"] == "web/page#page" and record["reject_rule"] == schema.RULE_UNREADABLE
    assert "AssertionError" in record["reject_detail"]


def test_a_page_linked_from_outside_the_corpus_is_not_read(tmp_path):
    (tmp_path / "outside.html").write_bytes(b'<img src="secret.png" alt="TOPSECRET words">')
    source, _, root = _site(tmp_path, b"")
    link = tmp_path / "site" / "linked.html"
    os.symlink(tmp_path / "outside.html", link)
    (record,) = html.read_page(str(link), source, root)
    assert record["key"] == "web/linked#page" and record["reject_rule"] == schema.RULE_OUTSIDE_ROOT
    assert b"TOPSECRET" not in record["caption_raw"]


def test_an_exception_loading_one_image_rejects_only_that_record(tmp_path, monkeypatch):
    real = common.read_confined

    def flaky(fs, root, path):
        if path.endswith("b.png"):
            raise RuntimeError("a reader bug")
        return real(fs, root, path)

    monkeypatch.setattr(common, "read_confined", flaky)
    page = b'<img src="img/a.png" alt="first"><img src="img/b.png" alt="second"><img src="img/a.png" alt="third">'
    records = _read(tmp_path, page, {"img/a.png": b"A", "img/b.png": b"B"})
    assert [r["reject_rule"] for r in records] == ["", schema.RULE_READER_ERROR, ""]
    assert "RuntimeError: a reader bug" in records[1]["reject_detail"] and records[1]["image"] == b""


def test_read_isolated_turns_an_escaping_exception_into_one_error_record():
    def broken(path):
        raise KeyError("a reader bug")

    (record,) = common.read_isolated(broken, "/corpus/a/page.html", "web", "/corpus", "/corpus")
    assert record["key"] == "web/a/page#error" and record["reject_rule"] == schema.RULE_READER_ERROR
    assert "KeyError" in record["reject_detail"]

    def misconfigured(path):
        raise common.SourceConfigError("no column 'caption'")

    with pytest.raises(common.SourceConfigError):
        common.read_isolated(misconfigured, "/corpus/t.csv", "tbl", "/corpus", "/corpus")


def _timed_render(data: bytes, limits: svg.RenderLimits | None = None, size: int = 64):
    started = time.perf_counter()
    png, verdict = svg.render_png(data, size, limits=limits)
    return png, verdict, time.perf_counter() - started


LIMITS = svg.RenderLimits(max_elements=20_000, max_seconds=30.0, max_raster_pixels=500_000)


def test_use_references_are_counted_expanded_before_drawing():
    from defusedxml.ElementTree import fromstring

    from tests.data_fixtures import SVG_CYCLE, svg_use_bomb

    assert svg.expanded_elements(fromstring(_svg()), 100) < 30
    two_levels = svg.expanded_elements(fromstring(svg_use_bomb(levels=2)), 10**9)
    assert svg.expanded_elements(fromstring(svg_use_bomb(levels=3)), 10**9) > 9 * two_levels
    assert svg.expanded_elements(fromstring(svg_use_bomb(levels=30)), 1000) == 1001  # saturates, no overflow
    assert svg.expanded_elements(fromstring(SVG_CYCLE), 1000) == 1001


def test_a_use_bomb_is_refused_before_rendering():
    from tests.data_fixtures import svg_use_bomb

    png, verdict, seconds = _timed_render(svg_use_bomb(levels=4), LIMITS)  # 10^4 rects: 2.75-7 s to draw
    assert png == b"" and verdict[0] == schema.RULE_RENDER_OVER_BUDGET and "<use>" in verdict[1]
    assert seconds < 0.5
    png, verdict, _ = _timed_render(svg_use_bomb(levels=2), LIMITS)  # 100 rects: drawn as before
    assert verdict is None and _png(png).size == (64, 64)


def test_reference_cycles_and_nested_svg_bombs_are_refused():
    from tests.data_fixtures import SVG_CYCLE, svg_embedding, svg_use_bomb

    assert svg.render_png(SVG_CYCLE, 64, limits=LIMITS)[1][0] == schema.RULE_RENDER_OVER_BUDGET
    nested = svg_embedding(svg_use_bomb(levels=4), "image/svg+xml")
    png, verdict, seconds = _timed_render(nested, LIMITS)
    assert verdict[0] == schema.RULE_RENDER_OVER_BUDGET and "embeds an SVG" in verdict[1] and seconds < 0.5


def test_pattern_fan_out_is_counted_before_drawing():
    from tests.data_fixtures import svg_pattern_fan_out

    png, verdict, seconds = _timed_render(svg_pattern_fan_out(shapes=100, uses=400), LIMITS)  # 40,000 draws
    assert png == b"" and verdict[0] == schema.RULE_RENDER_OVER_BUDGET and "pattern" in verdict[1]
    assert seconds < 0.5
    assert svg.render_png(svg_pattern_fan_out(shapes=4, uses=4), 64, limits=LIMITS)[1] is None


def test_draws_no_count_before_rendering_sees_are_budgeted_while_drawing():
    from tests.data_fixtures import svg_marker_fan_out

    small = svg.RenderLimits(max_elements=2_000, max_seconds=30.0, max_raster_pixels=500_000)
    png, verdict, _ = _timed_render(svg_marker_fan_out(shapes=100, vertices=100), small)  # ~10,000 draws
    assert png == b"" and verdict[0] == schema.RULE_RENDER_OVER_BUDGET and "draws more than 2000" in verdict[1]
    assert svg.render_png(svg_marker_fan_out(shapes=2, vertices=10), 64, limits=small)[1] is None


def test_the_render_deadline():
    png, verdict = svg.render_png(_svg(), 64, limits=svg.RenderLimits(20_000, 0.0, 500_000))
    assert png == b"" and verdict[0] == schema.RULE_RENDER_OVER_BUDGET and "exceeded 0 s" in verdict[1]


def test_embedded_rasters_are_capped_by_their_header_before_decoding(monkeypatch):
    from tests.data_fixtures import encode, svg_embedding, svg_png_bomb

    png, verdict, _ = _timed_render(svg_png_bomb(1500), LIMITS)  # 2.25 Mpx > 500,000: cairo never decodes it
    assert png == b"" and verdict[0] == schema.RULE_IMAGE_TOO_LARGE and "1500x1500" in verdict[1]
    assert svg.render_png(svg_png_bomb(500), 64, limits=LIMITS)[1] is None  # 250,000 pixels: within the cap
    jpeg = svg_embedding(encode(Image.new("RGB", (1000, 1000), "blue")), "image/jpeg")  # decoded by Pillow
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    assert svg.render_png(jpeg, 64, limits=LIMITS)[1][0] == schema.RULE_IMAGE_TOO_LARGE
    assert (1000, 1000) not in decoded


def test_gzip_inside_a_data_uri_is_refused():
    import gzip

    from tests.data_fixtures import svg_embedding

    data = svg_embedding(gzip.compress(_svg()), "image/svg+xml")
    assert svg.render_png(data, 64, limits=LIMITS)[1][0] == schema.RULE_UNSAFE_FILE


def test_an_opaque_render_is_kept():
    """cairo writes an opaque render as RGB, which to_rgb returned still unloaded from a closed file."""
    png, verdict = svg.render_png(_svg(b'<rect width="300" height="300" fill="#123456"/>'), 64)
    assert verdict is None and _png(png).getpixel((5, 5)) == (0x12, 0x34, 0x56)


def test_an_svg_linked_from_outside_the_corpus_is_not_read(tmp_path):
    source, _, root = _svg_source(tmp_path, _svg())
    (tmp_path / "outside.svg").write_bytes(_svg(meta=b"<title>TOPSECRET outside</title>"))
    link = tmp_path / "art" / "linked.svg"
    os.symlink(tmp_path / "outside.svg", link)
    (record,) = svg.read_svg(str(link), source, root)
    assert record["reject_rule"] == schema.RULE_OUTSIDE_ROOT and record["caption_raw"] == b""


def test_read_svg_takes_its_limits_from_the_filter_config(tmp_path):
    from components.config import FilterConfig
    from tests.data_fixtures import svg_use_bomb

    limits = svg.RenderLimits.of(FilterConfig(max_svg_elements=50, max_image_pixels=1000))
    assert (limits.max_elements, limits.max_raster_pixels) == (50, 1000)
    source, path, root = _svg_source(tmp_path, svg_use_bomb(levels=2))
    (record,) = svg.read_svg(path, source, root, limits=limits)
    assert record["reject_rule"] == schema.RULE_RENDER_OVER_BUDGET

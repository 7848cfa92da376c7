"""Small corpora in every source format, with the hostile records a web crawl holds.

``write_all_formats(root)`` writes one source per format under ``root`` and returns the sources and
the outcome expected for every key (``""`` = kept, else the rule that must reject it). Images are
240 px (> the paper's 200 px) and distinct, captions 4–6 plain words, so only the planted problems
are rejected. Used by the local and the S3 integration tests. ``write_hostile(root)`` does the same
for the inputs that once failed the job, read outside the corpus or rendered for hours.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from components.config import SourceConfig
from components.data import schema

SIZE = 240


def encode(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def picture(index: int, size: tuple[int, int] = (SIZE, SIZE), fmt: str = "JPEG") -> bytes:
    """A distinct, clearly non-NSFW image: blue/green shades with a stripe whose place depends on ``index``."""
    image = Image.new("RGB", size, (20, 40 + (index * 37) % 200, 180 + index % 60))
    stripe = (index * 13) % max(1, size[0] - 20)
    image.paste((250, 250, 250), (stripe, 0, stripe + 12, size[1]))
    return encode(image, fmt)


def caption(index: int) -> str:
    return f"a blue card with stripe number {index}"


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sidecar(root: Path, expected: dict) -> SourceConfig:
    folder = root / "sidecar"
    folder.mkdir(parents=True)

    def pair(name: str, image: bytes, text: bytes, outcome: str) -> None:
        (folder / f"{name}.jpg").write_bytes(image)
        (folder / f"{name}.txt").write_bytes(text)
        expected[f"sidecar/{name}"] = outcome

    pair("good", picture(1), caption(1).encode(), "")
    pair("truncated", picture(2)[:300], caption(2).encode(), schema.RULE_IMAGE_UNDECODABLE)
    pair("zero-bytes", b"", caption(3).encode(), schema.RULE_IMAGE_UNDECODABLE)
    pair("not-an-image", b"<html>404 not found</html>", caption(4).encode(), schema.RULE_IMAGE_UNDECODABLE)
    pair("bad-utf8", picture(5), "caf\u00e9 sign on a wall".encode("latin-1"), schema.RULE_CAPTION_NOT_UTF8)
    # Over the pixel limit the tests configure (max_image_pixels=500_000): the bomb guard, cheaply.
    pair("bomb", encode(Image.new("L", (1000, 1000))), caption(6).encode(), schema.RULE_IMAGE_TOO_LARGE)
    cmyk = Image.new("CMYK", (SIZE, SIZE), (200, 30, 0, 10))
    pair("cmyk", encode(cmyk), caption(7).encode(), "")
    palette = Image.new("P", (SIZE, SIZE), 1)  # every pixel is palette entry 1, marked transparent
    palette.putpalette([0, 0, 0, 10, 90, 200] + [0] * 762)
    palette.paste(0, (100, 0, 110, SIZE))  # an opaque black stripe, so the image is not blank
    (folder / "palette.png").write_bytes(encode(palette, "PNG", transparency=1))
    (folder / "palette.txt").write_bytes(caption(8).encode())
    expected["sidecar/palette"] = ""
    frames = [Image.new("RGB", (SIZE, SIZE), c) for c in ((10, 90, 200), (200, 90, 10))]
    (folder / "animated.gif").write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    (folder / "animated.txt").write_bytes(caption(9).encode())
    expected["sidecar/animated"] = ""
    rotated = Image.open(io.BytesIO(picture(10, (300, SIZE))))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated by 90°: 240 wide, 300 high
    pair("rotated", encode(rotated, exif=exif), caption(10).encode(), "")
    (folder / "orphan.jpg").write_bytes(picture(11))
    expected["sidecar/orphan"] = schema.RULE_MISSING_CAPTION
    return SourceConfig(name="sidecar", format="sidecar", path=str(folder))


def _webdataset(root: Path, expected: dict) -> SourceConfig:
    folder = root / "shards"
    folder.mkdir(parents=True)
    (folder / "00000.tar").write_bytes(
        _tar(
            [
                ("000000000.jpg", picture(20)),
                ("000000000.txt", caption(20).encode()),
                ("000000001.png", picture(21, fmt="PNG")),
                ("000000001.json", json.dumps({"caption": caption(21), "url": "http://example.invalid/1"}).encode()),
                ("000000002.jpg", picture(22)),
            ]
        )
    )
    expected.update({"shards/00000/000000000": "", "shards/00000/000000001": "", "shards/00000/000000002": schema.RULE_MISSING_CAPTION})
    whole = _tar([("000000010.jpg", picture(23)), ("000000010.txt", caption(23).encode()), ("000000011.jpg", picture(24))])
    (folder / "00001.tar").write_bytes(whole[: 512 + len(picture(23)) // 2])  # cut inside the first member
    expected["shards/00001/000000010"] = schema.RULE_UNREADABLE
    expected["shards/00001#unreadable"] = schema.RULE_UNREADABLE
    return SourceConfig(name="shards", format="webdataset", path=str(folder))


def _table(root: Path, expected: dict) -> SourceConfig:
    folder = root / "table"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.jpg").write_bytes(picture(30))
    (root / "outside.jpg").write_bytes(picture(31))
    rows = [
        ("images/a.jpg", caption(30), ""),
        ("../outside.jpg", caption(31), schema.RULE_OUTSIDE_ROOT),
        ("/etc/hostname", caption(32), schema.RULE_OUTSIDE_ROOT),
        ("http://example.invalid/x.jpg", caption(33), schema.RULE_OUTSIDE_ROOT),
        ("images/missing.jpg", caption(34), schema.RULE_MISSING_IMAGE),
    ]
    lines = ["image_path,caption"] + [f'{path},"{text}"' for path, text, _ in rows]
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    for i, (_, _, outcome) in enumerate(rows):
        expected[f"table/pairs/{i}"] = outcome
    return SourceConfig(name="table", format="table", path=str(folder))


def _img2dataset(root: Path, expected: dict) -> SourceConfig:
    folder = root / "img2dataset"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "key": ["000000000", "000000001"],
            "url": ["http://example.invalid/a.jpg", "http://example.invalid/b.jpg"],
            "caption": [caption(40), caption(41)],
            "jpg": [picture(40), None],
            "status": ["success", "failed_to_download"],
            "error_message": [None, "HTTP 404"],
        }
    )
    pq.write_table(table, folder / "00000.parquet")
    expected.update({"img2dataset/000000000": "", "img2dataset/000000001": schema.RULE_MISSING_IMAGE})
    return SourceConfig(name="img2dataset", format="img2dataset_parquet", path=str(folder))


def _html(root: Path, expected: dict) -> SourceConfig:
    site = root / "site"
    (site / "en" / "images").mkdir(parents=True)
    (site / "en" / "images" / "good.png").write_bytes(picture(50, fmt="PNG"))
    (root / "secret.png").write_bytes(picture(51, fmt="PNG"))
    page = """<html><head><meta charset="utf-8"></head><body>
      <img src="images/good.png" alt="  the caf&eacute; &amp;  bar
           sign at night ">
      <img src="../../secret.png" alt="a secret outside the corpus root">
      <img src="/etc/hostname" alt="an absolute path to a host file">
      <img src="http://example.invalid/x.png" alt="a remote image never fetched">
      <img src="images/good.png">
    </body></html>"""
    (site / "en" / "page.html").write_text(page)
    outcomes = ["", schema.RULE_OUTSIDE_ROOT, schema.RULE_OUTSIDE_ROOT, schema.RULE_OUTSIDE_ROOT, schema.RULE_MISSING_CAPTION]
    for i, outcome in enumerate(outcomes):
        expected[f"site/en/page#img{i}"] = outcome
    return SourceConfig(name="site", format="html", path=str(site))


SVG_GOOD = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     width="200" height="150" viewBox="0 0 200 150">
  <metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>red apple on a table</dc:title>
    <dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li>food</rdf:li></rdf:Bag></dc:subject>
  </cc:Work></rdf:RDF></metadata>
  <rect x="20" y="20" width="160" height="110" fill="#cc2222"/>
</svg>"""

SVG_ENTITIES = """<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><title>&c;</title></svg>"""


def _svg(root: Path, expected: dict) -> SourceConfig:
    folder = root / "clipart"
    folder.mkdir(parents=True)
    (folder / "apple.svg").write_text(SVG_GOOD)
    (folder / "laughs.svg").write_text(SVG_ENTITIES)
    (folder / "broken.svg").write_text("<svg><rect></svg")
    expected.update(
        {"clipart/apple": "", "clipart/laughs": schema.RULE_UNSAFE_FILE, "clipart/broken": schema.RULE_IMAGE_UNDECODABLE}
    )
    return SourceConfig(name="clipart", format="svg", path=str(folder), svg_render_size=240)


def write_all_formats(root: Path) -> tuple[list[SourceConfig], dict[str, str]]:
    expected: dict[str, str] = {}
    writers = (_sidecar, _webdataset, _table, _img2dataset, _html, _svg)
    return [write(root, expected) for write in writers], expected


# --- hostile corpora (issue 19): records that once failed the job, leaked files or ran for hours -------

SECRET_TEXT = "TOPSECRET outside caption words"
_SVG_HEAD = (
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="100" height="100">'
    "<title>{title}</title>"
)


def svg_use_bomb(levels: int = 4, fan: int = 10) -> bytes:
    """``<use>`` fan-out: each level draws the one below ``fan`` times (1.4 KB, 10^4 rects at 4 levels)."""
    defs = ['<rect id="l0" width="5" height="5" fill="red"/>']
    for k in range(1, levels + 1):
        defs.append(f'<g id="l{k}">' + "".join(f'<use xlink:href="#l{k - 1}" x="{i}"/>' for i in range(fan)) + "</g>")
    body = f'<defs>{"".join(defs)}</defs><use xlink:href="#l{levels}"/>'
    return (_SVG_HEAD.format(title="a use bomb of red squares") + body + "</svg>").encode()


def svg_embedding(data: bytes, mime: str, title: str = "an embedded picture in a frame") -> bytes:
    """An SVG whose only drawing is ``data`` as a ``data:`` URI image."""
    uri = f"data:{mime};base64," + base64.b64encode(data).decode()
    image = f'<image width="100" height="100" preserveAspectRatio="none" xlink:href="{uri}"/>'
    return (_SVG_HEAD.format(title=title) + image + "</svg>").encode()


def svg_png_bomb(side: int) -> bytes:
    """A small SVG embedding a ``side`` x ``side`` PNG (one colour: it compresses to almost nothing)."""
    return svg_embedding(encode(Image.new("RGB", (side, side), (200, 30, 30)), "PNG"), "image/png")


def svg_pattern_fan_out(shapes: int = 100, uses: int = 400) -> bytes:
    """A pattern of ``shapes`` rects filling ``uses`` rects: no ``<use>``, but shapes x uses draws."""
    rects = "".join(f'<rect x="{i % 10}" y="{i // 10}" width="3" height="3" fill="blue"/>' for i in range(shapes))
    pattern = f'<defs><pattern id="p" width="10" height="10" patternUnits="userSpaceOnUse">{rects}</pattern></defs>'
    fills = "".join(f'<rect x="{i % 50}" y="{i // 50}" width="5" height="5" fill="url(#p)"/>' for i in range(uses))
    return (_SVG_HEAD.format(title="a patterned blue wall") + pattern + fills + "</svg>").encode()


def svg_marker_fan_out(shapes: int = 100, vertices: int = 400) -> bytes:
    """A marker of ``shapes`` rects on every vertex of one path: drawn shapes x vertices times, which no
    count before drawing sees (it would have to parse the path)."""
    rects = "".join(f'<rect x="{i % 10}" y="{i // 10}" width="1" height="1" fill="green"/>' for i in range(shapes))
    marker = f'<defs><marker id="m" markerWidth="10" markerHeight="10">{rects}</marker></defs>'
    points = " ".join(f"L {i % 100} {i // 100 * 10}" for i in range(1, vertices))
    path = f'<path d="M 0 0 {points}" stroke="black" fill="none" marker-mid="url(#m)"/>'
    return (_SVG_HEAD.format(title="a path of green markers") + marker + path + "</svg>").encode()


SVG_CYCLE = (
    _SVG_HEAD.format(title="a drawing that uses itself")
    + '<defs><g id="a"><use xlink:href="#b"/></g><g id="b"><use xlink:href="#a"/></g></defs>'
    + '<use xlink:href="#a"/></svg>'
).encode()


def _hostile_outside(root: Path) -> dict[str, object]:
    """Files outside every source folder, which no kept row may ever contain."""
    outside = root / "outside"
    outside.mkdir(parents=True)
    secret_image = picture(99)
    (outside / "secret.jpg").write_bytes(secret_image)
    (outside / "secret.txt").write_text(SECRET_TEXT)
    (outside / "page.html").write_text(f'<img src="secret.jpg" alt="{SECRET_TEXT}">')
    (outside / "secret.tar").write_bytes(_tar([("s.jpg", secret_image), ("s.txt", SECRET_TEXT.encode())]))
    return {"dir": outside, "image_sha256": hashlib.sha256(secret_image).hexdigest(), "text": "TOPSECRET"}


def _hostile_html(root: Path, outside: Path, expected: dict) -> SourceConfig:
    site = root / "web"
    (site / "img").mkdir(parents=True)
    (site / "img" / "good.png").write_bytes(picture(60, fmt="PNG"))
    (site / "page.html").write_text(
        '<img src="img/good.png" alt="a good card on the web page">'
        '<img src="img/good.png%00.txt" alt="a nul byte in the path">'
        '<img src="img/good.png" alt="an &#x202E;reversed caption hiding text">'
    )
    (site / "crash.html").write_text('<p><![foo[ x ]]><img src="img/good.png" alt="never harvested from here">')
    os.symlink(outside / "page.html", site / "linked.html")
    expected.update({
        "web/page#img0": "",
        "web/page#img1": schema.RULE_UNREADABLE,
        "web/page#img2": schema.RULE_CAPTION_UNSAFE_CHARACTERS,
        "web/crash#page": schema.RULE_UNREADABLE,  # html.parser raised AssertionError: the job failed
        "web/linked#page": schema.RULE_OUTSIDE_ROOT,
    })
    return SourceConfig(name="web", format="html", path=str(site))


def _hostile_table(root: Path, outside: Path, expected: dict) -> SourceConfig:
    folder = root / "tbl"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.jpg").write_bytes(picture(61))
    os.symlink(outside / "secret.jpg", folder / "images" / "link.jpg")
    (folder / "pairs.csv").write_bytes(
        b"image_path,caption\n"
        b"images/a.jpg,a good card from the table\n"
        b"images/a.jpg\x00.txt,a nul byte in the path cell\n"
        b"images/a.jpg,a caption with\x00 a nul byte\n"
        b"images/link.jpg,a link leading out of the corpus\n"
    )
    rules = ["", schema.RULE_UNREADABLE, schema.RULE_CAPTION_UNSAFE_CHARACTERS, schema.RULE_OUTSIDE_ROOT]
    expected.update({f"tbl/pairs/{i}": rule for i, rule in enumerate(rules)})
    return SourceConfig(name="tbl", format="table", path=str(folder))


def _hostile_sidecar(root: Path, outside: Path, expected: dict) -> SourceConfig:
    folder = root / "side"
    folder.mkdir(parents=True)

    def pair(name: str, text: str, outcome: str, index: int) -> None:
        (folder / f"{name}.jpg").write_bytes(picture(index))
        (folder / f"{name}.txt").write_text(text)
        expected[f"side/{name}"] = outcome

    pair("good", "a good card beside its caption", "", 70)
    pair("nul", "a caption with\x00 a nul byte", schema.RULE_CAPTION_UNSAFE_CHARACTERS, 71)
    pair("bidi", "your invoice \u202egpj.exe is attached", schema.RULE_CAPTION_UNSAFE_CHARACTERS, 72)
    pair("escape", "\x1b[31mred terminal text here", schema.RULE_CAPTION_UNSAFE_CHARACTERS, 73)
    pair("zero-width", "a zero\u200b width\u200d caption\ufeff here", "", 74)  # kept, stripped
    pair("nfd", "cafe\u0301 sign on the wall", "", 75)  # kept, NFC
    (folder / "leak.jpg").write_bytes(picture(76))
    os.symlink(outside / "secret.txt", folder / "leak.txt")
    os.symlink(outside / "secret.jpg", folder / "peek.jpg")
    (folder / "peek.txt").write_text("a linked image from outside")
    os.symlink(folder, folder / "loop")  # a directory link to its own folder: 40 levels of copies
    os.symlink(outside, folder / "out")
    (folder / "pipe.jpg").write_bytes(picture(77))
    os.mkfifo(folder / "pipe.txt")  # reading it would block forever
    (folder / "bomb.png").write_bytes(encode(Image.new("L", (1000, 1000)), "PNG"))  # > max_image_pixels
    (folder / "bomb.txt").write_text("a decompression bomb in grey")
    expected.update({
        "side/leak": schema.RULE_OUTSIDE_ROOT,
        "side/peek": schema.RULE_OUTSIDE_ROOT,
        "side/loop#link": schema.RULE_UNSAFE_FILE,
        "side/out#link": schema.RULE_OUTSIDE_ROOT,
        "side/pipe": schema.RULE_UNREADABLE,
        "side/bomb": schema.RULE_IMAGE_TOO_LARGE,
    })
    return SourceConfig(name="side", format="sidecar", path=str(folder))


def _hostile_svg(root: Path, outside: Path, expected: dict) -> SourceConfig:
    folder = root / "art"
    folder.mkdir(parents=True)
    files = {
        "good": (SVG_GOOD.encode(), ""),
        "use-bomb": (svg_use_bomb(), schema.RULE_RENDER_OVER_BUDGET),
        "png-bomb": (svg_png_bomb(1500), schema.RULE_IMAGE_TOO_LARGE),  # 2.25 Mpx > max_image_pixels
        "pattern": (svg_pattern_fan_out(), schema.RULE_RENDER_OVER_BUDGET),
        "nested": (svg_embedding(svg_use_bomb(), "image/svg+xml"), schema.RULE_RENDER_OVER_BUDGET),
        "cycle": (SVG_CYCLE, schema.RULE_RENDER_OVER_BUDGET),
    }
    for name, (data, outcome) in files.items():
        (folder / f"{name}.svg").write_bytes(data)
        expected[f"art/{name}"] = outcome
    return SourceConfig(name="art", format="svg", path=str(folder), svg_render_size=240)


def _hostile_webdataset(root: Path, outside: Path, expected: dict) -> SourceConfig:
    folder = root / "shards"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in [
            ("good.jpg", picture(80)), ("good.txt", b"a good card in a shard"),
            ("../../evil.jpg", picture(81)), ("../../evil.txt", b"a member named out of the shard"),
            ("link.txt", b"a member that is a link"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (folder / "00000.tar").write_bytes(buffer.getvalue())
    os.symlink(outside / "secret.tar", folder / "linked.tar")
    expected.update({
        "shards/00000/good": "",
        "shards/00000/../../evil": "",  # a name, never a path: nothing is extracted
        "shards/00000/link": schema.RULE_UNREADABLE,
        "shards/linked#unreadable": schema.RULE_OUTSIDE_ROOT,
    })
    return SourceConfig(name="shards", format="webdataset", path=str(folder))


def write_hostile(root: Path) -> tuple[list[SourceConfig], dict[str, str], dict[str, object]]:
    """One small source per class of hostile input, the outcome expected for every key, and what lies
    outside the sources (``text`` and ``image_sha256`` no kept row may hold)."""
    expected: dict[str, str] = {}
    outside = _hostile_outside(root)
    writers = (_hostile_html, _hostile_table, _hostile_sidecar, _hostile_svg, _hostile_webdataset)
    return [write(root, outside["dir"], expected) for write in writers], expected, outside

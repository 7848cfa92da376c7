"""Procedurally drawn scenes and their captions: the vocabulary of the embedded synthetic corpus.

A scene is a textured, unevenly lit background with one to three coloured shapes on a 3x3 grid. Everything a
caption can say (colour, shape, size, position, background) is visible in the pixels, so a dual encoder
trained on these pairs has something real to learn, and retrieval among a few hundred scenes is meaningful.

Geometry is stored in canvas fractions, so the same scene can be drawn at any size: that is how the corpus
makes "too small" and "extreme aspect" copies whose caption still fits the picture. The low-frequency
lighting field gives every scene its own coarse brightness layout; without it, plain backgrounds would make
unrelated scenes look alike to a perceptual hash and the near-duplicate filter would fire on clean pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageChops, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "cross", "ring", "square", "star", "triangle")  # sorted: the classes
PLURALS = {"circle": "circles", "cross": "crosses", "ring": "rings", "square": "squares", "star": "stars",
           "triangle": "triangles"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 60), "blue": (40, 70, 215), "yellow": (240, 215, 40),
    "purple": (135, 50, 170), "orange": (245, 135, 25), "white": (248, 248, 248), "black": (12, 12, 12),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128), "blue": (120, 160, 225), "green": (120, 190, 120), "yellow": (225, 210, 130),
    "white": (222, 222, 222), "black": (40, 40, 40), "pink": (230, 160, 190), "brown": (130, 90, 60),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "large")
# 3x3 grid, row-major; each cell has two phrasings so captions vary without new words.
POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right")
POSITION_PHRASES: dict[str, tuple[str, str]] = {
    "top left": ("in the top left", "at the top left"), "top": ("at the top", "near the top"),
    "top right": ("in the top right", "at the top right"), "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle"), "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left"), "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right", "at the bottom right"),
}
PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "a drawing of", "an illustration of",
                             "a painting of")
NUMBERS = {2: "two", 3: "three"}
MIN_WORDS, MAX_WORDS = 3, 20  # the paper's clean caption length (ALIGN keeps 3..20 unigrams)

_LARGE_RADIUS, _SMALL_RADIUS = 0.13, 0.065  # fractions of the shorter canvas side
_LIGHT_GRID = 8  # control points per side: about one per dHash cell, so perceptual hashes differ
_LIGHT_AMPLITUDE = 38  # grey levels; large enough that the coarse layout survives JPEG re-encoding


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]  # (x, y) as fractions of width and height
    radius: float  # fraction of the shorter side
    rotation: float  # degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class Scene:
    background: str
    texture: str
    objects: tuple[SceneObject, ...]
    texture_period: float  # fraction of the shorter side
    texture_phase: tuple[float, float]  # fractions of a period
    texture_orientation: int  # stripes: 0 horizontal, 1 vertical, 2 diagonal
    lighting: np.ndarray  # (_LIGHT_GRID, _LIGHT_GRID) control points in [-1, 1], upsampled to the canvas


def _pick(seq, u: float):
    return seq[min(int(u * len(seq)), len(seq) - 1)]


def sample_scene(rng: np.random.Generator, num_objects: int | None = None, shape: str | None = None) -> Scene:
    """Draw scene parameters from ``rng`` (all randomness of a scene comes from this one generator).

    One block of uniforms is drawn and consumed in a fixed order: a single generator call per scene keeps
    sampling cheap next to drawing, and the layout of the block keeps scenes reproducible.
    """
    block = rng.random(64)
    u = iter(block[:48].tolist())
    background = _pick(list(BACKGROUND_COLOURS), next(u))
    texture = _pick(TEXTURES, next(u))
    count = next(u)
    if num_objects is None:
        num_objects = 1 if count < 0.4 else 2 if count < 0.75 else 3
    cells = sorted(range(len(POSITIONS)), key=lambda _: next(u))[:num_objects]
    colours = [c for c in COLOURS if c != background]  # an object never vanishes into its background
    objects: list[SceneObject] = []
    for k, cell in enumerate(cells):
        obj_shape = shape or _pick(SHAPES, next(u))
        colour, size = _pick(colours, next(u)), _pick(SIZES, next(u))
        if next(u) < 0.25 and k > 0:  # repeated objects give captions like "two yellow stars"
            obj_shape, colour = objects[0].shape, objects[0].colour
        base = _LARGE_RADIUS if size == "large" else _SMALL_RADIUS
        radius = base * (0.9 + 0.18 * next(u))
        row, col = divmod(cell, 3)
        centre = ((col + 0.5) / 3 + 0.07 * (next(u) - 0.5), (row + 0.5) / 3 + 0.07 * (next(u) - 0.5))
        rgb = tuple(min(255, max(0, v + int(25 * next(u)) - 12)) for v in COLOURS[colour])
        objects.append(SceneObject(obj_shape, colour, size, POSITIONS[cell], centre, radius,
                                   40 * (next(u) - 0.5), rgb))  # type: ignore[arg-type]
    tail = block[48:52].tolist()
    return Scene(
        background=background,
        texture=texture,
        objects=tuple(objects),
        texture_period=0.07 + 0.05 * tail[0],
        texture_phase=(tail[1], tail[2]),
        texture_orientation=min(int(tail[3] * 3), 2),
        lighting=(rng.random((_LIGHT_GRID, _LIGHT_GRID), dtype=np.float32) * 2 - 1),
    )


# ---------------------------------------------------------------------------------------------- drawing


def _background(scene: Scene, width: int, height: int) -> Image.Image:
    base = BACKGROUND_COLOURS[scene.background]
    # Pattern colour: a shade of the background, so "striped blue" still reads as blue.
    shift = -45 if sum(base) > 300 else 45
    alt = tuple(v + shift for v in base)
    period = max(4, round(scene.texture_period * min(width, height)))
    half = max(2, period // 2)
    xs = np.arange(width, dtype=np.int32) + round(scene.texture_phase[0] * period)
    ys = np.arange(height, dtype=np.int32) + round(scene.texture_phase[1] * period)
    bx, by = ((xs // half) & 1).astype(np.uint8), ((ys // half) & 1).astype(np.uint8)
    if scene.texture == "striped":
        if scene.texture_orientation == 2:  # diagonal: row y is the 1-D pattern shifted by y
            diag = (((np.arange(width + height, dtype=np.int32) + xs[0] + ys[0]) // half) & 1).astype(np.uint8)
            mask = np.lib.stride_tricks.sliding_window_view(diag, width)[:height]
        elif scene.texture_orientation == 1:
            mask = np.broadcast_to(bx[None, :], (height, width))
        else:
            mask = np.broadcast_to(by[:, None], (height, width))
    elif scene.texture == "checkered":
        mask = bx[None, :] ^ by[:, None]
    elif scene.texture == "dotted":
        dx, dy = ((xs % period) - period // 2) ** 2, ((ys % period) - period // 2) ** 2
        mask = ((dx[None, :] + dy[:, None]) < (period * 0.22) ** 2).view(np.uint8)
    else:
        mask = None
    if mask is None:
        canvas = Image.new("RGB", (width, height), base)
    else:  # the mask as a two-entry palette image: one C-level conversion instead of per-band lookups
        canvas = Image.frombytes("P", (width, height), np.ascontiguousarray(mask).tobytes())
        canvas.putpalette(base + alt)
        canvas = canvas.convert("RGB")
    # Lighting: canvas + light - amplitude, clipped by Pillow. Pillow upsamples the control grid (numpy's
    # matmul would start BLAS threads that spin on every call).
    grid = Image.fromarray(np.round((scene.lighting + 1.0) * _LIGHT_AMPLITUDE).astype(np.uint8))
    light = grid.resize((width, height), Image.Resampling.BILINEAR)
    return ImageChops.add(canvas, Image.merge("RGB", (light, light, light)), scale=1.0, offset=-_LIGHT_AMPLITUDE)


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, degrees: float) -> list[tuple[float, float]]:
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


_TRIANGLE = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
_STAR = [((1.0 if i % 2 == 0 else 0.42) * math.cos(math.radians(i * 36 - 90)),
          (1.0 if i % 2 == 0 else 0.42) * math.sin(math.radians(i * 36 - 90))) for i in range(10)]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, width: int, height: int) -> None:
    cx, cy = obj.centre[0] * width, obj.centre[1] * height
    r = obj.radius * min(width, height)
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=obj.rgb)
    elif obj.shape == "ring":
        draw.ellipse(box, outline=obj.rgb, width=max(2, round(r * 0.38)))
    elif obj.shape == "square":
        h = r * 0.85
        draw.polygon(_rotate([(-h, -h), (h, -h), (h, h), (-h, h)], cx, cy, obj.rotation * 0.5), fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon(_rotate([(r * x, r * y) for x, y in _TRIANGLE], cx, cy + r * 0.15, obj.rotation), fill=obj.rgb)
    elif obj.shape == "star":
        draw.polygon(_rotate([(r * x, r * y) for x, y in _STAR], cx, cy, obj.rotation), fill=obj.rgb)
    elif obj.shape == "cross":
        w = r * 0.3
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
               (-r, -w), (-w, -w)]
        draw.polygon(_rotate(pts, cx, cy, obj.rotation * 0.5), fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def draw_scene(scene: Scene, width: int, height: int | None = None) -> Image.Image:
    """Render ``scene`` as an RGB image of ``width`` x ``height`` (square when ``height`` is omitted)."""
    height = width if height is None else height
    image = _background(scene, width, height)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, width, height)
    return image


# --------------------------------------------------------------------------------------------- captions
# A caption is rendered from (template, detail, position style, background style, prefix). ``detail`` 2
# says sizes and positions, 1 sizes only, 0 colour and shape only; callers take the most detailed
# rendering that fits in MAX_WORDS, so long scenes lose positions before they lose objects.

TEMPLATES: tuple[str, ...] = (
    "{objects} on a {background}",
    "{objects} against a {background}",
    "a {background} with {objects}",
    "{objects}",
    "{objects} in front of a {background}",
    "{objects} {where} of a {background}",  # one object only: "a large red circle on the left of ..."
)
_SINGLE_ONLY = 5
_OBJECTS_ONLY = 3
_PREFIX_RATE = 0.25  # share of captions that start "a photo of ..." and the like


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrases(scene: Scene, detail: int, pos_style: int) -> list[str]:
    groups: dict[tuple[str, str], list[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    phrases = []
    for (colour, shape), objs in groups.items():
        sizes = {o.size for o in objs}
        size = f"{objs[0].size} " if detail >= 1 and len(sizes) == 1 else ""
        if len(objs) > 1:
            phrases.append(f"{NUMBERS[len(objs)]} {size}{colour} {PLURALS[shape]}")
        else:
            where = f" {POSITION_PHRASES[objs[0].position][pos_style]}" if detail >= 2 else ""
            phrases.append(_article(f"{size}{colour} {shape}") + where)
    return phrases


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _background_phrase(scene: Scene, style: int) -> str:
    if scene.texture == "plain" and style == 1:
        return f"{scene.background} background"
    return f"{scene.texture} {scene.background} background"


def render_caption(scene: Scene, template: int, detail: int, pos_style: int = 0, bg_style: int = 0,
                   prefix: int | None = None) -> str | None:
    """One rendering of a caption, or ``None`` when the template does not apply to this scene."""
    if template == _SINGLE_ONLY:
        if len(scene.objects) != 1 or detail < 2:
            return None
        obj = scene.objects[0]
        text = TEMPLATES[template].format(
            objects=_article(f"{obj.size} {obj.colour} {obj.shape}"),
            where=POSITION_PHRASES[obj.position][pos_style],
            background=_background_phrase(scene, bg_style),
        )
    else:
        objects = _join(_object_phrases(scene, detail, pos_style))
        if template == _OBJECTS_ONLY and word_count(objects) < 6:
            return None  # "two red crosses" alone would describe (and be shared by) too many scenes
        text = TEMPLATES[template].format(objects=objects, background=_background_phrase(scene, bg_style))
    return text if prefix is None else f"{PREFIXES[prefix]} {text}"


def word_count(text: str) -> int:
    return len(text.split())


def describe(scene: Scene, rng: np.random.Generator, template: int | None = None,
             max_words: int = MAX_WORDS) -> str:
    """A natural caption: a random template at the highest detail that fits in ``max_words``."""
    if template is None:
        template = int(rng.integers(0, len(TEMPLATES)))
    pos_style, bg_style = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    prefix = int(rng.integers(0, len(PREFIXES))) if rng.random() < _PREFIX_RATE else None
    for t, x in ((template, prefix), (template, None), (0, None)):  # template 0 always applies
        for detail in (2, 1, 0):
            text = render_caption(scene, t, detail, pos_style, bg_style, x)
            if text is not None and MIN_WORDS <= word_count(text) <= max_words:
                return text
    raise AssertionError("unreachable: detail 0 of template 0 fits in 20 words")  # pragma: no cover


def describe_pair(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Two different captions of one scene from two different templates (the eval split's references)."""
    first, second = (int(t) for t in rng.choice(len(TEMPLATES), size=2, replace=False))
    a = describe(scene, rng, first)
    b = describe(scene, rng, second)
    while b == a:  # both fell back to template 0 (the single-object template on a busier scene)
        b = describe(scene, rng, int(rng.integers(0, len(TEMPLATES))))
    return a, b


def caption_variants(scene: Scene) -> list[str]:
    """Every distinct valid (3..20 words) caption of ``scene``, sorted: alt-texts for one image's many copies."""
    out = set()
    prefixes: tuple[int | None, ...] = (None, *range(len(PREFIXES)))
    for t, d, p, b, x in product(range(len(TEMPLATES)), (2, 1, 0), (0, 1), (0, 1), prefixes):
        text = render_caption(scene, t, d, p, b, x)
        if text is not None and MIN_WORDS <= word_count(text) <= MAX_WORDS:
            out.add(text)
    return sorted(out)

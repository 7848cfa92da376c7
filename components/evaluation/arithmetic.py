"""The image + text arithmetic probe (ALIGN §7): does ``image - "red" + "blue"`` find the blue version?

Drawn with the embedded corpus' own renderer (``components.data.scenes``): one large object near the
centre on plain grey, in each of 4 colours x 4 shapes, with small jitter in place, size, angle and
tint. An index holds ``per_combination`` drawings of every combination; each query is a fresh drawing
composed with ``+w·"<target colour>" −w·"<its colour>"`` exactly as serving composes it
(``components.model.query``), for every shape and every pair of colours (48 queries).

Metrics: ``swap_acc`` (the top item has the target colour *and* the query's shape; chance among the
right-colour items is 1/4), ``colour_acc`` (the target colour only) and ``example`` (1 if the paper-style
example, a red circle plus "blue" minus "red", ranks a blue circle first).
"""

from __future__ import annotations

import itertools
import random

import numpy as np

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
COMBINATIONS = tuple(itertools.product(COLOURS, SHAPES))
DRAW_SIZE = 110  # pixels; the encoder's own eval preprocessing resizes and crops from here
EXAMPLE = ("red", "circle", "blue")


def centred_scene(colour: str, shape: str, rng: random.Random):
    """One large object near the centre on plain grey, with small jitter in place, size, angle and tint."""
    from components.data.scenes import COLOURS as RGB
    from components.data.scenes import Scene, SceneObject

    def jitter() -> float:
        return rng.uniform(-1.0, 1.0)

    rgb = tuple(min(255, max(0, v + int(12 * jitter()))) for v in RGB[colour])
    obj = SceneObject(shape, colour, "large", "center", (0.5 + 0.08 * jitter(), 0.5 + 0.08 * jitter()),
                      0.3 + 0.05 * jitter(), 20 * jitter(), rgb)
    return Scene("gray", "plain", (obj,), 0.1, (0.0, 0.0), 0, np.zeros((8, 8), np.float32))


def draw(colour: str, shape: str, rng: random.Random, size: int = DRAW_SIZE):
    from components.data.scenes import draw_scene

    return draw_scene(centred_scene(colour, shape, rng), size)


def arithmetic_probe(encoder, weight: float = 2.0, per_combination: int = 3, seed: int = 123) -> dict[str, float]:
    """Swap every colour of every shape through ``encoder`` (``encode_images`` / ``encode_texts``)."""
    from components.model.query import compose_query

    rng = random.Random(seed)
    labels = [combo for combo in COMBINATIONS for _ in range(per_combination)]
    index = encoder.encode_images([draw(c, s, rng) for c, s in labels])
    colour_text = dict(zip(COLOURS, encoder.encode_texts(list(COLOURS)), strict=True))
    queries = encoder.encode_images([draw(c, s, random.Random(seed + 1 + n)) for n, (c, s) in enumerate(COMBINATIONS)])
    right = colour_right = asked = 0
    example = 0.0
    for (colour, shape), image in zip(COMBINATIONS, queries, strict=True):
        for target in COLOURS:
            if target == colour:
                continue
            query = compose_query(image, [(colour_text[target], weight), (colour_text[colour], -weight)])
            top = labels[int(np.argmax(index @ query))]
            asked += 1
            right += top == (target, shape)
            colour_right += top[0] == target
            if (colour, shape, target) == EXAMPLE:
                example = float(top == (target, shape))
    return {"swap_acc": right / asked, "colour_acc": colour_right / asked, "example": example}

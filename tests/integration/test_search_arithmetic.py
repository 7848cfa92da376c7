"""ALIGN's image + text arithmetic through the serving API, with a model trained here.

The issue's example: the image of a red circle, plus "blue", minus "red", must rank a blue circle first.
The model is trained in-process on the embedded corpus' drawn shapes (``tests.shape_model``: the
pretrained recipe's frozen towers, projections trained for about a minute on 2 cores); the query goes
through ``POST /v1/search`` of the real replica class and FastAPI app, with the version's artifact
index. Every colour swap of every shape is then asked the same way, and the share answered right is
held to a floor.
"""

import base64
import io
import random

import pytest
from fastapi.testclient import TestClient

from components.evaluation.arithmetic import COLOURS, COMBINATIONS, DRAW_SIZE, draw
from components.model.artifact import load_encoder
from components.serving.app import ServingDeployment
from components.serving.http import http_api
from tests.shape_model import train_shape_model, write_artifact_with_corpus

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 300
SIZE = DRAW_SIZE  # the recipe's resize_short side; its preprocessing crops 96 px
# Swaps answered right over all 16 x 3. Measured while writing this test (weight 2, three seeds and
# caption mixes): 44-48 of 48. The floor is far above chance: among items of the right colour, 1 in 4
# also has the right shape.
MIN_SWAP_ACCURACY = 0.75


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("arithmetic")
    model, tokenizer = train_shape_model(STEPS, size=SIZE)
    write_artifact_with_corpus(model, tokenizer, root / "artifact", size=SIZE)
    loaders = {
        "downloader": lambda tracking_uri, uri: ("1", root / "artifact"),
        "encoder_loader": load_encoder,
        "index_locator": lambda tracking_uri, name, version: "",
        "champion_resolver": lambda tracking_uri, name: "1",
    }
    replica = ServingDeployment({"batch_size": 1, "follow_champion_s": 0}, tracking_uri="unused",
                                model_name="shapes", loaders=loaders)
    with TestClient(http_api(replica)) as client:
        def ask(image, modifiers, k=3):
            response = client.post("/v1/search", json={"image": image, "modifiers": modifiers, "k": k})
            assert response.status_code == 200, response.text
            return response.json()

        yield ask


def _png(colour: str, shape: str, seed: int) -> str:
    buffer = io.BytesIO()
    draw(colour, shape, random.Random(seed), SIZE).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_red_circle_plus_blue_minus_red_finds_a_blue_circle(search):
    body = search(_png("red", "circle", seed=7), [{"text": "blue"}, {"text": "red", "weight": -2.0}])
    assert body["query"] == "image+text"
    assert body["results"][0]["caption"] == "a blue circle", body["results"]


def test_every_colour_swap_keeps_the_shape(search):
    answers, wrong = 0, []
    for n, (colour, shape) in enumerate(COMBINATIONS):
        image = _png(colour, shape, seed=1000 + n)
        for target in COLOURS:
            if target == colour:
                continue
            top = search(image, [{"text": target}, {"text": colour, "weight": -2.0}], k=1)["results"][0]
            answers += 1
            if top["caption"] != f"a {target} {shape}":
                wrong.append(f"{colour} {shape} -> {target}: {top['caption']}")
    accuracy = 1 - len(wrong) / answers
    assert accuracy >= MIN_SWAP_ACCURACY, f"{accuracy:.2f} of {answers} swaps right; wrong: {wrong}"

"""The paper's filters at their exact boundaries (strict inequalities), computed over the whole dataset.

One table-format corpus holds a pair on each side of every threshold: 200 vs 201 px, aspect just
under vs exactly 3, 10 vs 11 images per alt-text, 3 vs 4 alt-texts per image (threshold lowered to 3),
2/3 and 20/21 unigrams, and an NSFW score just over the threshold. Images are PNG so the NSFW score
the test computes is exactly the one the pipeline sees.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.decode import decode_image
from components.data.nsfw import NsfwScorer
from components.data.pipeline import run_filter
from tests.data_fixtures import caption, encode, picture

pytestmark = pytest.mark.integration

WORDS_20 = " ".join(f"w{i}" for i in range(20))
SKIN = encode(Image.new("RGB", (256, 256), (224, 172, 150)), "PNG")


def _corpus(folder) -> tuple[list[tuple[bytes, str]], dict[int, str]]:
    """Rows (image bytes, caption) and the expected outcome per row index."""
    rows: list[tuple[bytes, str, str]] = [
        (picture(0, (201, 201), "PNG"), caption(0), ""),
        (picture(1, (200, 300), "PNG"), caption(1), schema.RULE_IMAGE_TOO_SMALL),
        (picture(2, (201, 602), "PNG"), caption(2), ""),  # aspect 2.995
        (picture(3, (201, 603), "PNG"), caption(3), schema.RULE_IMAGE_ASPECT),  # exactly 3
        (picture(4, fmt="PNG"), "exactly three words", ""),
        (picture(5, fmt="PNG"), "two words", schema.RULE_TEXT_TOO_FEW_WORDS),
        (picture(6, fmt="PNG"), WORDS_20, ""),
        (picture(7, fmt="PNG"), WORDS_20 + " w20", schema.RULE_TEXT_TOO_MANY_WORDS),
        (SKIN, "a plain pink square tile", schema.RULE_NSFW),
    ]
    rows += [(picture(100 + i, fmt="PNG"), "the same alt text on ten images", "") for i in range(10)]
    rows += [(picture(200 + i, fmt="PNG"), "another alt text shared by eleven", schema.RULE_TEXT_MANY_IMAGES) for i in range(11)]
    three, four = picture(300, fmt="PNG"), picture(301, fmt="PNG")
    rows += [(three, f"one image carries caption {i}", "") for i in range(3)]
    rows += [(four, f"another image carries caption {i}", schema.RULE_IMAGE_MANY_TEXTS) for i in range(4)]
    (folder / "images").mkdir(parents=True)
    lines = ["image_path,caption"]
    for i, (image, text, _) in enumerate(rows):
        (folder / "images" / f"{i}.png").write_bytes(image)
        lines.append(f"images/{i}.png,{text}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return [(image, text) for image, text, _ in rows], {i: outcome for i, (_, _, outcome) in enumerate(rows)}


def _nsfw_threshold(rows: list[tuple[bytes, str]]) -> float:
    """Half-way between the pink tile's score and the highest score of every other image."""
    scorer = NsfwScorer()
    scores = scorer.scores([decode_image(image, 10**8)[0] for image, _ in rows])
    skin = [i for i, (image, _) in enumerate(rows) if image == SKIN][0]
    others = max(s for i, s in enumerate(scores) if i != skin)
    assert scores[skin] > others + 0.05, "the test needs a clear gap between the two scores"
    return float(scores[skin] + others) / 2


def _outcomes(out) -> dict[int, str]:
    kept = pq.read_table(out / schema.KEPT_DIR).column("key").to_pylist()
    rejects = pq.read_table(out / schema.REJECTS_DIR).to_pylist()
    outcomes = {int(key.rsplit("/", 1)[1]): "" for key in kept}
    outcomes.update({int(row["key"].rsplit("/", 1)[1]): row["rule"] for row in rejects})
    return outcomes


# Statistics reach the rows by broadcast (small tables) or by hash joins (web scale): same outcomes.
STRATEGIES = pytest.mark.parametrize("broadcast_max_rows", [2_000_000, 0], ids=["broadcast", "hash_join"])


@STRATEGIES
def test_each_rule_at_its_boundary(ray_session, tmp_path, broadcast_max_rows):
    rows, expected = _corpus(tmp_path / "corpus")
    cfg = FilterConfig(
        max_texts_per_image=3,
        vocab_top_n=10**9,
        nsfw_threshold=_nsfw_threshold(rows),
        resize_short_side=32,
        broadcast_max_rows=broadcast_max_rows,
    )
    source = SourceConfig(name="t", format="table", path=str(tmp_path / "corpus"))
    result = run_filter([source], str(tmp_path / "out"), cfg)
    outcomes = _outcomes(tmp_path / "out")
    wrong = {i: (outcomes.get(i), want, rows[i][1]) for i, want in expected.items() if outcomes.get(i) != want}
    assert not wrong, f"(got, expected, caption) per row: {wrong}"
    assert result.report["stats"]["texts_over_image_limit"] == 1
    assert result.report["stats"]["images_over_text_limit"] == 1
    assert result.report["stats"]["strategy"] == ("broadcast" if broadcast_max_rows else "hash_join")


@STRATEGIES
def test_rare_tokens_use_the_corpus_top_n_and_rules_can_be_switched_off(ray_session, tmp_path, broadcast_max_rows):
    """12 rows 'red blue green' + 1 'red blue violet': the top 5 n-grams exclude 'violet' and 'blue violet'.

    The shared-text rule is switched off here (12 images share one alt-text), so only the rare-token rule acts.
    """
    folder = tmp_path / "corpus"
    (folder / "images").mkdir(parents=True)
    texts = ["red blue green"] * 12 + ["red blue violet"]
    lines = ["image_path,caption"]
    for i, text in enumerate(texts):
        (folder / "images" / f"{i}.png").write_bytes(picture(400 + i, fmt="PNG"))
        lines.append(f"images/{i}.png,{text}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    cfg = FilterConfig(
        vocab_top_n=5,
        disabled_rules=["text_shared_by_too_many_images", "nsfw"],
        resize_short_side=32,
        broadcast_max_rows=broadcast_max_rows,
    )
    result = run_filter([SourceConfig(name="t", format="table", path=str(folder))], str(tmp_path / "out"), cfg)
    rejects = pq.read_table(tmp_path / "out" / schema.REJECTS_DIR).to_pylist()
    assert [(r["key"], r["rule"]) for r in rejects] == [("t/pairs/12", schema.RULE_TEXT_RARE_TOKEN)]
    assert "violet" in rejects[0]["detail"]
    assert result.report["stats"]["distinct_ngrams"] == 7 and result.report["stats"]["vocabulary_size"] == 5
    assert result.report["stats"]["texts_over_image_limit"] == 0

"""The eval split carved from an SVG source: deterministic, captioned 3-20 words, no duplicate captions."""

import pytest

from components.config import AlignConfig, HoldoutConfig, SourceConfig
from components.data.holdout import build_holdout
from components.data.ingest import prepare_corpus
from components.data.eval_sets import load_karpathy
from tests.data_fixtures import SVG_GOOD


def _svg(title: str) -> str:
    return SVG_GOOD.replace("red apple on a table", title)


@pytest.fixture
def clipart(tmp_path):
    folder = tmp_path / "clipart"
    folder.mkdir()
    titles = ["a red apple on a table", "a blue boat on the sea", "a blue boat on the sea", "sun", "a green tree in a park"]
    for i, title in enumerate(titles):
        (folder / f"{i}.svg").write_text(_svg(title))
    return SourceConfig(name="clipart", format="svg", path=str(folder), svg_caption="title", svg_render_size=64)


def test_holdout_is_a_karpathy_split_without_duplicates_or_short_captions(clipart, tmp_path):
    path = build_holdout(clipart, HoldoutConfig(source="clipart", images=10), tmp_path / "holdout")
    split = load_karpathy(path, split="test")
    assert sorted(split.captions) == ["a blue boat on the sea", "a green tree in a park", "a red apple on a table"]
    assert len(split.image_paths) == 3 and all(p.suffix == ".jpg" and p.is_file() for p in split.image_paths)


def test_holdout_order_depends_on_the_seed_only(clipart, tmp_path):
    first = build_holdout(clipart, HoldoutConfig(source="clipart", images=2, seed=3), tmp_path / "a").read_text()
    again = build_holdout(clipart, HoldoutConfig(source="clipart", images=2, seed=3), tmp_path / "b").read_text()
    assert first == again


def test_a_real_corpus_without_an_eval_split_is_refused(tmp_path):
    cfg = AlignConfig()
    cfg.storage.home = str(tmp_path)
    cfg.corpus.kind = "sources"
    cfg.corpus.sources = [SourceConfig(name="s", format="sidecar", path=str(tmp_path))]
    with pytest.raises(ValueError, match="eval_holdout"):
        prepare_corpus(cfg)
    cfg.corpus.eval_holdout = HoldoutConfig(source="s")
    with pytest.raises(ValueError, match="needs an svg source"):
        prepare_corpus(cfg)

"""Ingest + filter on a small noisy corpus with Ray Data: every filter catches its kind of noise."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.config import CorpusConfig, FilterConfig, SourceConfig
from components.data import schema
from components.data.ingest import eval_image_hashes
from components.data.pipeline import InvariantError, run_filter
from components.data.rules import ngrams
from components.data.synthetic import generate_corpus
from components.storage import read_json

pytestmark = pytest.mark.integration

EXPECTED_RULES = {
    "too_small": {schema.RULE_IMAGE_TOO_SMALL},
    "extreme_aspect": {schema.RULE_IMAGE_ASPECT},
    "boilerplate": {schema.RULE_TEXT_MANY_IMAGES, schema.RULE_TEXT_TOO_FEW_WORDS},
    "many_texts": {schema.RULE_IMAGE_MANY_TEXTS},
    "short_text": {schema.RULE_TEXT_TOO_FEW_WORDS},
    "long_text": {schema.RULE_TEXT_TOO_MANY_WORDS},
    "rare_token": {schema.RULE_TEXT_RARE_TOKEN},
    "eval_duplicate": {schema.RULE_NEAR_DUPLICATE_EVAL},
    "corrupt_image": {schema.RULE_IMAGE_UNDECODABLE},
    "non_utf8_caption": {schema.RULE_CAPTION_NOT_UTF8},
}
CORPUS = CorpusConfig(
    num_scenes=300, image_size=220, eval_scenes=30, classify_per_class=2, seed=11,
    boilerplate_rate=0.08, many_texts_images=2, many_texts_per_image=12, eval_duplicate_rate=0.03,
)


def _vocab_size_of_repeated_ngrams(train_dir: Path) -> int:
    """N such that the top-N holds exactly the n-grams seen at least twice (junk tokens are unique)."""
    counts = Counter()
    for caption in train_dir.glob("*.txt"):
        counts.update(ngrams(caption.read_bytes().decode("utf-8", errors="replace")))
    return sum(1 for c in counts.values() if c >= 2)


def _sidecar(path) -> list[SourceConfig]:
    return [SourceConfig(name="corpus", format="sidecar", path=str(path))]


@pytest.fixture(scope="module")
def filtered(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    summary = generate_corpus(CORPUS, root / "corpus")
    cfg = FilterConfig(
        max_texts_per_image=10,
        vocab_top_n=_vocab_size_of_repeated_ngrams(root / "corpus" / "train"),
        resize_short_side=48,
        rows_per_shard=100,
    )
    hashes = eval_image_hashes(str(root / "corpus" / "eval" / "dataset.json"), "test")
    source = SourceConfig(name="synthetic", format="sidecar", path=str(root / "corpus" / "train"))
    result = run_filter([source], str(root / "out"), cfg, eval_hashes=hashes)
    return root, summary, cfg, result


def test_rows_in_equal_kept_plus_rejected(filtered):
    root, summary, _, result = filtered
    kept = pq.read_table(root / "out" / schema.KEPT_DIR)
    rejects = pq.read_table(root / "out" / schema.REJECTS_DIR)
    assert result.report["rows_in"] == summary.train_pairs == kept.num_rows + rejects.num_rows
    assert len(set(kept["key"].to_pylist()) | set(rejects["key"].to_pylist())) == summary.train_pairs
    assert sum(result.report["rejected_by_rule"].values()) == rejects.num_rows


def test_each_kind_of_noise_is_rejected_by_its_rule(filtered):
    root, summary, _, _ = filtered
    rejects = pq.read_table(root / "out" / schema.REJECTS_DIR).to_pylist()
    rule_of = {row["key"].split("/", 1)[1]: row for row in rejects}
    for kind, rules in EXPECTED_RULES.items():
        keys = summary.noise_keys[kind]
        assert keys, f"the corpus has no {kind} noise"
        for key in keys:
            assert key in rule_of, f"{kind} key {key} was kept"
            assert rule_of[key]["rule"] in rules, (kind, rule_of[key])
            assert rule_of[key]["detail"] and rule_of[key]["locator"].endswith(".jpg")


def test_bad_files_are_quarantined_with_a_reason(filtered):
    root, summary, _, _ = filtered
    rejects = {r["key"].split("/", 1)[1]: r for r in pq.read_table(root / "out" / schema.REJECTS_DIR).to_pylist()}
    for key in summary.noise_keys["corrupt_image"]:
        assert rejects[key]["rule"] == schema.RULE_IMAGE_UNDECODABLE
    for key in summary.noise_keys["non_utf8_caption"]:
        assert "not UTF-8" in rejects[key]["detail"]


def test_clean_pairs_survive_and_are_resized_for_training(filtered):
    root, summary, cfg, _ = filtered
    kept = pq.read_table(root / "out" / schema.KEPT_DIR).to_pylist()
    noisy = {k for kind, keys in summary.noise_keys.items() if kind != "mismatch" for k in keys}
    kept_keys = {row["key"].split("/", 1)[1] for row in kept}
    assert not kept_keys & noisy
    assert len(kept_keys) >= 0.8 * summary.clean_pairs
    import io

    for row in kept[:20]:
        assert min(Image.open(io.BytesIO(row["image"])).size) == cfg.resize_short_side
        assert set(row) == set(schema.PAIR_COLUMNS)


def test_report_and_manifest_are_written_next_to_the_shards(filtered):
    root, _, cfg, result = filtered
    manifest = read_json(str(root / "out" / schema.MANIFEST_FILE))
    report = read_json(str(root / "out" / schema.REPORT_FILE))
    assert manifest["rows"] == {"in": report["rows_in"], "kept": report["rows_kept"], "rejected": report["rows_rejected"]}
    assert len(manifest["content_hash"]) == 64 and manifest["filter_config"] == cfg.model_dump()
    assert report["stats"]["texts_over_image_limit"] >= 1 and report["stats"]["images_over_text_limit"] == 2


def test_orphan_files_are_rejected_not_dropped(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    Image.new("RGB", (240, 240), "red").save(corpus / "a.jpg")
    (corpus / "a.txt").write_text("a red square on a plain background")
    Image.new("RGB", (240, 240), "blue").save(corpus / "lonely.jpg")
    (corpus / "caption-only.txt").write_text("a caption without its image")
    result = run_filter(_sidecar(corpus), str(tmp_path / "out"), FilterConfig(vocab_top_n=1000))
    assert result.report["rows_in"] == 3 and result.report["rows_kept"] == 1
    assert result.report["rejected_by_rule"][schema.RULE_MISSING_CAPTION] == 1
    assert result.report["rejected_by_rule"][schema.RULE_MISSING_IMAGE] == 1
    # A second run into the same folder would mix two outputs: refused before anything runs.
    with pytest.raises(FileExistsError, match="already holds a filter output"):
        run_filter(_sidecar(corpus), str(tmp_path / "out"), FilterConfig(vocab_top_n=1000))


def test_lost_rows_fail_the_stage(ray_session, tmp_path, monkeypatch):
    """If storage holds fewer rows than went in, the stage fails instead of writing a manifest."""
    import components.data.pipeline as pipeline

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    Image.new("RGB", (240, 240), "red").save(corpus / "a.jpg")
    (corpus / "a.txt").write_text("a red square on a plain background")
    monkeypatch.setattr(pipeline, "_rows_on_disk", lambda uri: 0)
    with pytest.raises(InvariantError, match="rows in 1"):
        run_filter(_sidecar(corpus), str(tmp_path / "out"), FilterConfig(vocab_top_n=1000))
    assert not (tmp_path / "out" / schema.MANIFEST_FILE).exists()


def test_an_ingest_interrupted_before_its_manifest_reruns_from_a_clean_folder(ray_session, tmp_path, monkeypatch):
    """The shards of a crashed attempt must neither block the rerun nor join its output."""
    import components.data.pipeline as pipeline
    from components.config import load_config
    from components.data.ingest import ingest
    from tests.train_fixtures import TINY_LIFECYCLE

    cfg = load_config(None, [f"storage.home={tmp_path}", *[o for o in TINY_LIFECYCLE if o.startswith(("corpus.", "filter."))]])
    publish = pipeline.write_json

    def crash_before_the_manifest(uri: str, payload: dict) -> None:
        if uri.endswith(schema.MANIFEST_FILE):
            raise RuntimeError("worker lost before the manifest")
        publish(uri, payload)

    monkeypatch.setattr(pipeline, "write_json", crash_before_the_manifest)
    with pytest.raises(RuntimeError, match="before the manifest"):
        ingest(cfg)
    monkeypatch.setattr(pipeline, "write_json", publish)
    result = ingest(cfg)
    assert not result.cached and result.report["rows_kept"] > 0
    assert pq.read_table(result.kept_uri).num_rows == result.report["rows_kept"]
    assert ingest(cfg).cached

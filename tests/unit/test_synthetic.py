"""The synthetic corpus: layout, determinism, and that every kind of noise is really there as recorded."""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import CorpusConfig
from components.data.scenes import SHAPES, caption_variants, describe, draw_scene, sample_scene
from components.data.synthetic import NOISE_KINDS, CorpusSummary, generate_corpus

SMALL = dict(
    num_scenes=200, image_size=220, eval_scenes=20, classify_per_class=3, seed=7,
    too_small_rate=0.03, extreme_aspect_rate=0.03, boilerplate_rate=0.12,
    boilerplate_texts=["image", "click here to enlarge photo"], many_texts_images=2, many_texts_per_image=5,
    short_text_rate=0.02, long_text_rate=0.02, rare_token_rate=0.03, mismatch_rate=0.05,
    eval_duplicate_rate=0.05, corrupt_images=2, non_utf8_captions=2,
)


def small_config(**overrides) -> CorpusConfig:
    return CorpusConfig(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, CorpusSummary]:
    out = tmp_path_factory.mktemp("corpus") / "synthetic"
    return out, generate_corpus(small_config(), out)


def train_pair(root: Path, key: str) -> tuple[bytes, bytes]:
    return (root / "train" / f"{key}.jpg").read_bytes(), (root / "train" / f"{key}.txt").read_bytes()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def dhash(image: Image.Image, resample: Image.Resampling) -> np.ndarray:
    """64-bit difference hash as bits; checked with two common resampling filters."""
    grey = np.asarray(image.convert("L").resize((9, 8), resample), dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


RESAMPLERS = (Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def clean_keys(summary: CorpusSummary, root: Path) -> list[str]:
    noisy = {k for keys in summary.noise_keys.values() for k in keys}
    return sorted(p.stem for p in (root / "train").glob("*.jpg") if p.stem not in noisy)


def test_layout(corpus):
    root, summary = corpus
    jpgs = {p.stem for p in (root / "train").glob("*.jpg")}
    txts = {p.stem for p in (root / "train").glob("*.txt")}
    assert jpgs == txts and len(jpgs) == summary.train_pairs == 200 + 2 * 4
    assert all(len(k) == 6 and k.isdigit() for k in jpgs)
    assert sorted(p.name for p in root.iterdir()) == ["classify", "corpus_summary.json", "eval", "train"]
    assert CorpusSummary.load(root) == summary
    assert summary.clean_pairs == len(clean_keys(summary, root))


def test_eval_split_is_karpathy_json(corpus):
    root, summary = corpus
    data = json.loads((root / "eval" / "dataset.json").read_text(encoding="utf-8"))
    assert data["dataset"] == "synthetic" and len(data["images"]) == summary.eval_images == 20
    sentids = []
    for i, entry in enumerate(data["images"]):
        assert entry["imgid"] == i and entry["split"] == "test"
        assert entry["filename"] == f"images/{i:06d}.jpg"
        assert decode((root / "eval" / entry["filename"]).read_bytes()).size == (220, 220)
        raws = [s["raw"] for s in entry["sentences"]]
        assert len(raws) == 2 and raws[0] != raws[1]
        assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        assert all(3 <= len(r.split()) <= 20 for r in raws)
        sentids += entry["sentids"]
    assert sentids == list(range(40)) == list(range(summary.eval_captions))
    captions = [s["raw"] for e in data["images"] for s in e["sentences"]]
    assert len(set(captions)) >= 0.9 * len(captions)  # specific enough for retrieval


def test_classify_split_is_image_folder(corpus):
    root, summary = corpus
    classes = json.loads((root / "classify" / "classes.json").read_text())["classes"]
    assert classes == sorted(SHAPES) == summary.classes
    assert sorted(p.name for p in (root / "classify").iterdir() if p.is_dir()) == classes
    for name in classes:
        files = sorted((root / "classify" / name).glob("*.jpg"))
        assert len(files) == 3
        assert decode(files[0].read_bytes()).size == (220, 220)
    assert summary.classify_images == 18


def test_same_config_gives_identical_files(corpus, tmp_path):
    root, summary = corpus
    again = tmp_path / "again"
    generate_corpus(small_config(), again)
    generate_corpus(small_config(), again)  # regenerating over a previous corpus replaces it
    assert file_hashes(again) == file_hashes(root)
    other = generate_corpus(small_config(seed=8), tmp_path / "other")
    assert (tmp_path / "other" / "eval" / "dataset.json").read_bytes() != (root / "eval" / "dataset.json").read_bytes()
    assert other.noise_keys != summary.noise_keys


def test_refuses_a_folder_that_is_not_a_corpus(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_corpus(small_config(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_rejects_more_noise_than_scenes(tmp_path):
    with pytest.raises(ValueError):
        generate_corpus(small_config(corrupt_images=150, non_utf8_captions=50), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_every_noise_kind_is_present_disjoint_and_recorded(corpus):
    root, summary = corpus
    assert set(summary.noise_counts) == set(NOISE_KINDS) == set(summary.noise_keys)
    expected = {"too_small": 6, "extreme_aspect": 6, "boilerplate": 24, "many_texts": 10, "short_text": 4,
                "long_text": 4, "rare_token": 6, "mismatch": 10, "eval_duplicate": 10, "corrupt_image": 2,
                "non_utf8_caption": 2}
    assert summary.noise_counts == expected
    seen: set[str] = set()
    for kind, keys in summary.noise_keys.items():
        assert len(keys) == len(set(keys)) == summary.noise_counts[kind]
        assert not seen & set(keys), f"{kind} shares keys with another kind"
        seen |= set(keys)
        assert all((root / "train" / f"{k}.jpg").is_file() for k in keys)
    assert summary.clean_pairs == summary.train_pairs - len(seen)


def test_image_size_noise(corpus):
    root, summary = corpus
    for key in summary.noise_keys["too_small"]:
        w, h = decode(train_pair(root, key)[0]).size
        assert min(w, h) <= 200 and max(w, h) / min(w, h) < 3
    for key in summary.noise_keys["extreme_aspect"]:
        w, h = decode(train_pair(root, key)[0]).size
        assert min(w, h) > 200 and max(w, h) / min(w, h) >= 3


def test_boilerplate_texts_are_shared_by_more_than_ten_images(corpus):
    root, summary = corpus
    images_per_text: dict[str, set[str]] = defaultdict(set)
    for key in summary.noise_keys["boilerplate"]:
        image, text = train_pair(root, key)
        images_per_text[text.decode("utf-8")].add(hashlib.sha256(image).hexdigest())
    assert sorted(images_per_text) == sorted(summary.boilerplate_texts) == sorted(SMALL["boilerplate_texts"])
    assert all(len(images) > 10 for images in images_per_text.values())


def test_many_texts_share_bytes_and_differ_in_text(corpus):
    root, summary = corpus
    assert len(summary.many_texts_groups) == 2
    assert sorted(k for g in summary.many_texts_groups for k in g) == summary.noise_keys["many_texts"]
    for group in summary.many_texts_groups:
        pairs = [train_pair(root, k) for k in group]
        assert len({image for image, _ in pairs}) == 1
        texts = {text.decode("utf-8") for _, text in pairs}
        assert len(texts) == 5 and all(3 <= len(t.split()) <= 20 for t in texts)


def test_broken_files_and_encodings(corpus):
    root, summary = corpus
    for key in summary.noise_keys["corrupt_image"]:
        image, text = train_pair(root, key)
        with pytest.raises(Exception):
            decode(image)
        assert 3 <= len(text.decode("utf-8").split()) <= 20
    for key in summary.noise_keys["non_utf8_caption"]:
        image, text = train_pair(root, key)
        with pytest.raises(UnicodeDecodeError):
            text.decode("utf-8")
        decode(image)


def test_text_noise(corpus):
    root, summary = corpus
    clean_words = {w for k in clean_keys(summary, root) for w in train_pair(root, k)[1].decode().split()}
    for key in summary.noise_keys["short_text"]:
        assert 1 <= len(train_pair(root, key)[1].decode().split()) <= 2
    for key in summary.noise_keys["long_text"]:
        words = train_pair(root, key)[1].decode().split()
        assert len(words) > 20 and set(words) <= clean_words | {"and"}
    junk = []
    for key in summary.noise_keys["rare_token"]:
        words = train_pair(root, key)[1].decode().split()
        assert 3 <= len(words) <= 20
        outside = [w for w in words if w not in clean_words]
        assert len(outside) == 1
        junk += outside
    assert len(set(junk)) == len(junk)
    for key in summary.noise_keys["mismatch"]:
        image, text = train_pair(root, key)
        assert decode(image).size == (220, 220) and 3 <= len(text.decode().split()) <= 20


def test_clean_pairs_pass_every_rule(corpus):
    root, summary = corpus
    keys = clean_keys(summary, root)
    images_per_text: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        image, text = train_pair(root, key)
        caption = text.decode("utf-8")
        assert 3 <= len(caption.split()) <= 20
        assert decode(image).size == (220, 220)
        images_per_text[caption].add(hashlib.sha256(image).hexdigest())
    assert max(len(v) for v in images_per_text.values()) <= 10
    assert len(images_per_text) >= 0.9 * len(keys)  # captions are specific, not templates


def test_eval_duplicates_are_near_and_clean_images_are_not(corpus):
    root, summary = corpus
    assert set(summary.eval_duplicate_sources) == set(summary.noise_keys["eval_duplicate"])
    data = json.loads((root / "eval" / "dataset.json").read_text(encoding="utf-8"))
    eval_images = {e["filename"]: decode((root / "eval" / e["filename"]).read_bytes()) for e in data["images"]}
    eval_hashes = {r: np.stack([dhash(im, r) for im in eval_images.values()]) for r in RESAMPLERS}
    for key, filename in summary.eval_duplicate_sources.items():
        image_bytes, text = train_pair(root, key)
        original = eval_images[filename]
        copy = decode(image_bytes)
        assert copy.size != original.size and image_bytes != (root / "eval" / filename).read_bytes()
        diff = np.abs(np.asarray(copy.resize(original.size), np.int16) - np.asarray(original, np.int16))
        assert diff.mean() < 6
        assert all((dhash(copy, r) != dhash(original, r)).sum() <= 2 for r in RESAMPLERS)
        entry = next(e for e in data["images"] if e["filename"] == filename)
        assert text.decode("utf-8") in [s["raw"] for s in entry["sentences"]]
    for key in clean_keys(summary, root)[:80]:
        image = decode(train_pair(root, key)[0])
        for r in RESAMPLERS:  # a near-duplicate filter at distance 4 will not drop clean pairs
            assert (eval_hashes[r] != dhash(image, r)).sum(axis=1).min() > 6


def test_scene_captions_are_drawn_and_valid():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = sample_scene(rng)
        assert 1 <= len(scene.objects) <= 3
        assert all(o.colour != scene.background for o in scene.objects)
        assert all(3 <= len(c.split()) <= 20 for c in caption_variants(scene))
        caption = describe(scene, rng)
        assert all(o.shape in caption and o.colour in caption for o in scene.objects)  # plurals contain it
    assert draw_scene(scene, 300, 120).size == (300, 120)

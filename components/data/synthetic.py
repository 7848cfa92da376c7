"""The embedded default dataset: a deterministic, *noisy* image/alt-text corpus of drawn scenes.

ALIGN's point is that a big, lightly filtered web corpus is enough. To exercise that recipe offline, the
train split here is deliberately dirty in the ways the paper's filters target (tiny or extreme-aspect images,
boilerplate alt-texts, one image with many alt-texts, too short/long/junk-token captions, near duplicates of
evaluation images) plus noise no filter can catch (mismatched captions, corrupt files, bad encodings). Every
noisy key is recorded by kind in ``corpus_summary.json``, so tests can check that each filter catches its kind.

Determinism: every scene draws from its own generator seeded with ``(seed, stream, index)``, so a scene does
not change when noise rates change, and the same config always gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from components.config import CorpusConfig
from components.data.scenes import (
    MAX_WORDS,
    SHAPES,
    Scene,
    caption_variants,
    describe,
    describe_pair,
    draw_scene,
    sample_scene,
    word_count,
)

JPEG_QUALITY = 90
NOISE_KINDS: tuple[str, ...] = (
    "too_small", "extreme_aspect", "boilerplate", "many_texts", "short_text", "long_text", "rare_token",
    "mismatch", "eval_duplicate", "corrupt_image", "non_utf8_caption",
)
# Independent random streams: eval scenes never share a generator with train scenes.
_TRAIN, _EVAL, _CLASSIFY, _NOISE, _LAYOUT = 1, 2, 3, 4, 5
_MIN_SHARED = 11  # the paper drops alt-texts shared by > 10 images; boilerplate must exceed that
_OURS = {"train", "eval", "classify", "corpus_summary.json"}


@dataclass
class CorpusSummary:
    """What was generated, and which train keys carry which kind of noise (``noise_keys[kind]``)."""

    train_pairs: int
    clean_pairs: int
    eval_images: int
    eval_captions: int
    classify_images: int
    classes: list[str]
    noise_counts: dict[str, int]
    noise_keys: dict[str, list[str]]
    eval_duplicate_sources: dict[str, str] = field(default_factory=dict)  # train key -> eval filename
    many_texts_groups: list[list[str]] = field(default_factory=list)  # keys sharing one image's bytes
    boilerplate_texts: list[str] = field(default_factory=list)  # the texts actually used
    config: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CorpusSummary:
        return cls(**json.loads(text))

    @classmethod
    def load(cls, out_dir: str | Path) -> CorpusSummary:
        return cls.from_json((Path(out_dir) / "corpus_summary.json").read_text(encoding="utf-8"))


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)  # no EXIF, no timestamps: bytes depend on pixels only
    return buf.getvalue()


def _train_scene(seed: int, slot: int) -> tuple[Scene, str]:
    """Scene ``slot`` of the train stream and its clean caption (recomputable: mismatches borrow captions)."""
    rng = _rng(seed, _TRAIN, slot)
    scene = sample_scene(rng)
    return scene, describe(scene, rng)


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class _Plan:
    kind_of: dict[int, str]  # slot -> noise kind; slots not listed are clean
    many_texts: dict[int, list[str]]  # slot -> its alt-texts (first under the slot's own key)
    eval_source: dict[int, int]  # slot -> eval image index
    boilerplate: dict[int, str]  # slot -> text
    boilerplate_texts: list[str]
    mismatch_source: dict[int, int]  # slot -> the slot whose caption it borrows
    keys: list[str]  # slot keys first, then the extra many-texts keys in order


def _count(rate: float, cfg: CorpusConfig) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rates are fractions of num_scenes in [0, 1], got {rate}")
    return int(round(rate * cfg.num_scenes))


def _plan(cfg: CorpusConfig) -> _Plan:
    """Decide, before drawing anything, which slot gets which noise and which key every pair is written to."""
    rng = _rng(cfg.seed, _LAYOUT)
    n_boiler = _count(cfg.boilerplate_rate, cfg)
    texts = [t for t in cfg.boilerplate_texts if t]
    if n_boiler and not texts:
        raise ValueError("boilerplate_rate > 0 needs at least one boilerplate_texts entry")
    if n_boiler:
        # A boilerplate text is only boilerplate when > 10 images share it: use as many texts as that allows.
        n_boiler = max(n_boiler, _MIN_SHARED)
        texts = texts[: max(1, min(len(texts), n_boiler // _MIN_SHARED))]
    n_dup = _count(cfg.eval_duplicate_rate, cfg)
    if n_dup > cfg.eval_scenes:
        raise ValueError(f"eval_duplicate_rate asks for {n_dup} duplicates of only {cfg.eval_scenes} eval images")
    counts = {
        "too_small": _count(cfg.too_small_rate, cfg),
        "extreme_aspect": _count(cfg.extreme_aspect_rate, cfg),
        "boilerplate": n_boiler,
        "short_text": _count(cfg.short_text_rate, cfg),
        "long_text": _count(cfg.long_text_rate, cfg),
        "rare_token": _count(cfg.rare_token_rate, cfg),
        "mismatch": _count(cfg.mismatch_rate, cfg),
        "eval_duplicate": n_dup,
        "corrupt_image": cfg.corrupt_images,
        "non_utf8_caption": cfg.non_utf8_captions,
    }
    many = cfg.many_texts_images if cfg.many_texts_per_image > 1 else 0
    if any(v < 0 for v in counts.values()) or many < 0:
        raise ValueError("noise counts must be non-negative")
    if sum(counts.values()) + many > cfg.num_scenes:
        raise ValueError(f"{sum(counts.values()) + many} noisy slots requested but num_scenes is {cfg.num_scenes}")

    order = [int(s) for s in rng.permutation(cfg.num_scenes)]
    kind_of: dict[int, str] = {}
    at = 0
    for kind, n in counts.items():
        for slot in order[at : at + n]:
            kind_of[slot] = kind
        at += n

    # Many texts: the remaining slots whose scene has enough distinct captions, richest first on a shortfall.
    many_texts: dict[int, list[str]] = {}
    if many:
        candidates = []
        for slot in order[at : at + max(50, 10 * many)]:
            variants = caption_variants(_train_scene(cfg.seed, slot)[0])
            candidates.append((len(variants) >= cfg.many_texts_per_image, slot, variants))
            if sum(ok for ok, _, _ in candidates) >= many:
                break
        candidates.sort(key=lambda c: (not c[0], -len(c[2])))
        for _, slot, variants in candidates[:many]:
            picked = rng.permutation(len(variants))[: cfg.many_texts_per_image]
            many_texts[slot] = [variants[int(i)] for i in picked]
            kind_of[slot] = "many_texts"

    eval_source = dict(zip(sorted(s for s, k in kind_of.items() if k == "eval_duplicate"),
                           (int(i) for i in rng.choice(cfg.eval_scenes, size=n_dup, replace=False))))
    boiler_slots = sorted(s for s, k in kind_of.items() if k == "boilerplate")
    boilerplate = {slot: texts[i % len(texts)] for i, slot in enumerate(boiler_slots)}
    mismatch_source = {
        slot: (slot + 1 + int(rng.integers(0, cfg.num_scenes - 1))) % cfg.num_scenes
        for slot in sorted(s for s, k in kind_of.items() if k == "mismatch")
    }
    total = cfg.num_scenes + sum(len(v) - 1 for v in many_texts.values())
    width = max(6, len(str(total - 1)))
    keys = [f"{int(k):0{width}d}" for k in rng.permutation(total)]  # crawl order is not slot order
    return _Plan(kind_of, many_texts, eval_source, boilerplate, texts if n_boiler else [], mismatch_source, keys)


# ----------------------------------------------------------------------------------------------- noise


def _junk_token(rng: np.random.Generator, used: set[str]) -> str:
    """A random lowercase/digit token such as ``xq7zkw``; unique, so it is rarer than any real n-gram."""
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    while True:
        token = "".join(rng.choice(alphabet, size=int(rng.integers(6, 9))))
        if any(c.isdigit() for c in token) and token not in used:
            used.add(token)
            return token


def _long_text(scene: Scene, rng: np.random.Generator) -> str:
    """More than 20 words, all from the scene vocabulary: several descriptions of the same scene joined."""
    variants = caption_variants(scene)
    parts: list[str] = []
    for i in rng.permutation(len(variants)):
        parts.append(variants[int(i)])
        if word_count(" and ".join(parts)) > MAX_WORDS:
            break
    while word_count(" and ".join(parts)) <= MAX_WORDS:  # tiny vocabularies: repeat rather than fail
        parts.append(parts[-1])
    return " and ".join(parts)


def _short_text(scene: Scene, rng: np.random.Generator) -> str:
    obj = scene.objects[int(rng.integers(0, len(scene.objects)))]
    return obj.shape if rng.random() < 0.25 else f"{obj.colour} {obj.shape}"


def _corrupt(scene: Scene, size: int, rng: np.random.Generator, index: int) -> bytes:
    if index % 2 == 0:  # a download cut short: a JPEG header and nothing else
        return _jpeg(draw_scene(scene, size))[: int(rng.integers(80, 160))]
    data = bytearray(rng.bytes(int(rng.integers(500, 2000))))
    data[0] = 0x00  # never accidentally a JPEG/PNG/GIF signature
    return bytes(data)


def _near_duplicate(eval_jpeg: bytes, rng: np.random.Generator) -> bytes:
    """Upscale by a few pixels and re-encode at another quality: the usual web copy of an image.

    Different bytes and size, same picture: a 64-bit dHash moves by at most a couple of bits. (Cropping
    a few pixels moves it by up to ~4, too close to a typical near-duplicate threshold to test against.)
    """
    with Image.open(io.BytesIO(eval_jpeg)) as im:
        image = im.convert("RGB")
    w, h = image.size
    image = image.resize((w + int(rng.integers(1, 5)), h + int(rng.integers(1, 5))), Image.Resampling.BICUBIC)
    return _jpeg(image, quality=int(rng.integers(70, 86)))


def _odd_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    if kind == "too_small":  # shorter side <= 200, aspect < 3: only the size rule applies
        short = int(rng.integers(96, 201))
        long = int(rng.integers(short, min(2 * short, 300) + 1))
    else:  # aspect >= 3 with shorter side > 200: only the aspect rule applies
        short = int(rng.integers(205, 241))
        long = int(np.ceil(short * rng.uniform(3.05, 3.6)))
    return (long, short) if rng.random() < 0.5 else (short, long)


# --------------------------------------------------------------------------------------------- writing


def _write_eval(cfg: CorpusConfig, root: Path, keep: set[int]) -> tuple[dict[int, bytes], int]:
    (root / "images").mkdir(parents=True)
    images, kept, sentid = [], {}, 0
    for i in range(cfg.eval_scenes):
        rng = _rng(cfg.seed, _EVAL, i)
        scene = sample_scene(rng)
        data = _jpeg(draw_scene(scene, cfg.image_size))
        filename = f"images/{i:06d}.jpg"
        (root / filename).write_bytes(data)
        if i in keep:
            kept[i] = data
        sentences = []
        for raw in describe_pair(scene, rng):
            sentences.append({"tokens": raw.replace(",", "").split(), "raw": raw, "imgid": i, "sentid": sentid})
            sentid += 1
        images.append({"filename": filename, "imgid": i, "split": "test",
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    (root / "dataset.json").write_text(json.dumps({"dataset": "synthetic", "images": images}, indent=1) + "\n",
                                       encoding="utf-8")
    return kept, sentid


def _write_classify(cfg: CorpusConfig, root: Path) -> int:
    for c, shape in enumerate(SHAPES):
        (root / shape).mkdir(parents=True)
        for n in range(cfg.classify_per_class):
            scene = sample_scene(_rng(cfg.seed, _CLASSIFY, c, n), num_objects=1, shape=shape)
            (root / shape / f"{n:04d}.jpg").write_bytes(_jpeg(draw_scene(scene, cfg.image_size)))
    (root / "classes.json").write_text(json.dumps({"classes": sorted(SHAPES)}) + "\n", encoding="utf-8")
    return len(SHAPES) * cfg.classify_per_class


def _write_train(cfg: CorpusConfig, root: Path, plan: _Plan, eval_jpegs: dict[int, bytes],
                 eval_captions: dict[int, str]) -> dict[str, list[str]]:
    root.mkdir(parents=True)
    noise_keys: dict[str, list[str]] = {k: [] for k in NOISE_KINDS}
    junk: set[str] = set()
    extra = iter(plan.keys[cfg.num_scenes :])
    seen = {k: 0 for k in NOISE_KINDS}

    def put(key: str, image: bytes, text: bytes) -> None:
        (root / f"{key}.jpg").write_bytes(image)
        (root / f"{key}.txt").write_bytes(text)

    for slot in range(cfg.num_scenes):
        key, kind = plan.keys[slot], plan.kind_of.get(slot)
        scene, caption = _train_scene(cfg.seed, slot)
        if kind is None:
            put(key, _jpeg(draw_scene(scene, cfg.image_size)), caption.encode("utf-8"))
            continue
        noise = _rng(cfg.seed, _NOISE, slot)  # a second stream, so noise never shifts the scene's draws
        text = caption
        if kind in ("too_small", "extreme_aspect"):
            image = _jpeg(draw_scene(scene, *_odd_size(noise, kind)))
        elif kind == "eval_duplicate":
            source = plan.eval_source[slot]
            image, text = _near_duplicate(eval_jpegs[source], noise), eval_captions[source]
        elif kind == "corrupt_image":
            image = _corrupt(scene, cfg.image_size, noise, seen[kind])
        else:
            image = _jpeg(draw_scene(scene, cfg.image_size))
        if kind == "boilerplate":
            text = plan.boilerplate[slot]
        elif kind == "short_text":
            text = _short_text(scene, noise)
        elif kind == "long_text":
            text = _long_text(scene, noise)
        elif kind == "rare_token":
            words = describe(scene, noise, max_words=MAX_WORDS - 1).split()
            words.insert(int(noise.integers(1, len(words) + 1)), _junk_token(noise, junk))
            text = " ".join(words)
        elif kind == "mismatch":
            text = _train_scene(cfg.seed, plan.mismatch_source[slot])[1]
        if kind == "non_utf8_caption":  # latin-1 bytes plus a stray 0xff: never valid UTF-8
            raw = f"{caption} café rouge".encode("latin-1") + b"\xff"
        else:
            raw = text.encode("utf-8")
        if kind == "many_texts":
            raw = plan.many_texts[slot][0].encode("utf-8")
            for alt in plan.many_texts[slot][1:]:
                extra_key = next(extra)
                put(extra_key, image, alt.encode("utf-8"))
                noise_keys[kind].append(extra_key)
        put(key, image, raw)
        noise_keys[kind].append(key)
        seen[kind] += 1
    return {k: sorted(v) for k, v in noise_keys.items()}


def _prepare_target(out: Path) -> None:
    """Refuse to overwrite anything that is not a corpus this module wrote."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        foreign = {p.name for p in out.iterdir()} - _OURS
        if foreign:
            raise FileExistsError(f"{out} holds files that are not a synthetic corpus: {sorted(foreign)[:5]}")


def generate_corpus(cfg: CorpusConfig, out_dir: str | Path) -> CorpusSummary:
    """Write the train/eval/classify corpus under ``out_dir`` and return (and save) its summary.

    The corpus is built in a staging folder beside ``out_dir`` and moved into place at the end, so an
    interrupted run never leaves a half-written corpus that looks complete. A previous corpus in
    ``out_dir`` is replaced; a folder holding anything else is refused.
    """
    out = Path(out_dir)
    _prepare_target(out)
    plan = _plan(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        eval_jpegs, n_captions = _write_eval(cfg, stage / "eval", set(plan.eval_source.values()))
        eval_captions = {}
        if plan.eval_source:
            data = json.loads((stage / "eval" / "dataset.json").read_text(encoding="utf-8"))
            eval_captions = {i: data["images"][i]["sentences"][0]["raw"] for i in eval_jpegs}
        n_classify = _write_classify(cfg, stage / "classify")
        noise_keys = _write_train(cfg, stage / "train", plan, eval_jpegs, eval_captions)
        noisy = sum(len(v) for v in noise_keys.values())
        summary = CorpusSummary(
            train_pairs=len(plan.keys),
            clean_pairs=len(plan.keys) - noisy,
            eval_images=cfg.eval_scenes,
            eval_captions=n_captions,
            classify_images=n_classify,
            classes=sorted(SHAPES),
            noise_counts={k: len(v) for k, v in noise_keys.items()},
            noise_keys=noise_keys,
            eval_duplicate_sources={plan.keys[s]: f"images/{i:06d}.jpg" for s, i in sorted(plan.eval_source.items())},
            many_texts_groups=[],
            boilerplate_texts=plan.boilerplate_texts,
            config=cfg.model_dump(mode="json"),
        )
        extra = iter(plan.keys[cfg.num_scenes :])
        for slot in sorted(plan.many_texts):  # same order _write_train consumed the extra keys in
            group = [plan.keys[slot]] + [next(extra) for _ in plan.many_texts[slot][1:]]
            summary.many_texts_groups.append(sorted(group))
        (stage / "corpus_summary.json").write_text(summary.to_json(), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return summary

"""img2dataset / webdataset tar shards: members ``<sample key>.<ext>`` grouped into samples.

We read shards ourselves rather than with ``ray.data.read_webdataset`` so that one truncated or corrupt
shard becomes rejected records instead of a failed job: the samples read before the damage are kept,
the sample the damage hit is rejected as unreadable, and one ``#unreadable`` record says where the
shard broke. Tar members are only ever read as bytes in streaming mode (no extraction, no seeking,
links are never followed), so the same code reads a local file and an ``s3://`` object. Anything
else a shard raises is treated like damage, under ``reader_error``: the samples before it are kept.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from functools import partial

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.sources.common import (
    Verdict,
    check_listed,
    error_verdict,
    filesystem,
    list_source,
    per_file_dataset,
    raw_record,
    relative_id,
    scheme_prefix,
    source_root,
)

IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
CAPTION_EXTENSION = "txt"
JSON_EXTENSION = "json"
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a web image or caption is far smaller; bigger is junk or an attack
# What a damaged shard raises: tarfile wraps most decompression errors in ReadError, not all.
_DAMAGE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


class _StrictTarInfo(tarfile.TarInfo):
    """A tar header reader that treats a missing or garbled header as damage.

    ``tarfile`` silently ends the archive when a header after the first one is cut short, absent or
    fails its checksum, which would drop the rest of a truncated shard without a trace. Only the
    all-zero end-of-archive block ends a shard cleanly.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as err:
            raise tarfile.ReadError(f"bad or missing tar header at byte {tar.offset}: {err}") from None


@dataclass
class _Sample:
    """What one sample key has gathered so far; ``problem`` makes the sample unreadable."""

    image: bytes | None = None
    text: bytes | None = None
    json: bytes | None = None
    problem: str = ""
    cut_off: bool = False  # the damage of a truncated shard hit this sample

    def reject(self, problem: str) -> None:
        self.problem = self.problem or problem


def split_member_name(name: str) -> tuple[str, str] | None:
    """(sample key, lower-case extension) per the webdataset convention, or None for names without one.

    The key is the path up to the first ``.`` of the basename: ``a/b.seg.png`` -> (``a/b``, ``seg.png``).
    Names whose basename has no dot or starts with one (``README``, ``._x.jpg``) belong to no sample,
    as in webdataset itself.
    """
    if name.startswith("./"):
        name = name[2:]
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not stem or not dot or not ext:
        return None
    return posixpath.join(folder, stem), ext.lower()


def _wanted(ext: str) -> bool:
    return ext in IMAGE_EXTENSIONS or ext in (CAPTION_EXTENSION, JSON_EXTENSION)


def _safe_text(text: str) -> str:
    """Tar names are decoded with surrogateescape; lone surrogates would break Arrow's string columns."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _json_caption(data: bytes | None) -> bytes | None:
    """The ``caption`` field of img2dataset's per-sample json; the json is untrusted, so junk is no caption."""
    if not data:
        return None
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):
        return None
    caption = meta.get("caption") if isinstance(meta, dict) else None
    # surrogatepass keeps a lone \ud800 escape visible downstream as a non-UTF-8 caption, not a crash here.
    return caption.encode("utf-8", "surrogatepass") if isinstance(caption, str) else None


def _verdict(sample: _Sample) -> tuple[bytes, Verdict]:
    """The caption bytes to store and what, if anything, is wrong with the sample."""
    caption = sample.text or _json_caption(sample.json)
    if sample.problem:
        return caption or b"", (schema.RULE_UNREADABLE, sample.problem)
    if sample.image is None:
        return caption or b"", (schema.RULE_MISSING_IMAGE, "sample has no image member (jpg/png/webp/...)")
    if not caption:
        return b"", (schema.RULE_MISSING_CAPTION, "sample has no non-empty .txt member nor a json caption")
    return caption, None


def _member_problem(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"tar member {_safe_text(member.name)!r} is a link; links are never followed"
    if not member.isfile():
        return f"tar member {_safe_text(member.name)!r} is not a regular file"
    if member.size > MAX_MEMBER_BYTES:
        return f"tar member {_safe_text(member.name)!r} too large: {member.size} bytes > {MAX_MEMBER_BYTES}"
    return ""


def _store(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, sample: _Sample) -> None:
    """Read the member's bytes into the sample's slot, unless that slot is already filled."""
    if ext in IMAGE_EXTENSIONS:
        slot = "image"
    elif ext == CAPTION_EXTENSION:
        slot = "text"
    else:
        slot = "json"
    if getattr(sample, slot) is not None:
        return
    handle = tar.extractfile(member)
    setattr(sample, slot, handle.read() if handle is not None else b"")


def _scan(tar: tarfile.TarFile, samples: dict[str, _Sample]) -> None:
    """Group the shard's members into ``samples``; on damage, mark the sample it hit and re-raise.

    Members of one sample are adjacent in webdataset, but any order within a shard groups correctly.
    """
    last: tuple[str, str] | None = None  # (sample key, member name) of the last member seen
    reading = False
    try:
        for member in tar:
            if member.isdir():
                continue
            parts = split_member_name(member.name)
            if parts is None:
                continue
            key, ext = parts
            sample = samples.setdefault(key, _Sample())
            last = key, member.name
            if not _wanted(ext):
                continue
            problem = _member_problem(member)
            if problem:
                sample.reject(problem)
                continue
            reading = True
            _store(tar, member, ext, sample)
            reading = False
    except Exception:  # damage (or anything else the stream raised): mark the sample it hit, re-raise
        if last is not None:
            _mark_cut_off(samples[last[0]], _safe_text(last[1]), reading)
        raise


def _mark_cut_off(sample: _Sample, member_name: str, while_reading: bool) -> None:
    """The sample the damage hit: rejected if its data was cut, or if it may have lost members.

    A sample that already has an image and a caption when the damage hits the next header is intact.
    """
    if while_reading:
        sample.cut_off = True
        sample.problem = f"shard truncated or corrupt while reading member {member_name!r}"
    elif not sample.problem and (sample.image is None or not (sample.text or _json_caption(sample.json))):
        sample.cut_off = True
        sample.problem = f"sample may be incomplete: shard truncated or corrupt after member {member_name!r}"


def read_shard(path: str, source: SourceConfig, root: str = "") -> list[dict]:
    """Raw records of one tar shard (``path`` inside the source's filesystem): one per sample, plus one
    ``#unreadable`` record if the shard is truncated or corrupt. Never raises for a damaged shard.
    """
    fs, _ = filesystem(source.path)
    shard_id = relative_id(path, root or source_root(source.path))
    prefix = scheme_prefix(source.path)
    shard_record = partial(raw_record, f"{source.name}/{shard_id}#unreadable", source.name, f"{prefix}{path}")
    verdict = check_listed(source.path, root or source_root(source.path), path)
    if verdict is not None:
        return [shard_record(verdict=verdict)]
    samples: dict[str, _Sample] = {}
    damage: Exception | None = None
    try:
        with fs.open_input_stream(path) as stream:
            with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tar:
                _scan(tar, samples)
    except Exception as err:  # noqa: BLE001 - damage, or an error tarfile does not wrap: see below
        damage = err
    records = []
    for key, sample in samples.items():
        name = _safe_text(key)
        locator = f"{prefix}{path}#{name}"
        try:
            caption, verdict = _verdict(sample)
        except Exception as err:  # noqa: BLE001 - one sample's problem; see common.error_verdict
            caption, verdict = b"", error_verdict(err, locator)
        image = sample.image if verdict is None else b""  # rejected here: downstream never decodes it
        records.append(raw_record(f"{source.name}/{shard_id}/{name}", source.name, locator, image, caption, verdict))
    if damage is not None:
        complete = sum(1 for s in samples.values() if not s.cut_off)
        if isinstance(damage, _DAMAGE_ERRORS):
            detail = f"shard truncated or corrupt after {complete} samples: {type(damage).__name__}: {damage}"
            verdict = schema.RULE_UNREADABLE, detail[:300]
        else:
            verdict = error_verdict(damage, f"reading the shard after {complete} samples")
        records.append(shard_record(verdict=verdict))
    return records


def read(source: SourceConfig, cfg: FilterConfig | None = None):
    """A Ray dataset of raw records: one task per shard, so a damaged shard costs only itself."""
    root = source_root(source.path)
    listing = list_source(source.path, {".tar"}, source.max_files)
    reader = partial(read_shard, source=source, root=root)
    return per_file_dataset(listing, reader, source.name, source.path, root, files_per_block=1)

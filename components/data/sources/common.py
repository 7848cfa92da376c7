"""What every source reader shares: file listing and reading through pyarrow's filesystem layer (so a
local folder and ``s3://`` read the same way), confinement of paths to the corpus root, and the raw
record every reader yields (``schema.RAW_COLUMNS``).

Readers list files on the driver (metadata only) and read them inside Ray Data tasks, one file per
row of a ``from_items`` dataset, so decoding work spreads over the cluster.

Nothing a corpus holds may stop an ingest: a local listing never walks a directory link (it becomes a
refused record), every file a reader opens is checked for links leading out of its root, and an
exception one file or record raises becomes a rejected record naming it (``error_verdict``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from components.data import schema

log = logging.getLogger(__name__)

Verdict = tuple[str, str] | None


class SourceConfigError(ValueError):
    """A source that does not match its configuration (e.g. a table without the configured column).

    The one exception readers let through: it is the operator's mistake, not a hostile record, and it
    would otherwise reject every row.
    """


def error_verdict(err: Exception, what: str) -> tuple[str, str]:
    """A reject for an exception one record or file raised: its type and message, under a rule of its own
    (``schema.RULE_READER_ERROR``), so a reader bug shows in the rejects and counts, never as a lost row."""
    log.warning("%s raised %s; rejected as %s", what, type(err).__name__, schema.RULE_READER_ERROR, exc_info=err)
    return schema.RULE_READER_ERROR, f"{what}: {type(err).__name__}: {err}"[:300]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path inside it (S3 endpoint/credentials from the AWS chain)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def scheme_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if "://" in uri else ""


@dataclass
class Listing:
    """What a source folder holds: the files to read, and what was refused without being walked."""

    files: list[str]
    # (path, key suffix, verdict): "#link" for a directory link, "#unreadable" for a folder not listed
    refused: list[tuple[str, str, tuple[str, str]]] = field(default_factory=list)


def _walk_local(root: str) -> tuple[list[str], list[tuple[str, str, tuple[str, str]]]]:
    """Every non-directory under ``root``, without following directory links (they loop, or lead out).

    File links and special files are listed: ``check_path`` refuses the bad ones when they are read,
    with the record they belong to. A linked directory or one that cannot be listed is refused here.
    """
    files, refused = [], []
    real_root = os.path.realpath(root)
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif entry.is_symlink() and entry.is_dir():
                        refused.append((entry.path, "#link", _directory_link_verdict(real_root, entry.path)))
                    else:
                        files.append(entry.path)
        except OSError as err:
            detail = f"cannot list folder: {type(err).__name__}: {err}"[:300]
            refused.append((folder, "#unreadable", (schema.RULE_UNREADABLE, detail)))
    return files, refused


def _directory_link_verdict(real_root: str, path: str) -> tuple[str, str]:
    target = os.path.realpath(path)
    if not _inside(real_root, target):
        return schema.RULE_OUTSIDE_ROOT, f"{path} is a directory link leading outside the corpus root; not walked"
    return schema.RULE_UNSAFE_FILE, f"{path} is a directory link; linked directories are never walked (links can loop)"


def list_source(uri: str, suffixes: Iterable[str], max_files: int = 0) -> Listing:
    """The files under ``uri`` whose suffix is in ``suffixes`` (sorted paths inside the filesystem), and
    the directory links and unlistable folders a local listing refused (each becomes one record).

    ``uri`` may also name one file. Sorting makes keys and ``max_files`` subsets reproducible.
    """
    fs, root = filesystem(uri)
    wanted = {s.lower() for s in suffixes}
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"source path {uri} does not exist")
    refused: list[tuple[str, str, tuple[str, str]]] = []
    if info.type != pafs.FileType.Directory:
        candidates = [root]
    elif isinstance(fs, pafs.LocalFileSystem):
        candidates, refused = _walk_local(root)
    else:  # object stores have no links
        selector = pafs.FileSelector(root, recursive=True)
        candidates = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    paths = sorted(p for p in candidates if posixpath.splitext(p)[1].lower() in wanted)
    return Listing(paths[:max_files] if max_files > 0 else paths, sorted(refused))


def list_files(uri: str, suffixes: Iterable[str], max_files: int = 0) -> list[str]:
    """The files ``list_source`` finds (for callers that read a few files themselves, e.g. the holdout)."""
    return list_source(uri, suffixes, max_files).files


def refused_records(source_name: str, uri: str, listing: Listing) -> list[dict]:
    """One rejected record per entry the listing refused; keys keep the full name (``loop#link``)."""
    _, root = filesystem(uri)
    prefix = scheme_prefix(uri)
    return [
        raw_record(f"{source_name}/{posixpath.relpath(path, root)}{suffix}", source_name, prefix + path, verdict=verdict)
        for path, suffix, verdict in listing.refused
    ]


def source_root(uri: str) -> str:
    """The folder that confines a source's relative paths: the source itself, or a file's folder."""
    fs, path = filesystem(uri)
    return path if fs.get_file_info(path).type == pafs.FileType.Directory else posixpath.dirname(path)


def confinement_root(source_path: str, root: str = "") -> str:
    """The folder a source's relative image references must stay in: ``root`` if set, else the source's."""
    return filesystem(root)[1] if root else source_root(source_path)


def relative_id(path: str, root: str) -> str:
    """A stable id for ``path`` under ``root``: the relative path without its extension."""
    return posixpath.splitext(posixpath.relpath(path, root))[0]


def confine(root: str, base_dir: str, reference: str) -> tuple[str, Verdict]:
    """Resolve ``reference`` (a relative path) against ``base_dir`` without leaving ``root``.

    Refuses absolute paths, URLs (nothing is ever fetched) and ``..`` escapes with
    ``schema.RULE_OUTSIDE_ROOT``, and a NUL byte (which the OS layer raises on) as unreadable.
    Pure path arithmetic; ``check_path`` adds the on-disk check for local files.
    """
    if not reference:
        return "", (schema.RULE_MISSING_IMAGE, "empty image reference")
    if "\x00" in reference:  # e.g. src="a.png%00.txt": no file has such a name
        return "", (schema.RULE_UNREADABLE, f"image path {reference[:200]!r} contains a NUL byte")
    if "://" in reference or reference.startswith(("/", "\\", "data:", "//")) or ":" in reference.split("/", 1)[0]:
        detail = f"{reference[:200]!r} is absolute or a URL; only paths inside the corpus are read"
        return "", (schema.RULE_OUTSIDE_ROOT, detail)
    resolved = posixpath.normpath(posixpath.join(base_dir, reference.replace("\\", "/")))
    root = posixpath.normpath(root)
    if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
        return "", (schema.RULE_OUTSIDE_ROOT, f"{reference[:200]!r} resolves outside the corpus root {root}")
    return resolved, None


def _inside(real_root: str, real: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_path(fs: pafs.FileSystem, root: str, path: str) -> Verdict:
    """Why ``path`` must not be read, or None: a NUL byte, or on a local disk a link (file or folder on
    the way) leading out of ``root``, or something that is not a regular file (a FIFO would block the
    reader, a device never end). S3 has neither links nor special files."""
    if "\x00" in path:
        return schema.RULE_UNREADABLE, f"path {path[:200]!r} contains a NUL byte"
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    if not _inside(os.path.realpath(root), os.path.realpath(path)):
        return schema.RULE_OUTSIDE_ROOT, f"{path} links outside the corpus root {root}"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: reading it says which
    if not stat.S_ISREG(mode):
        return schema.RULE_UNREADABLE, f"{path} is not a regular file; never read"
    return None


def read_bytes(fs: pafs.FileSystem, path: str) -> tuple[bytes, Verdict]:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read(), None
    except FileNotFoundError:
        return b"", (schema.RULE_MISSING_IMAGE, f"{path} does not exist")
    except OSError as err:
        return b"", (schema.RULE_UNREADABLE, f"{type(err).__name__}: {err}"[:300])


def read_confined(fs: pafs.FileSystem, root: str, path: str) -> tuple[bytes, Verdict]:
    """Read ``path`` (resolved by ``confine``, or listed) unless ``check_path`` refuses it."""
    verdict = check_path(fs, root, path)
    if verdict is not None:
        return b"", verdict
    return read_bytes(fs, path)


def check_listed(uri: str, root: str, path: str) -> Verdict:
    """``check_path`` for a file the listing found; a source that names one file is trusted for it."""
    fs, named = filesystem(uri)
    return None if path == named else check_path(fs, root, path)


def raw_record(
    key: str, source: str, locator: str, image: bytes = b"", caption: bytes = b"", verdict: Verdict = None
) -> dict:
    rule, detail = verdict or ("", "")
    return {
        "key": key,
        "source": source,
        "locator": locator,
        "image": image,
        "caption_raw": caption,
        "reject_rule": rule,
        "reject_detail": detail,
    }


def file_error_record(source_name: str, uri: str, id_root: str, path: str, err: Exception) -> dict:
    """The one record of a file whose reading raised outside the per-record isolation (``#error``)."""
    key = f"{source_name}/{relative_id(path, id_root)}#error"
    return raw_record(key, source_name, scheme_prefix(uri) + path, verdict=error_verdict(err, f"reading {path}"))


def read_isolated(
    read_file: Callable[[str], list[dict]], path: str, source_name: str, uri: str, id_root: str
) -> list[dict]:
    """``read_file(path)``; an exception that escapes it costs only that file (one ``#error`` record).
    A ``SourceConfigError`` is the operator's and still fails the job."""
    try:
        return read_file(path)
    except SourceConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - per file, named in the record; see error_verdict
        return [file_error_record(source_name, uri, id_root, path, err)]


def with_refused(dataset, records: list[dict]):
    """``dataset`` plus the listing's refused records (a small in-memory block)."""
    import ray.data

    return dataset.union(ray.data.from_items(records)) if records else dataset


def per_file_dataset(
    listing: Listing,
    read_file: Callable[[str], list[dict]],
    source_name: str,
    uri: str,
    id_root: str,
    files_per_block: int = 16,
):
    """A Ray dataset of raw records: ``read_file(path)`` runs in Ray tasks and yields a file's records.

    Readers isolate their records one by one; an exception that still escapes ``read_file`` costs only
    its file (one ``#error`` record), and the listing's refused entries come out as records too.
    """
    import ray.data

    paths = listing.files
    refused = refused_records(source_name, uri, listing)
    if not paths and not refused:
        raise ValueError("the source lists no files of its format")

    def expand(row: dict) -> list[dict]:
        return read_isolated(read_file, row["path"], source_name, uri, id_root)

    if not paths:
        return ray.data.from_items(refused)
    blocks = max(1, min(len(paths) // files_per_block, 1024)) if len(paths) > files_per_block else 1
    dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks).flat_map(expand)
    return with_refused(dataset, refused)

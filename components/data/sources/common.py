"""What every source reader shares: file listing and reading through pyarrow's filesystem layer (so a
local folder and ``s3://`` read the same way), confinement of paths to the corpus root, and the raw
record every reader yields (``schema.RAW_COLUMNS``).

Readers list files on the driver (metadata only) and read them inside Ray Data tasks, one file per
row of a ``from_items`` dataset, so decoding work spreads over the cluster.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable

import pyarrow.fs as pafs

from components.data import schema

Verdict = tuple[str, str] | None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path inside it (S3 endpoint/credentials from the AWS chain)."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def scheme_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if "://" in uri else ""


def list_files(uri: str, suffixes: Iterable[str], max_files: int = 0) -> list[str]:
    """Sorted paths (inside the filesystem) of the files under ``uri`` whose suffix is in ``suffixes``.

    ``uri`` may also name one file. Sorting makes keys and ``max_files`` subsets reproducible.
    """
    fs, root = filesystem(uri)
    wanted = {s.lower() for s in suffixes}
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"source path {uri} does not exist")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    paths = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and posixpath.splitext(i.path)[1].lower() in wanted
    )
    return paths[:max_files] if max_files > 0 else paths


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
    ``schema.RULE_OUTSIDE_ROOT``. Pure path arithmetic; ``check_local_symlinks`` adds the
    on-disk check for local files.
    """
    if not reference:
        return "", (schema.RULE_MISSING_IMAGE, "empty image reference")
    if "://" in reference or reference.startswith(("/", "\\", "data:", "//")) or ":" in reference.split("/", 1)[0]:
        return "", (schema.RULE_OUTSIDE_ROOT, f"{reference[:200]!r} is absolute or a URL; only paths inside the corpus are read")
    resolved = posixpath.normpath(posixpath.join(base_dir, reference.replace("\\", "/")))
    root = posixpath.normpath(root)
    if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
        return "", (schema.RULE_OUTSIDE_ROOT, f"{reference[:200]!r} resolves outside the corpus root {root}")
    return resolved, None


def check_local_symlinks(fs: pafs.FileSystem, root: str, path: str) -> Verdict:
    """On a local disk a symlink inside the root may still point out of it; S3 has no symlinks."""
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return schema.RULE_OUTSIDE_ROOT, f"{path} links outside the corpus root {root}"
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
    """Read ``path`` (already resolved by ``confine``) unless a local symlink leads out of ``root``."""
    verdict = check_local_symlinks(fs, root, path)
    if verdict is not None:
        return b"", verdict
    return read_bytes(fs, path)


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


def per_file_dataset(paths: list[str], read_file: Callable[[str], list[dict]], files_per_block: int = 16):
    """A Ray dataset of raw records: ``read_file(path)`` runs in Ray tasks and yields a file's records."""
    import ray.data

    if not paths:
        raise ValueError("the source lists no files of its format")
    blocks = max(1, min(len(paths) // files_per_block, 1024)) if len(paths) > files_per_block else 1

    def expand(row: dict) -> list[dict]:
        return read_file(row["path"])

    return ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks).flat_map(expand)

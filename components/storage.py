"""Small URI helpers so every stage reads/writes a local path or ``s3://`` the same way."""

from __future__ import annotations

import json
import uuid

import pyarrow.fs as pafs


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_json(uri: str, payload: dict) -> None:
    write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> dict:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def list_names(uri: str) -> list[str]:
    """Names of the entries directly under ``uri`` (sorted); empty when it does not exist."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))


def read_text(uri: str) -> str:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Publish ``data`` at ``uri`` whole or not at all: a reader never sees a torn file.

    A crash part-way through an in-place write left a half manifest or stage record that failed
    every later run. Locally the bytes go to a temporary name beside the target and are renamed over
    it (atomic on POSIX); an S3 object only appears when its upload completes.
    """
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if fs.type_name != "local":
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(temporary) as stream:
            stream.write(data)
        fs.move(temporary, path)
    except BaseException:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)
        raise


def remove_tree(uri: str) -> bool:
    """Delete the folder (or S3 prefix) at ``uri`` and everything in it; False if there was none."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    fs.delete_dir(path)
    return True


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()

"""Outputs other stages read are published whole: a writer that fails or dies part-way leaves the old file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow.fs as pafs
import pytest

from components import storage


class _DyingStream:
    """Writes half of what it is given, then fails the way ``die`` says."""

    def __init__(self, stream, die):
        self.stream, self.die = stream, die

    def write(self, data):
        self.stream.write(data[: len(data) // 2])
        self.die()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()


class _DyingLocalFs:
    """A local filesystem whose output streams fail part-way through a write."""

    type_name = "local"

    def __init__(self, die):
        self.fs, self.die = pafs.LocalFileSystem(), die

    def open_output_stream(self, path):
        return _DyingStream(self.fs.open_output_stream(path), self.die)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def _fail():
    raise OSError("disk went away")


def test_a_write_that_fails_part_way_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "stage" / "manifest.json"
    storage.write_json(str(target), {"rows": 1})
    monkeypatch.setattr(storage, "_fs", lambda uri: (_DyingLocalFs(_fail), uri))
    with pytest.raises(OSError, match="disk went away"):
        storage.write_json(str(target), {"rows": 2, "padding": "x" * 10_000})
    assert json.loads(target.read_text()) == {"rows": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"], "no temporary file is left"


def test_a_writer_killed_part_way_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "record.json"
    target.write_text(json.dumps({"version": "old"}))
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from components import storage
        from tests.unit.test_storage import _DyingLocalFs
        storage._fs = lambda uri: (_DyingLocalFs(lambda: os.kill(os.getpid(), signal.SIGKILL)), uri)
        storage.write_json({str(target)!r}, {{"version": "new", "padding": "x" * 100000}})
        """
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert json.loads(target.read_text()) == {"version": "old"}, "a reader would have seen a torn file"


def test_remove_tree_reports_whether_there_was_anything(tmp_path):
    (tmp_path / "index" / "items").mkdir(parents=True)
    (tmp_path / "index" / "items" / "part-0.parquet").write_bytes(b"left over")
    assert storage.remove_tree(str(tmp_path / "index")) is True
    assert not (tmp_path / "index").exists()
    assert storage.remove_tree(str(tmp_path / "index")) is False

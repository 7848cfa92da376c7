"""A labelled image table (CSV or Parquet) read as a classification suite.

Many public classification sets are distributed as one table of (image, label) rather than an
ImageFolder tree. Images stay where they are: a path is resolved under the table's folder (never outside
it) and embedded bytes are returned as they are, to be decoded one batch at a time by the evaluator.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from components.data.eval_sets import safe_relative

TABLE_SUFFIXES = (".csv", ".parquet")
_INTEGER = re.compile(r"[+-]?\d+")


def _where(path: Path, row: int, column: str) -> str:
    return f"{path}, row {row}, column {column!r}"


def _csv_columns(path: Path, image_column: str, label_column: str) -> tuple[list[object], list[object]]:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for column in (image_column, label_column):
            if column not in header:
                raise ValueError(f"{path} has no column {column!r} (columns: {', '.join(header) or 'none'})")
        images: list[object] = []
        labels: list[object] = []
        for row in reader:
            images.append(row[image_column])
            labels.append(row[label_column])
    # CSV has no types: a label column that is all integer literals is read as integer ids.
    if labels and all(isinstance(v, str) and _INTEGER.fullmatch(v.strip()) for v in labels):
        labels = [int(v) for v in labels]
    return images, labels


def _parquet_columns(path: Path, image_column: str, label_column: str) -> tuple[list[object], list[object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from exc
    schema = parquet.schema_arrow
    for column in (image_column, label_column):
        if column not in schema.names:
            raise ValueError(f"{path} has no column {column!r} (columns: {', '.join(schema.names) or 'none'})")
    label_type = schema.field(label_column).type
    if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)):
        raise ValueError(f"{path}: label column {label_column!r} must hold integers or strings, not {label_type}")
    table = parquet.read(columns=[image_column, label_column])
    return table.column(image_column).to_pylist(), table.column(label_column).to_pylist()


def _image_reference(value: object, root: Path, where: str) -> Path | bytes:
    """Bytes stay bytes; a string (or a Hugging Face ``{"bytes", "path"}`` struct) is a path under ``root``."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise ValueError(f"{where}: empty image bytes")
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected image bytes or a relative path, got {value!r}")
    try:
        return safe_relative(root, value.strip())
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def read_labelled_table(
    path: str | Path, image_column: str = "image", label_column: str = "label"
) -> tuple[list[Path | bytes], np.ndarray, list[str]]:
    """Read ``(images, labels int64, class_names)`` from a ``.csv`` or ``.parquet`` table.

    String labels become class names in sorted order and ``labels`` index into them. Integer labels are
    ids: ``class_names`` are the distinct ids as strings in numeric order, so ids ``0..C-1`` keep their
    value and a caller can swap in display names by position.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported table type {suffix!r}; expected one of {', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"labelled table not found: {path}")
    reader = _csv_columns if suffix == ".csv" else _parquet_columns
    raw_images, raw_labels = reader(path, image_column, label_column)
    if not raw_images:
        raise ValueError(f"{path} has no rows")

    root = path.parent
    images = [_image_reference(v, root, _where(path, n, image_column)) for n, v in enumerate(raw_images, start=1)]
    for row, value in enumerate(raw_labels, start=1):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{_where(path, row, label_column)}: empty label")
    if all(isinstance(v, int) for v in raw_labels):
        ids = sorted(set(raw_labels))
        class_names = [str(i) for i in ids]
        lookup = {value: index for index, value in enumerate(ids)}
    else:
        keys = [str(v).strip() for v in raw_labels]
        raw_labels = keys
        class_names = sorted(set(keys))
        lookup = {name: index for index, name in enumerate(class_names)}
    labels = np.asarray([lookup[v] for v in raw_labels], dtype=np.int64)
    return images, labels, class_names

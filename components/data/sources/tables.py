"""Tables of pairs: CSV/TSV/Parquet files of (image path, caption), and img2dataset's parquet output.

Both are "one row, one candidate pair", so both live here behind one ``read`` entry point. Every row
becomes a record (a bad row is a rejected record, never a skipped one); a file that cannot be parsed
becomes one unreadable record; a table without the configured columns is a configuration error and
fails the job at once rather than rejecting every row.

Image paths in a ``table`` are untrusted: they are resolved against the table's folder and confined
to the corpus root (no absolute paths, URLs, ``..`` escapes, NUL bytes or links leading out), and
nothing is ever fetched. Rows are isolated: an exception one row raises rejects that row only.
"""

from __future__ import annotations

import posixpath
from functools import partial

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.config import FilterConfig, SourceConfig
from components.data import schema
from components.data.sources.common import (
    SourceConfigError,
    Verdict,
    check_listed,
    confine,
    confinement_root,
    error_verdict,
    filesystem,
    list_source,
    per_file_dataset,
    raw_record,
    read_confined,
    relative_id,
    scheme_prefix,
    source_root,
)

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
IMG2DATASET_IMAGE_COLUMNS = ("jpg", "png", "webp")  # one of them, per img2dataset's --encode_format
IMG2DATASET_CAPTION_COLUMN = "caption"
# What an unparseable file raises (ArrowInvalid is also a ValueError; our config errors are not Arrow's).
_FILE_ERRORS = (OSError, EOFError, pa.ArrowException)


def _as_bytes(value: object) -> bytes | None:
    """A cell as bytes (captions are checked for UTF-8 downstream); None for null."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _require_columns(path: str, names: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SourceConfigError(f"table {path} has no column {', '.join(map(repr, missing))}; its columns are {names}")


def _unreadable(
    source: SourceConfig, file_id: str, locator: str, err: Exception | None, verdict: Verdict = None
) -> dict:
    """The one record of a table file that is not read: refused (``verdict``) or unparseable (``err``)."""
    verdict = verdict or (schema.RULE_UNREADABLE, f"cannot parse {locator}: {type(err).__name__}: {err}"[:300])
    return raw_record(f"{source.name}/{file_id}#unreadable", source.name, locator, verdict=verdict)


# --- table: (image path, caption) rows ---------------------------------------------------------


def _csv_columns(fs: pafs.FileSystem, path: str, delimiter: str, wanted: list[str]) -> dict[str, list]:
    """The ``wanted`` columns of a CSV/TSV file as bytes, empty strings kept (not nulls)."""
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    # The header first, so a missing column is reported as such and not as a parse error.
    names = pacsv.open_csv(pa.BufferReader(data), parse_options=parse).schema.names
    _require_columns(path, names, wanted)
    # Binary, not string: a non-UTF-8 caption is one rejected row downstream, not an unparseable table.
    convert = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.binary() for c in wanted})
    table = pacsv.read_csv(pa.BufferReader(data), parse_options=parse, convert_options=convert)
    return {c: table.column(c).to_pylist() for c in wanted}


def _parquet_columns(fs: pafs.FileSystem, path: str, wanted: list[str]) -> dict[str, list]:
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        _require_columns(path, parquet.schema_arrow.names, wanted)
        table = parquet.read(columns=wanted)
    return {c: table.column(c).to_pylist() for c in wanted}


def _read_columns(fs: pafs.FileSystem, path: str, wanted: list[str]) -> dict[str, list]:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix == ".parquet":
        return _parquet_columns(fs, path, wanted)
    return _csv_columns(fs, path, _DELIMITERS[suffix], wanted)


def _load_image(fs: pafs.FileSystem, root: str, table_dir: str, reference: bytes) -> tuple[bytes, Verdict]:
    """The bytes of the image a row names, or why it cannot be read (never leaves ``root``)."""
    try:
        text = reference.decode("utf-8").strip()
    except UnicodeDecodeError:
        return b"", (schema.RULE_UNREADABLE, f"image path {reference[:200]!r} is not UTF-8")
    resolved, verdict = confine(root, table_dir, text)
    if verdict is not None:
        return b"", verdict
    return read_confined(fs, root, resolved)


def _table_row(
    fs: pafs.FileSystem, root: str, table_dir: str, reference: bytes | None, caption: bytes | None
) -> tuple[bytes, Verdict]:
    if not reference or not reference.strip():
        return b"", (schema.RULE_MISSING_IMAGE, "the row has no image path")
    if not caption:
        return b"", (schema.RULE_MISSING_CAPTION, "the row has no caption")
    return _load_image(fs, root, table_dir, reference)


def read_table_file(path: str, source: SourceConfig, root: str, id_root: str = "") -> list[dict]:
    """Raw records of one CSV/TSV/Parquet table: one per data row (0-based ``row=`` in the locator).

    ``root`` is the filesystem path image paths must stay inside; ``id_root`` (default: the source's
    folder) is what the table's id in the keys is relative to. The table and all its images are read
    in one task: fine for tables of thousands of rows; split bigger tables into several files.
    Raises SourceConfigError (a ValueError) if the table lacks the configured image or caption column.
    """
    fs, _ = filesystem(source.path)
    table_id = relative_id(path, id_root or source_root(source.path))
    prefix = scheme_prefix(source.path)
    wanted = [source.image_column, source.caption_column]
    verdict = check_listed(source.path, root, path)
    if verdict is not None:
        return [_unreadable(source, table_id, prefix + path, None, verdict)]
    try:
        columns = _read_columns(fs, path, wanted)
    except _FILE_ERRORS as err:
        return [_unreadable(source, table_id, prefix + path, err)]
    table_dir = posixpath.dirname(path)
    records = []
    for row, (reference, caption) in enumerate(zip(*(columns[c] for c in wanted), strict=True)):
        locator = f"{prefix}{path}#row={row}"
        try:
            caption = _as_bytes(caption) or b""
            image, verdict = _table_row(fs, root, table_dir, _as_bytes(reference), caption)
        except Exception as err:  # noqa: BLE001 - one row's problem; see common.error_verdict
            image, caption, verdict = b"", b"", error_verdict(err, locator)
        records.append(raw_record(f"{source.name}/{table_id}/{row}", source.name, locator, image, caption, verdict))
    return records


# --- img2dataset_parquet: image bytes inside ---------------------------------------------------


def _img2dataset_columns(path: str, names: list[str]) -> list[str]:
    """The columns to read: image (whichever encode format was used), caption, and the optional ones."""
    image = next((c for c in IMG2DATASET_IMAGE_COLUMNS if c in names), None)
    if image is None:
        raise SourceConfigError(
            f"img2dataset shard {path} has no image column (one of {list(IMG2DATASET_IMAGE_COLUMNS)}); "
            f"its columns are {names}"
        )
    _require_columns(path, names, [IMG2DATASET_CAPTION_COLUMN])
    optional = [c for c in ("key", "url", "status", "error_message") if c in names]
    return [image, IMG2DATASET_CAPTION_COLUMN, *optional]


def _img2dataset_verdict(row: dict, image: bytes | None, caption: bytes | None) -> Verdict:
    status = row.get("status")
    where = f"(url {str(row.get('url'))[:200]})"
    if status is not None and status != "success":
        error = str(row.get("error_message"))[:200]
        return schema.RULE_MISSING_IMAGE, f"download status {status!r}: {error} {where}"
    if not image:
        return schema.RULE_MISSING_IMAGE, f"no image bytes (status {status!r}) {where}"
    if not caption:
        return schema.RULE_MISSING_CAPTION, f"the row has no caption {where}"
    return None


def read_img2dataset_file(path: str, source: SourceConfig, root: str = "") -> list[dict]:
    """Raw records of one img2dataset ``--output_format parquet`` shard: one per row, failed downloads
    included (rejected as missing_image with img2dataset's status and error).

    Raises SourceConfigError (a ValueError) if the shard has no image or caption column (img2dataset run
    without a caption).
    """
    fs, _ = filesystem(source.path)
    shard_id = relative_id(path, root or source_root(source.path))
    prefix = scheme_prefix(source.path)
    verdict = check_listed(source.path, root or source_root(source.path), path)
    if verdict is not None:
        return [_unreadable(source, shard_id, prefix + path, None, verdict)]
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            wanted = _img2dataset_columns(path, parquet.schema_arrow.names)
            rows = parquet.read(columns=wanted).to_pylist()
    except _FILE_ERRORS as err:
        return [_unreadable(source, shard_id, prefix + path, err)]
    records = []
    for number, row in enumerate(rows):
        row_key = row.get("key")
        name = str(row_key) if row_key not in (None, "") else f"{shard_id}/{number}"
        where = f"key={row_key}" if row_key not in (None, "") else f"row={number}"
        locator = f"{prefix}{path}#{where}"
        try:
            image, caption = _as_bytes(row[wanted[0]]), _as_bytes(row[IMG2DATASET_CAPTION_COLUMN]) or b""
            verdict = _img2dataset_verdict(row, image, caption)
        except Exception as err:  # noqa: BLE001 - one row's problem; see common.error_verdict
            image, caption, verdict = b"", b"", error_verdict(err, locator)
        image = image if verdict is None else b""
        records.append(raw_record(f"{source.name}/{name}", source.name, locator, image, caption, verdict))
    return records


# --- entry point ---------------------------------------------------------------------------------


def read(source: SourceConfig, cfg: FilterConfig | None = None):
    """A Ray dataset of raw records for a ``table`` or ``img2dataset_parquet`` source, one task per file."""
    id_root = source_root(source.path)
    if source.format == "img2dataset_parquet":
        listing = list_source(source.path, {".parquet"}, source.max_files)
        reader = partial(read_img2dataset_file, source=source, root=id_root)
    elif source.format == "table":
        listing = list_source(source.path, TABLE_SUFFIXES, source.max_files)
        root = confinement_root(source.path, source.root)
        reader = partial(read_table_file, source=source, root=root, id_root=id_root)
    else:
        raise ValueError(f"source {source.name}: the tables reader cannot read format {source.format!r}")
    return per_file_dataset(listing, reader, source.name, source.path, id_root, files_per_block=1)

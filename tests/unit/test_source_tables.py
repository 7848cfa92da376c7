"""Readers of tar shards and tables: every candidate pair is a record, every problem a reject reason.

Fixtures are generated in ``tmp_path``; the per-file functions are called directly, so no Ray.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.config import SourceConfig
from components.data import schema
from components.data.sources import tables, webdataset
from components.data.sources.common import confinement_root
from components.data.sources.tables import read_img2dataset_file, read_table_file
from components.data.sources.webdataset import read_shard, split_member_name


def image_bytes(fmt: str = "JPEG", color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


JPG = image_bytes("JPEG")
PNG = image_bytes("PNG", (10, 200, 10))


def check_records(records: list[dict]) -> None:
    for record in records:
        assert list(record) == schema.RAW_COLUMNS
        for column in ("key", "source", "locator", "reject_rule", "reject_detail"):
            assert isinstance(record[column], str), column
        assert isinstance(record["image"], bytes) and isinstance(record["caption_raw"], bytes)
        assert record["reject_rule"] in ("", *schema.ALL_RULES)
        assert bool(record["reject_rule"]) == bool(record["reject_detail"])


def by_key(records: list[dict]) -> dict[str, dict]:
    check_records(records)
    keyed = {r["key"]: r for r in records}
    assert len(keyed) == len(records), "keys must be unique"
    return keyed


# --- webdataset tar shards -----------------------------------------------------------------------


def tar_bytes(members: list[tuple[str, bytes] | tarfile.TarInfo]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def write_shard(tmp_path, data: bytes, name: str = "00000.tar") -> tuple[str, SourceConfig]:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), SourceConfig(name="wds", format="webdataset", path=str(tmp_path))


THREE_SAMPLES = [
    ("000000000.jpg", JPG),
    ("000000000.txt", b"a red square"),
    ("000000001.png", PNG),
    ("000000001.json", json.dumps({"caption": "a green square", "url": "http://x"}).encode()),
    ("000000002.jpg", JPG),
    ("000000002.json", json.dumps({"caption": None}).encode()),
]


def test_webdataset_three_samples(tmp_path):
    path, source = write_shard(tmp_path, tar_bytes(THREE_SAMPLES))
    records = read_shard(path, source)
    assert [r["key"] for r in records] == ["wds/00000/000000000", "wds/00000/000000001", "wds/00000/000000002"]
    first, second, third = records
    check_records(records)
    assert (first["image"], first["caption_raw"], first["reject_rule"]) == (JPG, b"a red square", "")
    assert first["locator"] == f"{path}#000000000" and first["source"] == "wds"
    assert (second["image"], second["caption_raw"], second["reject_rule"]) == (PNG, b"a green square", "")
    assert third["reject_rule"] == schema.RULE_MISSING_CAPTION


def test_webdataset_member_names_split_at_first_dot_of_basename():
    assert split_member_name("a/b.seg.png") == ("a/b", "seg.png")
    assert split_member_name("./000001.JPG") == ("000001", "jpg")
    assert split_member_name("v1.0/x.txt") == ("v1.0/x", "txt")
    assert split_member_name("README") is None
    assert split_member_name("dir/._x.jpg") is None


def test_webdataset_dotted_extension_groups_with_its_sample(tmp_path):
    members = [("part/s1.seg.png", PNG), ("part/s1.jpg", JPG), ("part/s1.txt", b"caption"), ("part/s2.JPEG", JPG)]
    path, source = write_shard(tmp_path, tar_bytes(members))
    records = by_key(read_shard(path, source))
    assert set(records) == {"wds/00000/part/s1", "wds/00000/part/s2"}
    s1 = records["wds/00000/part/s1"]
    assert (s1["image"], s1["caption_raw"], s1["reject_rule"]) == (JPG, b"caption", "")
    assert records["wds/00000/part/s2"]["reject_rule"] == schema.RULE_MISSING_CAPTION


def test_webdataset_any_member_order_and_missing_image(tmp_path):
    members = [("b.txt", b"caption b"), ("a.txt", b"caption a"), ("b.webp", JPG), ("c.txt", b"only text")]
    path, source = write_shard(tmp_path, tar_bytes(members))
    records = by_key(read_shard(path, source))
    assert records["wds/00000/b"]["image"] == JPG and records["wds/00000/b"]["reject_rule"] == ""
    assert records["wds/00000/a"]["reject_rule"] == schema.RULE_MISSING_IMAGE
    assert records["wds/00000/c"]["reject_rule"] == schema.RULE_MISSING_IMAGE
    assert records["wds/00000/c"]["caption_raw"] == b"only text"  # kept so the rejects table shows it


def test_webdataset_caption_bytes_pass_through_unchanged(tmp_path):
    raw = b"caf\xe9 \xff\xfe not utf-8"
    path, source = write_shard(tmp_path, tar_bytes([("x.jpg", JPG), ("x.txt", raw)]))
    (record,) = read_shard(path, source)
    assert record["caption_raw"] == raw and record["reject_rule"] == ""


def test_webdataset_untrusted_json_is_no_caption(tmp_path):
    members = [("a.jpg", JPG), ("a.json", b"{not json"), ("b.jpg", JPG), ("b.json", b"[1, 2]"),
               ("c.jpg", JPG), ("c.json", b'{"caption": 12}'), ("d.jpg", JPG), ("d.txt", b""),
               ("d.json", b'{"caption": "from json"}')]
    path, source = write_shard(tmp_path, tar_bytes(members))
    records = by_key(read_shard(path, source))
    for name in "abc":
        assert records[f"wds/00000/{name}"]["reject_rule"] == schema.RULE_MISSING_CAPTION
    assert records["wds/00000/d"]["caption_raw"] == b"from json"  # an empty .txt falls back to the json


def test_webdataset_links_and_special_members_are_unreadable(tmp_path):
    directory = tarfile.TarInfo("folder")
    directory.type = tarfile.DIRTYPE
    members = [directory, link("a.jpg", "/etc/passwd"), ("a.txt", b"a"),
               ("b.jpg", JPG), link("b.txt", "b.jpg", tarfile.LNKTYPE), link("c.jpg", "b.jpg", tarfile.LNKTYPE),
               ("c.txt", b"c"), link("d.npy", "/etc/passwd"), ("d.jpg", JPG), ("d.txt", b"d")]
    path, source = write_shard(tmp_path, tar_bytes(members))
    records = by_key(read_shard(path, source))
    assert set(records) == {"wds/00000/a", "wds/00000/b", "wds/00000/c", "wds/00000/d"}
    for name in "abc":
        record = records[f"wds/00000/{name}"]
        assert record["reject_rule"] == schema.RULE_UNREADABLE and "is a link" in record["reject_detail"]
        assert record["image"] == b""
    assert records["wds/00000/d"]["reject_rule"] == ""  # a link in a member we never read changes nothing


def test_webdataset_oversized_member_is_unreadable(tmp_path, monkeypatch):
    monkeypatch.setattr(webdataset, "MAX_MEMBER_BYTES", 100)
    path, source = write_shard(tmp_path, tar_bytes([("a.jpg", JPG), ("a.txt", b"a"), ("b.txt", b"b" * 200)]))
    records = by_key(read_shard(path, source))
    assert "too large" in records["wds/00000/a"]["reject_detail"]
    assert "too large" in records["wds/00000/b"]["reject_detail"]


def member_offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """name -> (header offset, data offset) in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def test_webdataset_truncated_inside_member_data(tmp_path):
    data = tar_bytes(THREE_SAMPLES)
    _, data_offset = member_offsets(data)["000000002.jpg"]
    path, source = write_shard(tmp_path, data[: data_offset + len(JPG) // 2])
    records = by_key(read_shard(path, source))  # nothing raised
    assert records["wds/00000/000000000"]["reject_rule"] == ""
    assert records["wds/00000/000000001"]["reject_rule"] == ""
    cut = records["wds/00000/000000002"]
    assert cut["reject_rule"] == schema.RULE_UNREADABLE and "000000002.jpg" in cut["reject_detail"]
    shard = records["wds/00000#unreadable"]
    assert shard["reject_rule"] == schema.RULE_UNREADABLE
    assert shard["reject_detail"].startswith("shard truncated or corrupt after 2 samples")
    assert shard["locator"] == path and len(records) == 4


def test_webdataset_truncated_inside_a_header(tmp_path):
    data = tar_bytes(THREE_SAMPLES)
    header_offset, _ = member_offsets(data)["000000002.json"]
    path, source = write_shard(tmp_path, data[: header_offset + 100])
    records = by_key(read_shard(path, source))
    # The image was read, but its caption may have been cut off: unreadable, not missing_caption.
    assert records["wds/00000/000000002"]["reject_rule"] == schema.RULE_UNREADABLE
    assert "after 2 samples" in records["wds/00000#unreadable"]["reject_detail"]


def test_webdataset_truncated_at_a_member_boundary(tmp_path):
    data = tar_bytes(THREE_SAMPLES)
    header_offset, _ = member_offsets(data)["000000002.jpg"]
    path, source = write_shard(tmp_path, data[:header_offset])  # no end-of-archive blocks
    records = by_key(read_shard(path, source))
    assert records["wds/00000/000000001"]["reject_rule"] == ""  # complete samples are intact
    assert "after 2 samples" in records["wds/00000#unreadable"]["reject_detail"]
    assert len(records) == 3


@pytest.mark.parametrize("data", [b"", b"this is not a tar file" * 40])
def test_webdataset_not_a_tar(tmp_path, data):
    path, source = write_shard(tmp_path, data)
    (record,) = read_shard(path, source)
    check_records([record])
    assert record["key"] == "wds/00000#unreadable" and record["reject_rule"] == schema.RULE_UNREADABLE
    assert "after 0 samples" in record["reject_detail"]


def test_webdataset_gzipped_and_truncated_gzip(tmp_path):
    compressed = gzip.compress(tar_bytes(THREE_SAMPLES))
    path, source = write_shard(tmp_path, compressed)
    assert [r["reject_rule"] for r in read_shard(path, source)] == ["", "", schema.RULE_MISSING_CAPTION]
    path, source = write_shard(tmp_path, compressed[: len(compressed) * 2 // 3])
    records = read_shard(path, source)
    check_records(records)
    assert records[-1]["key"] == "wds/00000#unreadable"


def test_webdataset_shard_id_is_relative_to_the_source(tmp_path):
    (tmp_path / "part-1").mkdir()
    path, source = write_shard(tmp_path, tar_bytes([("x.jpg", JPG), ("x.txt", b"x")]), "part-1/00007.tar")
    assert read_shard(path, source)[0]["key"] == "wds/part-1/00007/x"
    single = source.model_copy(update={"path": path})
    assert read_shard(path, single)[0]["key"] == "wds/00007/x"


# --- tables of (image path, caption) --------------------------------------------------------------


@pytest.fixture()
def corpus(tmp_path):
    """``corpus/images/{a.jpg,b.png}``, a file just outside the corpus and a symlink leading to it."""
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(JPG)
    (root / "images" / "b.png").write_bytes(PNG)
    (tmp_path / "outside.jpg").write_bytes(JPG)
    os.symlink(tmp_path / "outside.jpg", root / "images" / "sneaky.jpg")
    return root


def table_source(folder, **update) -> SourceConfig:
    return SourceConfig(name="tbl", format="table", path=str(folder), **update)


def read_table(path, source: SourceConfig) -> dict[str, dict]:
    return by_key(read_table_file(str(path), source, root=confinement_root(source.path, source.root)))


def test_csv_with_quoted_commas_and_newlines(corpus):
    (corpus / "pairs.csv").write_text(
        'image_path,caption,extra\n'
        'images/a.jpg,"a red square, small",1\n'
        'images/b.png,"two\nlines ""quoted""",x\n'
    )
    records = read_table(corpus / "pairs.csv", table_source(corpus))
    first, second = records["tbl/pairs/0"], records["tbl/pairs/1"]
    assert (first["image"], first["caption_raw"], first["reject_rule"]) == (JPG, b"a red square, small", "")
    assert (second["image"], second["caption_raw"]) == (PNG, b'two\nlines "quoted"')
    assert first["locator"] == f"{corpus}/pairs.csv#row=0"


def test_tsv_and_custom_column_names(corpus):
    (corpus / "sub").mkdir()
    (corpus / "sub" / "pairs.tsv").write_bytes(b"url\tcaption_text\n../images/a.jpg\tcaf\xe9, with comma\n")
    source = table_source(corpus, image_column="url", caption_column="caption_text")
    (record,) = read_table(corpus / "sub" / "pairs.tsv", source).values()
    assert record["key"] == "tbl/sub/pairs/0"
    assert record["image"] == JPG and record["caption_raw"] == b"caf\xe9, with comma"  # bytes untouched


def test_parquet_table(corpus):
    frame = pd.DataFrame({"image_path": ["images/a.jpg", "images/b.png", None], "caption": ["one", None, "three"]})
    frame.to_parquet(corpus / "pairs.parquet")
    records = read_table(corpus / "pairs.parquet", table_source(corpus))
    assert records["tbl/pairs/0"]["image"] == JPG and records["tbl/pairs/0"]["reject_rule"] == ""
    assert records["tbl/pairs/1"]["reject_rule"] == schema.RULE_MISSING_CAPTION
    assert records["tbl/pairs/2"]["reject_rule"] == schema.RULE_MISSING_IMAGE


def test_table_paths_outside_the_corpus_and_missing_values(corpus):
    rows = ["../outside.jpg", "/etc/passwd", "http://x/y.jpg", "images/sneaky.jpg", "images/../../outside.jpg",
            "images/nope.jpg", "", "images/a.jpg", "  images/a.jpg  "]
    captions = ["c"] * 7 + ["", "None"]
    pd.DataFrame({"image_path": rows, "caption": captions}).to_csv(corpus / "bad.csv", index=False)
    records = read_table(corpus / "bad.csv", table_source(corpus))
    rules = [records[f"tbl/bad/{i}"]["reject_rule"] for i in range(len(rows))]
    assert rules == [schema.RULE_OUTSIDE_ROOT] * 5 + [schema.RULE_MISSING_IMAGE] * 2 + [schema.RULE_MISSING_CAPTION, ""]
    assert all(records[f"tbl/bad/{i}"]["image"] == b"" for i in range(8))
    assert records["tbl/bad/8"]["caption_raw"] == b"None"  # a caption is text, never a null marker


def test_table_root_option_widens_the_confinement(corpus):
    (corpus / "tables").mkdir()
    (corpus / "tables" / "t.csv").write_text("image_path,caption\n../images/a.jpg,up one level\n")
    narrow = table_source(corpus / "tables")
    assert read_table(corpus / "tables" / "t.csv", narrow)["tbl/t/0"]["reject_rule"] == schema.RULE_OUTSIDE_ROOT
    wide = table_source(corpus / "tables", root=str(corpus))
    record = read_table(corpus / "tables" / "t.csv", wide)["tbl/t/0"]
    assert record["reject_rule"] == "" and record["image"] == JPG


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_missing_column_fails_fast(corpus, suffix):
    frame = pd.DataFrame({"image_path": ["images/a.jpg"], "text": ["a caption"]})
    path = corpus / f"pairs{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    with pytest.raises(ValueError, match=r"'caption'") as raised:
        read_table_file(str(path), table_source(corpus), root=str(corpus))
    assert str(path) in str(raised.value) and "text" in str(raised.value)


@pytest.mark.parametrize("name,data", [("broken.csv", b"image_path,caption\na.jpg,x,extra\n"),
                                       ("empty.csv", b""), ("broken.parquet", b"PAR1 not really")])
def test_unparseable_table_is_one_unreadable_record(corpus, name, data):
    (corpus / name).write_bytes(data)
    records = read_table_file(str(corpus / name), table_source(corpus), root=str(corpus))
    check_records(records)
    (record,) = records
    assert record["key"] == f"tbl/{name.split('.')[0]}#unreadable"
    assert record["reject_rule"] == schema.RULE_UNREADABLE


# --- img2dataset parquet output -------------------------------------------------------------------


def img2dataset_shard(path, image_column: str = "jpg", with_key: bool = True) -> None:
    columns = {
        image_column: pa.array([JPG, None, JPG, JPG], pa.binary()),
        "caption": ["a photo", "lost", None, ""],
        "url": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg", "http://a/4.jpg"],
        "status": ["success", "failed_to_download", "success", "success"],
        "error_message": [None, "HTTP Error 404: Not Found", None, None],
        "width": [8, None, 8, 8],
        "height": [8, None, 8, 8],
    }
    if with_key:
        columns["key"] = ["000010000", "000010001", "000010002", "000010003"]
    pq.write_table(pa.table(columns), path)


def test_img2dataset_parquet_rows(tmp_path):
    img2dataset_shard(tmp_path / "00001.parquet")
    source = SourceConfig(name="i2d", format="img2dataset_parquet", path=str(tmp_path))
    records = by_key(read_img2dataset_file(str(tmp_path / "00001.parquet"), source))
    ok = records["i2d/000010000"]
    assert (ok["image"], ok["caption_raw"], ok["reject_rule"]) == (JPG, b"a photo", "")
    assert ok["locator"] == f"{tmp_path}/00001.parquet#key=000010000"
    failed = records["i2d/000010001"]
    assert failed["reject_rule"] == schema.RULE_MISSING_IMAGE
    for part in ("failed_to_download", "404", "http://a/2.jpg"):
        assert part in failed["reject_detail"]
    assert records["i2d/000010002"]["reject_rule"] == schema.RULE_MISSING_CAPTION
    assert records["i2d/000010003"]["reject_rule"] == schema.RULE_MISSING_CAPTION
    assert "http://a/4.jpg" in records["i2d/000010003"]["reject_detail"]


def test_img2dataset_parquet_without_key_and_png(tmp_path):
    img2dataset_shard(tmp_path / "00002.parquet", image_column="png", with_key=False)
    source = SourceConfig(name="i2d", format="img2dataset_parquet", path=str(tmp_path))
    records = by_key(read_img2dataset_file(str(tmp_path / "00002.parquet"), source))
    assert records["i2d/00002/0"]["image"] == JPG
    assert records["i2d/00002/0"]["locator"].endswith("00002.parquet#row=0")
    assert len(records) == 4


def test_img2dataset_parquet_without_caption_column_fails_fast(tmp_path):
    pq.write_table(pa.table({"jpg": pa.array([JPG], pa.binary()), "status": ["success"]}), tmp_path / "0.parquet")
    source = SourceConfig(name="i2d", format="img2dataset_parquet", path=str(tmp_path))
    with pytest.raises(ValueError, match="caption"):
        read_img2dataset_file(str(tmp_path / "0.parquet"), source)


def test_tables_read_rejects_other_formats():
    with pytest.raises(ValueError, match="sidecar"):
        tables.read(SourceConfig(name="x", format="sidecar", path="."))


# --- hostile input (issue 19) ----------------------------------------------------------------------


def test_table_nul_byte_in_a_path_cell_is_a_reject(corpus):
    (corpus / "pairs.csv").write_bytes(b"image_path,caption\nimages/a.jpg\x00.txt,a nul\nimages/a.jpg,fine\n")
    records = read_table(corpus / "pairs.csv", table_source(corpus))
    assert records["tbl/pairs/0"]["reject_rule"] == schema.RULE_UNREADABLE
    assert "NUL" in records["tbl/pairs/0"]["reject_detail"]
    assert records["tbl/pairs/1"]["image"] == JPG and records["tbl/pairs/1"]["reject_rule"] == ""


def test_table_an_exception_in_one_row_rejects_only_that_row(corpus, monkeypatch):
    real = tables._load_image

    def flaky(fs, root, table_dir, reference):
        if b"b.png" in reference:
            raise RuntimeError("a reader bug")
        return real(fs, root, table_dir, reference)

    monkeypatch.setattr(tables, "_load_image", flaky)
    (corpus / "pairs.csv").write_text("image_path,caption\nimages/a.jpg,one\nimages/b.png,two\nimages/a.jpg,three\n")
    records = read_table(corpus / "pairs.csv", table_source(corpus))
    assert [records[f"tbl/pairs/{i}"]["reject_rule"] for i in range(3)] == ["", schema.RULE_READER_ERROR, ""]
    assert "RuntimeError: a reader bug" in records["tbl/pairs/1"]["reject_detail"]


def test_table_and_shard_files_linked_from_outside_are_not_read(tmp_path, corpus):
    (tmp_path / "outside.csv").write_text("image_path,caption\nimages/a.jpg,TOPSECRET\n")
    os.symlink(tmp_path / "outside.csv", corpus / "linked.csv")
    (record,) = read_table(corpus / "linked.csv", table_source(corpus)).values()
    assert record["key"] == "tbl/linked#unreadable" and record["reject_rule"] == schema.RULE_OUTSIDE_ROOT
    # A source that names one file is trusted for that file, link or not.
    single = table_source(corpus / "linked.csv")
    records = read_table_file(str(corpus / "linked.csv"), single, root=confinement_root(single.path, str(corpus)))
    assert records[0]["caption_raw"] == b"TOPSECRET"
    shards = tmp_path / "shards"
    shards.mkdir()
    (tmp_path / "outside.tar").write_bytes(tar_bytes([("s.jpg", JPG), ("s.txt", b"TOPSECRET")]))
    os.symlink(tmp_path / "outside.tar", shards / "00000.tar")
    source = SourceConfig(name="wds", format="webdataset", path=str(shards))
    (record,) = read_shard(str(shards / "00000.tar"), source)
    assert record["key"] == "wds/00000#unreadable" and record["reject_rule"] == schema.RULE_OUTSIDE_ROOT


def test_webdataset_an_unexpected_exception_is_treated_like_damage(tmp_path, monkeypatch):
    real = webdataset._store

    def flaky(tar, member, ext, sample):
        if member.name.startswith("000000001"):
            raise RuntimeError("a reader bug")
        return real(tar, member, ext, sample)

    monkeypatch.setattr(webdataset, "_store", flaky)
    path, source = write_shard(tmp_path, tar_bytes(THREE_SAMPLES))
    records = by_key(read_shard(path, source))
    assert records["wds/00000/000000000"]["reject_rule"] == ""
    assert records["wds/00000/000000001"]["reject_rule"] == schema.RULE_UNREADABLE
    shard = records["wds/00000#unreadable"]
    assert shard["reject_rule"] == schema.RULE_READER_ERROR and "RuntimeError: a reader bug" in shard["reject_detail"]


# --- listing and sidecar folders: links are refused, never followed ---------------------------------


@pytest.fixture()
def linked_folder(tmp_path):
    """``side/`` with a good pair, links out (caption, image, folder), a link loop and a FIFO caption."""
    outside, side = tmp_path / "outside", tmp_path / "side"
    outside.mkdir()
    side.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET")
    (outside / "secret.jpg").write_bytes(PNG)
    for name in ("good", "leak", "pipe"):
        (side / f"{name}.jpg").write_bytes(JPG)
    (side / "good.txt").write_text("a good pair")
    os.symlink(outside / "secret.txt", side / "leak.txt")
    os.symlink(outside / "secret.jpg", side / "peek.jpg")
    (side / "peek.txt").write_text("a linked image")
    os.symlink(side, side / "loop")
    os.symlink(outside, side / "out")
    os.mkfifo(side / "pipe.txt")
    return side


def test_listing_reports_directory_links_and_never_walks_them(linked_folder):
    from components.data.sources import common

    listing = common.list_source(str(linked_folder), {".jpg", ".txt"})
    names = [os.path.relpath(p, linked_folder) for p in listing.files]
    assert names == ["good.jpg", "good.txt", "leak.jpg", "leak.txt", "peek.jpg", "peek.txt", "pipe.jpg", "pipe.txt"]
    refused = {os.path.basename(p): verdict[0] for p, _, verdict in listing.refused}
    assert refused == {"loop": schema.RULE_UNSAFE_FILE, "out": schema.RULE_OUTSIDE_ROOT}
    records = common.refused_records("side", str(linked_folder), listing)
    assert [r["key"] for r in records] == ["side/loop#link", "side/out#link"]


def test_sidecar_pairs_with_a_link_out_or_a_fifo_are_rejected(linked_folder):
    from components.data.sources import sidecar

    source = SourceConfig(name="side", format="sidecar", path=str(linked_folder))
    listing = sidecar.list_pairs(source)
    assert sidecar.expected_rows(source) == len(listing) + 2
    batch = {column: [row[column] for row in listing] for column in ("key", "locator", "image_path", "caption_path")}
    out = sidecar.load_pair(batch, str(linked_folder), "side")
    records = by_key([dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)])
    rules = {key: record["reject_rule"] for key, record in records.items()}
    assert rules == {"side/good": "", "side/leak": schema.RULE_OUTSIDE_ROOT, "side/peek": schema.RULE_OUTSIDE_ROOT,
                     "side/pipe": schema.RULE_UNREADABLE}
    assert all(b"TOPSECRET" not in r["caption_raw"] and r["image"] != PNG for r in records.values())

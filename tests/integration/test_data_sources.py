"""Every source format through the whole filter, locally and on S3: each planted problem lands in the
rejects table under its rule, every good pair is kept, and rows in = kept + rejected."""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pyarrow.dataset as pads
import pytest
from PIL import Image

from components.config import FilterConfig
from components.data import schema
from components.data.pipeline import run_filter
from components.storage import read_json
from tests.data_fixtures import write_all_formats

pytestmark = pytest.mark.integration

FILTER = FilterConfig(max_image_pixels=500_000, vocab_top_n=10**9, resize_short_side=64, rows_per_shard=100)


def _outcomes(output_uri: str) -> tuple[dict[str, str], dict[str, dict]]:
    kept = pads.dataset(f"{output_uri}/{schema.KEPT_DIR}", format="parquet").to_table().to_pylist()
    rejects = pads.dataset(f"{output_uri}/{schema.REJECTS_DIR}", format="parquet").to_table().to_pylist()
    outcomes = {row["key"]: "" for row in kept}
    for row in rejects:
        assert row["key"] not in outcomes, f"{row['key']} is both kept and rejected"
        assert row["detail"], row
        outcomes[row["key"]] = row["rule"]
    return outcomes, {row["key"]: row for row in kept}


def _check(result, output_uri: str, expected: dict[str, str]) -> dict[str, dict]:
    outcomes, kept = _outcomes(output_uri)
    wrong = {key: (outcomes.get(key, "<missing>"), want) for key, want in expected.items() if outcomes.get(key) != want}
    assert not wrong, f"(got, expected) per key: {wrong}"
    assert set(outcomes) == set(expected), f"unexpected keys: {set(outcomes) - set(expected)}"
    report = result.report
    assert report["rows_in"] == len(expected) == report["rows_kept"] + report["rows_rejected"]
    for source, counts in report["by_source"].items():
        mine = {k: v for k, v in expected.items() if k.startswith(source + "/") or k.startswith(source + "#")}
        assert counts["rows_in"] == len(mine) and counts["rows_kept"] == sum(1 for v in mine.values() if not v)
    return kept


def test_every_format_and_every_hostile_input_locally(ray_session, tmp_path):
    sources, expected = write_all_formats(tmp_path / "corpus")
    result = run_filter(sources, str(tmp_path / "out"), FILTER, config_hash="test")
    kept = _check(result, str(tmp_path / "out"), expected)

    def image(key: str) -> Image.Image:
        return Image.open(io.BytesIO(kept[key]["image"]))

    assert (kept["sidecar/rotated"]["width"], kept["sidecar/rotated"]["height"]) == (240, 300)  # EXIF applied
    assert image("sidecar/rotated").size == (64, 80)
    assert image("sidecar/palette").getpixel((5, 5)) == (255, 255, 255)  # transparency -> white, not black
    assert image("sidecar/cmyk").mode == "RGB"
    red, green, blue = image("sidecar/animated").getpixel((32, 32))
    assert blue > 150 and red < 60  # the first (blue) frame
    assert kept["site/en/page#img0"]["text"] == "the caf\u00e9 & bar sign at night"
    manifest = read_json(str(tmp_path / "out" / schema.MANIFEST_FILE))
    assert [s["name"] for s in manifest["sources"]] == [s.name for s in sources]


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    for path in folder.rglob("*"):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def test_the_same_corpus_from_and_to_s3(ray_session, s3_server, tmp_path):
    local = tmp_path / "corpus"
    sources, expected = write_all_formats(local)
    bucket = "align-data"
    boto3.client("s3").create_bucket(Bucket=bucket)
    _upload(local, bucket, "corpus")
    on_s3 = [s.model_copy(update={"path": f"s3://{bucket}/corpus/{Path(s.path).name}"}) for s in sources]
    output = f"s3://{bucket}/datasets/all-formats"
    result = run_filter(on_s3, output, FILTER, config_hash="test")
    _check(result, output, expected)
    assert read_json(f"{output}/{schema.REPORT_FILE}")["rows_in"] == len(expected)
    assert read_json(f"{output}/{schema.MANIFEST_FILE}")["kept_uri"] == f"{output}/{schema.KEPT_DIR}"
    assert result.manifest["rows"]["kept"] == sum(1 for v in expected.values() if not v)

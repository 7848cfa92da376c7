"""Hostile records through the real ingest on Ray Data (issue 19): none may fail the job, read outside
the corpus or run unbounded. Each is rejected under a named rule, and rows in = kept + rejected.

One small source per class (``tests.data_fixtures.write_hostile``), filtered together once per module;
each test then checks one class. On the code before issue 19 the ingest itself failed (a NUL byte in a
path, a page html.parser cannot take), a linked caption's text was kept, and a directory link turned 3
pairs into 163 rows.
"""

from __future__ import annotations

import time

import pyarrow.dataset as pads
import pytest

from components.config import FilterConfig
from components.data import schema
from components.data.pipeline import run_filter
from tests.data_fixtures import write_hostile

pytestmark = pytest.mark.integration

# The pixel cap is low so a small file is a bomb; the SVG budget keeps its defaults.
FILTER = FilterConfig(max_image_pixels=500_000, vocab_top_n=10**9, resize_short_side=64, rows_per_shard=100)
INGEST_SECONDS = 120  # Ray start-up included; the SVG bombs alone ran 10+ s before their budget


@pytest.fixture(scope="module")
def ingested(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    sources, expected, outside = write_hostile(root / "corpus")
    started = time.monotonic()
    result = run_filter(sources, str(root / "out"), FILTER, config_hash="test")
    seconds = time.monotonic() - started
    kept = pads.dataset(str(root / "out" / schema.KEPT_DIR), format="parquet").to_table().to_pylist()
    rejects = pads.dataset(str(root / "out" / schema.REJECTS_DIR), format="parquet").to_table().to_pylist()
    return {"result": result, "expected": expected, "outside": outside, "seconds": seconds,
            "kept": {row["key"]: row for row in kept}, "rejects": {row["key"]: row for row in rejects}}


def _check_class(ingested, prefix: str) -> None:
    """Every key of one source has its expected outcome; every reject carries a detail."""
    expected = {k: v for k, v in ingested["expected"].items() if k.startswith(prefix + "/")}
    got = {k: "" for k in ingested["kept"] if k.startswith(prefix + "/")}
    got |= {k: r["rule"] for k, r in ingested["rejects"].items() if k.startswith(prefix + "/")}
    wrong = {k: (got.get(k, "<missing>"), want) for k, want in expected.items() if got.get(k) != want}
    assert not wrong, f"(got, expected) per key: {wrong}"
    assert set(got) == set(expected), f"unexpected rows: {sorted(set(got) - set(expected))}"
    for key in expected:
        if key in ingested["rejects"]:
            assert ingested["rejects"][key]["detail"], key


def test_rows_in_equal_kept_plus_rejected_with_no_reader_errors(ingested):
    report = ingested["result"].report
    assert report["rows_in"] == len(ingested["expected"]) == report["rows_kept"] + report["rows_rejected"]
    assert len(ingested["kept"]) + len(ingested["rejects"]) == report["rows_in"]
    assert set(ingested["kept"]) | set(ingested["rejects"]) == set(ingested["expected"])
    # Every hostile row has a rule that names its problem; none fell through to the catch-all.
    assert report["rejected_by_rule"][schema.RULE_READER_ERROR] == 0
    assert ingested["seconds"] < INGEST_SECONDS


def test_nothing_from_outside_the_corpus_is_kept(ingested):
    outside = ingested["outside"]
    for row in ingested["kept"].values():
        assert outside["text"] not in row["text"]
        assert row["image_sha256"] != outside["image_sha256"]
    assert not any(outside["text"] in (row["text"] or "") for row in ingested["rejects"].values())


def test_nul_bytes_and_unparseable_pages_in_html(ingested):
    _check_class(ingested, "web")
    assert "NUL" in ingested["rejects"]["web/page#img1"]["detail"]
    assert "AssertionError" in ingested["rejects"]["web/crash#page"]["detail"]


def test_nul_bytes_and_links_in_a_table(ingested):
    _check_class(ingested, "tbl")
    assert "NUL" in ingested["rejects"]["tbl/pairs/1"]["detail"]


def test_sidecar_links_fifos_and_bombs(ingested):
    _check_class(ingested, "side")
    assert "not walked" in ingested["rejects"]["side/out#link"]["detail"]
    assert "never walked" in ingested["rejects"]["side/loop#link"]["detail"]
    assert "not a regular file" in ingested["rejects"]["side/pipe"]["detail"]


def test_hostile_captions_are_rejected_or_normalised(ingested):
    rejects, kept = ingested["rejects"], ingested["kept"]
    assert "U+0000" in rejects["side/nul"]["detail"]
    assert "RIGHT-TO-LEFT OVERRIDE" in rejects["side/bidi"]["detail"]
    assert "U+001B" in rejects["side/escape"]["detail"]
    assert "RIGHT-TO-LEFT OVERRIDE" in rejects["web/page#img2"]["detail"]
    assert rejects["tbl/pairs/2"]["rule"] == schema.RULE_CAPTION_UNSAFE_CHARACTERS
    assert kept["side/zero-width"]["text"] == "a zero width caption here"
    assert kept["side/nfd"]["text"] == "caf\u00e9 sign on the wall"


def test_svg_render_budget(ingested):
    _check_class(ingested, "art")
    details = {key: row["detail"] for key, row in ingested["rejects"].items() if key.startswith("art/")}
    assert "<use>" in details["art/use-bomb"] and "1500x1500" in details["art/png-bomb"]


def test_tar_links_traversal_names_and_linked_shards(ingested):
    _check_class(ingested, "shards")
    assert "is a link" in ingested["rejects"]["shards/00000/link"]["detail"]

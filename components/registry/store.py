"""Log, register, alias and fetch ALIGN models in the MLflow Model Registry.

One registered model name; every new version gets the ``challenger`` alias, and ``champion`` moves
only when the gate passes. Stages are deprecated in MLflow 3, aliases are the way. Lineage (dataset
manifest hash, config hash, git commit) is written as version tags.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

from components.config import PROJECT_ROOT
from components.registry.pyfunc import ARTIFACT_KEY
from components.secrets import redact_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
# What the pyfunc needs at load time, pinned to what trained it. Passing these explicitly also
# makes log_model much faster than MLflow's requirement inference.
RUNTIME_PACKAGES = ["torch", "timm", "transformers", "tokenizers", "safetensors", "numpy", "pillow", "mlflow"]


def pip_requirements() -> list[str]:
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _signature(embed_dim: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("binary", "image", required=False)])
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, embed_dim))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def register_model(
    tracking_uri: str, run_id: str, model_name: str, artifact_dir: str, embed_dim: int, tags: dict[str, str]
):
    """Log the artifact as a pyfunc in ``run_id``, register it, tag lineage, alias it challenger."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY_POINT),
            artifacts={ARTIFACT_KEY: artifact_dir},
            signature=_signature(embed_dim),
            pip_requirements=pip_requirements(),
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    return client.get_model_version(model_name, version)


def alias_version(tracking_uri: str, model_name: str, alias: str):
    """The model version behind ``alias``, or None when the alias (or the model) does not exist yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def run_exists(tracking_uri: str, run_id: str) -> bool:
    """Whether the tracking store still has this run (a cached stage may point at a deleted one)."""
    import mlflow

    return _found(lambda: mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id))


def version_exists(tracking_uri: str, model_name: str, version: str) -> bool:
    """Whether the registry still has this version of ``model_name``."""
    import mlflow

    return _found(lambda: mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version(model_name, version))


def _found(lookup) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        lookup()
        return True
    except MlflowException:
        return False


def resolve_version(tracking_uri: str, model_uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, version), checked to exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    path = model_uri.removeprefix("models:/")
    if path == model_uri or not path:
        raise ValueError(f"model URI {model_uri!r} must look like models:/<name>@<alias> or models:/<name>/<version>")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name, at, alias = path.partition("@")
    try:
        if at:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = path.partition("/")
        return name, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise LookupError(f"{model_uri} is not in the registry at {redact_uri(tracking_uri)}: {exc.message}") from exc


def download_model(tracking_uri: str, model_uri: str, dst: str | None = None) -> tuple[str, str]:
    """Resolve ``models:/<name>@<alias>`` (or ``/<version>``) and fetch its ALIGN artifact folder."""
    import mlflow

    name, version = resolve_version(tracking_uri, model_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)  # models:/ URIs resolve against the registry URI
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst))
    return str(version), str(local / pyfunc_artifact_path(local))


def pyfunc_artifact_path(model_dir: str | Path) -> str:
    """Where MLflow put our artifact folder inside a downloaded pyfunc model (named after its source)."""
    import yaml

    mlmodel = yaml.safe_load((Path(model_dir) / "MLmodel").read_text())
    return mlmodel["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]


INDEX_TAG = "align.index_uri"


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    """The version ``champion`` points at now (None if there is none); cheap enough to poll."""
    version = alias_version(tracking_uri, model_name, CHAMPION)
    return str(version.version) if version is not None else None


def index_location(tracking_uri: str, model_name: str, version: str) -> str:
    """Where the corpus index built by this version lives ("" when none was built)."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version(model_name, str(version)).tags.get(INDEX_TAG, "")

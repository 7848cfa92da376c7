"""The train stage: run Ray Train, then attach the resulting artifact to the lifecycle's MLflow run."""

from __future__ import annotations

from pathlib import Path

from components.config import AlignConfig
from components.model.artifact import WEIGHTS_FILE
from components.runtime.tracking import set_run_status
from components.train.trainer import TrainResult, run_training

MODEL_ARTIFACT_PATH = "align_model"


def train_stage(cfg: AlignConfig, kept_uri: str, run_id: str, validation_json: str = "") -> TrainResult:
    import mlflow

    output_dir = Path(cfg.storage.home) / "models" / run_id
    client = mlflow.MlflowClient(tracking_uri=cfg.storage.tracking_uri)
    # The run is RUNNING while it trains (again, on a resume) and ends FINISHED or FAILED with training,
    # so its status and duration in MLflow say what training did; later stages still log into it.
    set_run_status(cfg.storage.tracking_uri, run_id, "RUNNING")
    try:
        # Named after the MLflow run: rerunning the stage for the same run resumes from its checkpoint.
        result = run_training(
            cfg, kept_uri, f"align-{run_id}", str(output_dir), cfg.storage.tracking_uri, run_id, validation_json
        )
        client.log_artifacts(run_id, result.artifact_dir, MODEL_ARTIFACT_PATH)
        client.set_tag(run_id, "align.checkpoint", result.checkpoint_path)
    except BaseException:
        set_run_status(cfg.storage.tracking_uri, run_id, "FAILED")
        raise
    set_run_status(cfg.storage.tracking_uri, run_id, "FINISHED")
    return result


def model_dir_for_run(cfg: AlignConfig, run_id: str) -> str:
    """Local folder of the model trained in ``run_id``: the training output, else its MLflow artifact."""
    import mlflow

    local = Path(cfg.storage.home) / "models" / run_id
    if (local / WEIGHTS_FILE).is_file():
        return str(local)
    mlflow.set_tracking_uri(cfg.storage.tracking_uri)
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=MODEL_ARTIFACT_PATH, dst_path=str(local.parent / f"{run_id}-download"))

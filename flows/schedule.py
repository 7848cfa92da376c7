"""``align schedule``: serve the retraining deployment from this process (Prefect's ``flow.serve``).

The deployment runs ``flows.lifecycle:retrain`` on the configured cron (``orchestration.schedule_cron``
and ``schedule_timezone``) and on demand (``prefect deployment run``). Served deployments need a Prefect
server: ``PREFECT_API_URL`` when set, else one started here on 127.0.0.1. A team with a shared server
and a work pool uses ``prefect.yaml`` and ``prefect deploy`` instead (README, "Scheduled retraining").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from components.config import AlignConfig

RUN_LIMIT = 1  # a retrain that overruns into the next slot must not start a second one beside it


def deployment_spec(cfg: AlignConfig, recipe: str, overrides: list[str]) -> dict:
    """Keyword arguments of ``retrain.serve``; the request is validated (recipe loads) up front."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.lifecycle import RetrainRequest

    from components.secrets import contains_secret, redact_text

    with_credentials = [override for override in overrides if contains_secret(override)]
    if with_credentials:  # the deployment's parameters are stored as they are: its runs read them back
        raise ValueError(
            f"align schedule: {redact_text(' '.join(with_credentials))} would be stored in the deployment's "
            "parameters in Prefect's database. Put the credential in the recipe file or in the environment "
            "(PGPASSWORD or ~/.pgpass for PostgreSQL, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for an "
            "MLflow server; README, Security) instead."
        )
    orchestration = cfg.orchestration
    request = RetrainRequest(recipe=recipe, overrides=overrides)
    return {
        "name": orchestration.deployment_name,
        "schedules": [CronSchedule(cron=orchestration.schedule_cron, timezone=orchestration.schedule_timezone)],
        "parameters": {"request": request.model_dump()},
        "description": f"Retrain {cfg.name} ({recipe}); promote only if the evaluation gate passes.",
        "tags": ["align", "retrain", cfg.name],
        "limit": RUN_LIMIT,
        "pause_on_shutdown": True,
    }


def serve_retraining(cfg: AlignConfig, recipe: str, overrides: list[str], prefect_port: int = 4200) -> None:
    """Block serving the deployment (Ctrl-C stops it and pauses its schedule)."""
    from prefect.flows import EntrypointType

    from flows.lifecycle import retrain

    spec = deployment_spec(cfg, recipe, overrides)
    if os.environ.get("PREFECT_API_URL"):
        retrain.serve(**spec, entrypoint_type=EntrypointType.MODULE_PATH)
        return
    from components.runtime.prefect_server import local_prefect_server

    log_path = os.path.join(cfg.storage.prefect_home, "server.log")
    with local_prefect_server(cfg.storage.prefect_home, prefect_port, log_path) as api_url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        print(f"Prefect server: {api_url.removesuffix('/api')} (log {log_path})", flush=True)
        # Prefect's own hint (`prefect deployment run ...`) only reaches this server with its API URL.
        prefect_cli = Path(sys.executable).with_name("prefect")
        print(f"Run it now from another shell: PREFECT_API_URL={api_url} {prefect_cli} deployment run "
              f"'align-retrain/{spec['name']}'", flush=True)
        os.environ["PREFECT_API_URL"] = api_url  # for the flow-run processes the runner starts
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            retrain.serve(**spec, entrypoint_type=EntrypointType.MODULE_PATH)

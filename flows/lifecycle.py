"""The whole ALIGN lifecycle as one Prefect flow of stage flows: ingest -> train -> evaluate -> register ->
gate -> serve. Each stage flow also runs alone (``flows.stages``); finished stages are skipped on re-runs."""

# No `from __future__ import annotations` here: Prefect validates flow parameters from the real
# annotations, and a served run (`align schedule`) cannot resolve string ones.
from pydantic import BaseModel, Field, model_validator
from prefect import get_run_logger

from components.config import AlignConfig
from flows.stages import evaluate_flow, ingest_flow, promote_flow, register_flow, train_flow
from flows.tasks import flow


@flow(name="align-lifecycle")
def lifecycle(config: AlignConfig) -> dict:
    """Run every stage for ``config``; stages whose inputs are unchanged reuse their recorded outputs."""
    logger = get_run_logger()
    dataset = ingest_flow(config)
    trained = train_flow(config, dataset)
    evaluation = evaluate_flow(config, trained=trained, dataset=dataset)
    registered = register_flow(config, trained, dataset, evaluation)
    promoted = promote_flow(config, version=registered["version"], evaluation=evaluation, dataset=dataset)
    gate = promoted["gate"]
    logger.info("model version %s: gate %s %s", registered["version"], gate["outcome"], gate["reasons"])
    return {
        "run_id": trained["run_id"],
        "dataset_uri": dataset["dataset_uri"],
        "data_report": dataset["report"],
        "metrics": evaluation["metrics"],
        "model_name": config.registry.model_name,
        "model_version": registered["version"],
        "gate": gate,
        "serving_url": promoted["serving_url"],  # only a model that passed the gate is deployed
        "cached": {"ingest": dataset["cached"], "train": trained["cached"], "evaluate": evaluation["cached"],
                   "register": registered["cached"]},
    }


class RetrainRequest(BaseModel):
    """A scheduled or on-demand retrain: a recipe plus ``key=value`` overrides (``align run``'s syntax).

    Validating it loads the recipe, so a missing file or a bad override fails the flow run before
    anything starts, with the config error as the message.
    """

    recipe: str = "configs/embedded.yaml"
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _loads(self) -> "RetrainRequest":
        self.config()
        return self

    def config(self) -> AlignConfig:
        from components.config import load_config

        return load_config(self.recipe, self.overrides)


@flow(name="align-retrain")
def retrain(request: RetrainRequest | None = None) -> dict:
    """Entry point of the deployments (prefect.yaml, ``align schedule``): load the recipe on the worker
    (``None``: the embedded recipe)."""
    return lifecycle((request or RetrainRequest()).config())

"""An experiment as a config you can diff: a base recipe, overrides for every trial, and the trials.

Trials come from a ``grid`` (the cartesian product of dotted keys and their values, big_vision-style
sweeps) and/or a list of named ``trials`` (one per arm of a claim). Each trial is the base recipe plus
``overrides`` plus its own overrides, in ``align run``'s ``key=value`` syntax; validating the spec loads
every trial's config, so a typo fails before the first trial trains.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.config import PROJECT_ROOT, AlignConfig, load_config
from components.experiments.claims import ClaimSpec


class TrialSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    overrides: list[str] = Field(default_factory=list)


class Trial(BaseModel):
    """One expanded trial: its name and every override on top of the recipe, in order."""

    name: str
    overrides: list[str]


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    recipe: str = "configs/embedded.yaml"  # relative paths are taken from the project root
    overrides: list[str] = Field(default_factory=list)  # applied to every trial, before the trial's own
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # dotted key -> values; trials = the product
    trials: list[TrialSpec] = Field(default_factory=list)
    max_parallel: int = Field(1, ge=1)  # trials training at once (each is its own Ray Train run)
    claims: list[ClaimSpec] = Field(default_factory=list)  # checked on the comparison table
    arithmetic_probe: bool = True  # also score each trial's model on image + text arithmetic (seconds)

    @model_validator(mode="after")
    def _every_trial_loads(self) -> ExperimentSpec:
        trials = expand(self)
        for trial in trials:
            try:
                trial_config(self, trial)
            except (ValueError, FileNotFoundError) as error:
                raise ValueError(f"trial {trial.name!r}: {error}") from None
        names = {t.name for t in trials}
        for claim in self.claims:
            missing = [name for name in claim.trials() if name not in names]
            if missing:
                raise ValueError(f"claim {claim.name!r} names trials that are not in the experiment: {missing}")
        return self

    def recipe_path(self) -> Path:
        path = Path(self.recipe)
        return path if path.is_absolute() else PROJECT_ROOT / path


def _value(value: Any) -> str:
    """A grid value in override syntax (JSON is YAML, so lists, numbers and quoted strings survive)."""
    return value if isinstance(value, str) else json.dumps(value)


def expand(spec: ExperimentSpec) -> list[Trial]:
    """Grid trials (keys in the order written, values in the order given), then the named trials."""
    trials: list[Trial] = []
    if spec.grid:
        keys = list(spec.grid)
        for values in itertools.product(*(spec.grid[key] for key in keys)):
            overrides = [f"{key}={_value(value)}" for key, value in zip(keys, values)]
            trials.append(Trial(name=",".join(f"{key.rsplit('.', 1)[-1]}={_value(value)}" for key, value in zip(keys, values)),
                                overrides=overrides))
    trials += [Trial(name=t.name, overrides=list(t.overrides)) for t in spec.trials]
    if not trials:
        raise ValueError(f"experiment {spec.name!r} has no trials: give a grid, trials, or both")
    names = [t.name for t in trials]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"experiment {spec.name!r}: trial names must be unique, repeated: {duplicates}")
    return trials


def trial_config(spec: ExperimentSpec, trial: Trial, extra: list[str] | None = None) -> AlignConfig:
    return load_config(spec.recipe_path(), [*spec.overrides, *trial.overrides, *(extra or [])])


def load_spec(path: str | Path, extra_overrides: list[str] | None = None) -> ExperimentSpec:
    """Read an experiment YAML; ``extra_overrides`` go to every trial (e.g. ``storage.home=...``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment spec {path} does not exist (see configs/experiments/)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"experiment spec {path} must be a mapping at the top level")
    data["overrides"] = [*data.get("overrides", []), *(extra_overrides or [])]
    return ExperimentSpec.model_validate(data)

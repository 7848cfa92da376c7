"""The typed config tree: recipes load, overrides apply and are validated, storage resolves."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config import PROJECT_ROOT, AlignConfig, FilterConfig, apply_overrides, load_config, resolve_storage

RECIPES = sorted((PROJECT_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.name == recipe.stem


def test_overrides_are_typed_and_dotted(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_HOME", str(tmp_path / "home"))
    cfg = load_config(None, ["seed=2", "train.steps=11", "model.text.num_layers=1", "gate.min_metrics={knn/k1/acc1: 0.5}"])
    assert (cfg.seed, cfg.train.steps, cfg.model.text.num_layers) == (2, 11, 1)
    assert cfg.gate.min_metrics == {"knn/k1/acc1": 0.5}
    assert cfg.storage.home == str(tmp_path / "home")
    assert cfg.storage.tracking_uri == f"sqlite:///{tmp_path}/home/mlflow.db"  # four slashes: absolute


def test_unknown_keys_and_bad_values_are_refused():
    with pytest.raises(ValidationError):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ValidationError):
        load_config(None, ["train.global_batch_size=0"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["seed"])


def test_storage_defaults_follow_home_and_accept_s3():
    storage = resolve_storage(AlignConfig().storage.model_copy(update={"home": "s3://bucket/align"}))
    assert storage.datasets_uri == "s3://bucket/align/datasets"
    assert storage.checkpoints_uri == "s3://bucket/align/checkpoints"
    assert storage.tracking_uri.startswith("sqlite:////")  # the database itself stays local


def test_config_hash_ignores_where_things_are_stored():
    a, b = AlignConfig(), AlignConfig()
    b.storage.home = "/elsewhere"
    assert a.config_hash() == b.config_hash()
    b.seed = 3
    assert a.config_hash() != b.config_hash()


def test_missing_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config(Path(tmp_path / "nope.yaml"))


def test_display_settings_do_not_invalidate_cached_datasets():
    cfg = AlignConfig()
    before = (cfg.section_hash("corpus", "filter"), cfg.config_hash())
    cfg.filter.show_progress = False
    assert (cfg.section_hash("corpus", "filter"), cfg.config_hash()) == before
    cfg.filter.min_words = 2
    assert cfg.section_hash("corpus", "filter") != before[0]


def test_switching_off_an_unknown_rule_is_refused():
    assert FilterConfig(disabled_rules=["nsfw"]).enabled("image_too_small")
    with pytest.raises(ValidationError):
        FilterConfig(disabled_rules=["missing_image"])  # decoding checks cannot be switched off


def test_a_ray_client_address_is_refused_with_what_to_use_instead(tmp_path):
    from components.runtime.ray_cluster import connect

    cfg = load_config(None, [f"storage.home={tmp_path}", "ray.address=ray://head:10001"])
    with pytest.raises(ValueError, match="Ray Client cannot run Ray Data"):
        connect(cfg)

"""Credentials never leak: the one redaction (``components.secrets``) and the places that record through it.

The whole lifecycle against a password-protected PostgreSQL store is checked end to end in
tests/integration/test_no_secret_leaks.py; here each piece, without servers.
"""

from __future__ import annotations

import json
import sys

import pytest

from components.secrets import REDACTED, contains_secret, redact, redact_text, redact_uri

SECRET = "s3cr3t-Pa55"


REDACTED_FORMS = [
    ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://align:s3cr3t-Pa55@127.0.0.1:5432/mlflow?sslmode=require",
     "postgresql+psycopg2://align:***@127.0.0.1:5432/mlflow?sslmode=require"),
    ("mysql+pymysql://root:pw@localhost:3306/mlflow", "mysql+pymysql://root:***@localhost:3306/mlflow"),
    ("https://bob:hunter2@mlflow.example:5000", "https://bob:***@mlflow.example:5000"),
    # Pasted passwords often hold characters a URI should have encoded.
    ("postgresql://u:p@ss:w?rd#x@db.internal/mlflow", "postgresql://u:***@db.internal/mlflow"),
    ("postgresql://u:pa/ss@db/mlflow", "postgresql://u:***@db/mlflow"),
    # Secrets in the query string (driver options, tokens, pre-signed URLs), names in any case.
    ("postgresql://db/mlflow?user=u&password=secret&sslmode=require",
     "postgresql://db/mlflow?user=u&password=***&sslmode=require"),
    ("https://bucket.s3.amazonaws.com/k.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F1"
     "&X-Amz-Security-Token=tok&X-Amz-Signature=abc123",
     "https://bucket.s3.amazonaws.com/k.parquet?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("https://api.example/v1?token=abc&page=2", "https://api.example/v1?token=***&page=2"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022&sig=xyz",
     "https://acct.blob.core.windows.net/c/b?sv=2022&sig=***"),
    ("https://h/cb#access_token=abc&state=1", "https://h/cb#access_token=***&state=1"),
]
WITHOUT_SECRETS = [
    "sqlite:////home/me/.align/mlflow.db",
    "postgresql://postgres@127.0.0.1:5432/mlflow",  # a user name alone is no secret
    "http://127.0.0.1:5000",
    "http://mlflow:5000/path?email=a@b.example",  # an '@' in a query is not user info
    "http://mlflow:5000?q=a@b",
    "s3://bucket/prefix/a:b@c",
    "https://u:@host/x",  # an empty password
    "file:///tmp/x?page=2",
    "/plain/local/path",
    "not a uri: user:secret@host",
]


def test_redact_uri_hides_passwords_and_secret_query_values_and_leaves_other_uris_alone():
    for uri, expected in REDACTED_FORMS:
        assert (redact_uri(uri), contains_secret(uri)) == (expected, True), uri
    # Identity, character for character: hashes of redacted values (stage-cache keys) stay what they were.
    for uri in WITHOUT_SECRETS:
        assert (redact_uri(uri), contains_secret(uri)) == (uri, False), uri


def test_redact_text_and_redact_reach_uris_inside_text_and_nested_values():
    line = f"connecting to postgresql://align:{SECRET}@db/mlflow, then 'https://x:{SECRET}@h/p' failed"
    assert SECRET not in redact_text(line)
    assert redact_text(line).count(REDACTED) == 2
    value = {"storage": {"tracking_uri": f"postgresql://align:{SECRET}@db/mlflow", "home": "/x"},
             "overrides": [f"storage.tracking_uri=mysql://r:{SECRET}@h/m"], "pair": ("a", f"http://u:{SECRET}@h"),
             "steps": 3, "none": None}
    redacted = redact(value)
    assert SECRET not in json.dumps(redacted)
    assert redacted["storage"]["tracking_uri"] == "postgresql://align:***@db/mlflow"
    assert redacted["steps"] == 3 and redacted["none"] is None and redacted["storage"]["home"] == "/x"
    assert value["storage"]["tracking_uri"].endswith(f"{SECRET}@db/mlflow")  # the input is not changed


def _cfg(password: str):
    from components.config import load_config

    return load_config(None, [f"storage.tracking_uri=postgresql+psycopg2://align:{password}@db:5432/mlflow",
                              "storage.home=/tmp/align-secrets-unit"])


def test_stage_keys_neither_hold_nor_depend_on_the_password(tmp_path):
    from components.runtime.stage_cache import StageCache, StageKey
    from flows.stages import train_key

    dataset = {"content_hash": "d" * 16}
    key, rotated = train_key(_cfg(SECRET), dataset), train_key(_cfg("rotated-" + SECRET), dataset)
    assert SECRET not in json.dumps(key.inputs)
    assert key.inputs["tracking"] == "postgresql+psycopg2://align:***@db:5432/mlflow"
    assert key.digest == rotated.digest  # a rotated password keeps the cache
    assert train_key(_cfg(SECRET).model_copy(update={"seed": 5}), dataset).digest != key.digest
    # Whatever a caller puts into a key or a record, what is written holds no credential.
    cache = StageCache(str(tmp_path))
    raw = StageKey("probe", {"store": f"mysql://r:{SECRET}@h/m"})
    assert raw.digest == StageKey("probe", {"store": "mysql://r:other@h/m"}).digest
    cache.mark_complete(raw, {"uri": f"https://u:{SECRET}@h/x", "n": 1})
    written = "".join(path.read_text() for path in tmp_path.rglob("*.json"))
    assert SECRET not in written and '"n": 1' in written


def test_config_json_and_params_of_the_lifecycle_run_are_redacted(tmp_path, monkeypatch):
    """What ``start_lifecycle_run`` logs, through a stand-in client (the real one needs the server)."""
    import mlflow

    from components.runtime import tracking

    logged: dict = {}

    class Client:
        def __init__(self, tracking_uri=None):
            pass

        def create_run(self, experiment_id, run_name=None, tags=None):
            return type("Run", (), {"info": type("Info", (), {"run_id": "r1"})})()

        def log_batch(self, run_id, params=()):
            logged.setdefault("params", []).extend(params)

        def log_dict(self, run_id, payload, name):
            logged[name] = payload

    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    monkeypatch.setattr(tracking, "ensure_experiment", lambda storage, name: "1")
    cfg = _cfg(SECRET)
    cfg.eval.retrieval_json = f"https://h/eval.json?token={SECRET}"  # a signed location in another section
    tracking.start_lifecycle_run(cfg, {})
    assert logged["config.json"]["storage"]["tracking_uri"] == "postgresql+psycopg2://align:***@db:5432/mlflow"
    assert SECRET not in json.dumps(logged["config.json"])
    assert SECRET not in json.dumps([[p.key, p.value] for p in logged["params"]])
    assert {p.key: p.value for p in logged["params"]}["eval.retrieval_json"] == "https://h/eval.json?token=***"


def test_prefect_records_flow_parameters_redacted_and_the_flow_gets_the_real_ones():
    from flows.lifecycle import RetrainRequest, lifecycle, retrain
    from flows.stages import ingest_flow, train_flow
    from flows.tasks import RedactedParametersFlow

    cfg = _cfg(SECRET)
    for parameters in ({"config": cfg}, {"config": cfg.model_dump()}):
        recorded = lifecycle.serialize_parameters(parameters)
        assert SECRET not in json.dumps(recorded)
        assert recorded["config"]["storage"]["tracking_uri"] == "postgresql+psycopg2://align:***@db:5432/mlflow"
    assert parameters["config"]["storage"]["tracking_uri"].endswith(f"{SECRET}@db:5432/mlflow")  # not changed
    overrides = [f"storage.tracking_uri=mysql://r:{SECRET}@h/m"]
    request = RetrainRequest.model_construct(recipe="r.yaml", overrides=overrides)
    assert SECRET not in json.dumps(retrain.serialize_parameters({"request": request}))
    for declared in (lifecycle, retrain, ingest_flow, train_flow, ingest_flow.with_options(name="x")):
        assert isinstance(declared, RedactedParametersFlow)


def test_the_mlflow_ui_gets_its_store_uri_by_environment_not_argv(tmp_path):
    from components.config import StorageConfig, resolve_storage
    from components.report.ui import mlflow_ui_command
    from components.runtime.local_server import secret_free_command

    store = f"postgresql+psycopg2://align:{SECRET}@db:5432/mlflow"
    storage = resolve_storage(StorageConfig(home=str(tmp_path), tracking_uri=store))
    given = {"PATH": "/bin", "MLFLOW_BACKEND_STORE_URI": "x"}  # the caller's environment: the store URI wins
    command, env = secret_free_command(mlflow_ui_command(storage, 5001), given)
    assert SECRET not in " ".join(command)
    assert "--backend-store-uri" not in command and "--default-artifact-root" in command
    assert env["MLFLOW_BACKEND_STORE_URI"] == store and env["PATH"] == "/bin"
    # The same option as --flag=value, and a command without credentials, which is left alone.
    command, env = secret_free_command(["mlflow", "server", f"--registry-store-uri={store}"], {})
    assert command == ["mlflow", "server"] and env == {"MLFLOW_REGISTRY_STORE_URI": store}
    plain = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", "sqlite:////x/mlflow.db"]
    assert secret_free_command(plain, None) == (plain, None)
    # A credential in an argument no environment variable can carry is refused, not passed on.
    with pytest.raises(ValueError, match="credential") as refused:
        secret_free_command(["tool", f"--url=https://u:{SECRET}@h"], {})
    assert SECRET not in str(refused.value)


def test_align_config_and_failure_explanations_show_no_password(capsys, tmp_path, monkeypatch):
    from align_cli.failures import explain
    from align_cli.main import main

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # `align` sets it only when unset
    store = f"postgresql+psycopg2://align:{SECRET}@db:5432/mlflow"
    assert main(["config", f"storage.tracking_uri={store}", f"storage.home={tmp_path}"]) == 0
    printed = capsys.readouterr().out
    assert SECRET not in printed and "postgresql+psycopg2://align:***@db:5432/mlflow" in printed
    found = explain(LookupError(f"models:/align/3 is not in the registry at {store}: not found"), store)
    server = explain(ConnectionError("Connection refused"), f"https://bob:{SECRET}@mlflow.example:5000")
    for explanation in (found, server):
        assert SECRET not in explanation.reason + explanation.hint
    assert "https://bob:***@mlflow.example:5000" in server.reason


def test_a_scheduled_deployment_refuses_credentials_in_its_stored_overrides():
    """Prefect keeps a deployment's parameters as they are (its runs read them back): no password there."""
    from components.config import load_config
    from flows.schedule import deployment_spec

    cfg = load_config(None, [])
    store = f"storage.tracking_uri=postgresql+psycopg2://align:{SECRET}@db:5432/mlflow"
    with pytest.raises(ValueError, match="environment") as refused:
        deployment_spec(cfg, "configs/embedded.yaml", ["seed=2", store])
    assert SECRET not in str(refused.value) and "align:***@db" in str(refused.value)
    plain = deployment_spec(cfg, "configs/embedded.yaml", ["seed=2", "storage.tracking_uri=postgresql://align@db/m"])
    assert plain["parameters"]["request"]["overrides"][1] == "storage.tracking_uri=postgresql://align@db/m"

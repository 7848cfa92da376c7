"""Deployment files (ray-cluster.yaml, prefect.yaml, infra/, dashboards/) parse and agree with the code.

No Ray, no cluster: files are parsed and checked against the project (flow entrypoints, Serve import
paths, recipe paths, config keys), plus the rules they must keep — no plaintext secrets, local
services on 127.0.0.1, Ray token auth on everywhere.
"""

import importlib.util
import inspect
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.config import PROJECT_ROOT, RegistryConfig, ServeConfig, load_config

ROOT = PROJECT_ROOT
INFRA = ROOT / "infra"
DASHBOARDS = ROOT / "dashboards"
YAML_FILES = sorted(
    [ROOT / "ray-cluster.yaml", ROOT / "prefect.yaml"]
    + [p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")]
    + [p for p in DASHBOARDS.rglob("*") if p.suffix in (".yaml", ".yml")]
)
SHELL_SCRIPTS = sorted(INFRA.rglob("*.sh"))
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DASHBOARD_JSON = sorted((DASHBOARDS / "grafana").glob("*.json"))
# Everything an operator edits or runs: the files the secret/host/recipe scans look at.
DEPLOY_FILES = YAML_FILES + SHELL_SCRIPTS + [DOCKERFILE] + DASHBOARD_JSON + sorted(INFRA.rglob("*.md"))
K8S_IN_CLUSTER = {INFRA / "k8s" / "raycluster.yaml", INFRA / "k8s" / "rayjob-train.yaml",
                  INFRA / "k8s" / "rayservice.yaml", INFRA / "mlflow" / "mlflow-k8s.yaml"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path) -> dict:
    (doc,) = _docs(path)
    return doc


def _uncommented(text: str) -> str:
    """Lines with shell/YAML comments removed (a '#' inside quotes is kept by being conservative)."""
    out = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#"):
            continue
        out.append(re.sub(r"\s+#\s.*$", "", line))
    return "\n".join(out)


def _ray_version_pin() -> str:
    match = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert match, "constraints.txt must pin ray"
    return match.group(1)


def _kube_containers(doc: dict) -> list[dict]:
    """Every container of every Ray pod template in a RayCluster/RayJob/RayService."""
    spec = doc["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _kube_cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


# ---------------------------------------------------------------------------------------------- parse


def test_the_deploy_files_exist():
    for name in ("ray-cluster.yaml", "prefect.yaml", "infra/README.md", "dashboards/README.md",
                 "infra/serve/serve-config.yaml", "infra/docker/Dockerfile", "infra/k8s/raycluster.yaml",
                 "infra/k8s/rayjob-train.yaml", "infra/k8s/rayservice.yaml",
                 "infra/mlflow/run-mlflow-server.sh", "infra/prefect/create-work-pool.sh"):
        assert (ROOT / name).is_file(), name
    assert DASHBOARD_JSON


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_parses(path):
    assert _docs(path), f"{_rel(path)} is empty"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=_rel)
def test_shell_scripts_are_valid_and_executable(path):
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert path.stat().st_mode & 0o111, f"{_rel(path)} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in path.read_text()


# ------------------------------------------------------------------------------------- prefect.yaml


def test_prefect_deployments_point_at_a_real_flow(monkeypatch):
    project = _one(ROOT / "prefect.yaml")
    deployments = {d["name"]: d for d in project["deployments"]}
    assert {"align-retrain-nightly", "align-retrain-on-demand", "align-retrain-paper-b7"} <= set(deployments)
    assert deployments["align-retrain-on-demand"]["schedules"] == []  # runs only when asked
    import flows.lifecycle

    for name, deployment in deployments.items():
        file, func = deployment["entrypoint"].split(":")
        assert (ROOT / file).is_file(), f"{name}: {file} missing"
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        assert module is flows.lifecycle
        flow = getattr(module, func)
        params = inspect.signature(flow.fn).parameters
        assert set(deployment["parameters"]) <= set(params), f"{name}: unknown flow parameters"
        assert deployment["work_pool"]["name"] == "align-pool"
        # Prefect validates the parameters on the worker (in the project root) exactly as given, which
        # loads the recipe with its overrides.
        monkeypatch.chdir(ROOT)
        validated = flow.validate_parameters(deployment["parameters"])
        assert validated["request"].config().name


def test_prefect_schedules():
    deployments = {d["name"]: d for d in _one(ROOT / "prefect.yaml")["deployments"]}
    for name, deployment in deployments.items():
        for schedule in deployment["schedules"]:
            assert len(schedule["cron"].split()) == 5, f"{name}: cron needs 5 fields"
            assert schedule["timezone"] == "UTC"
    nightly = deployments["align-retrain-nightly"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["active"] is True
    assert nightly["parameters"] == {"request": {"recipe": "configs/embedded.yaml", "overrides": []}}
    assert deployments["align-retrain-paper-b7"]["schedules"][0]["active"] is False


def test_prefect_pull_step_sets_the_working_directory():
    project = _one(ROOT / "prefect.yaml")
    steps = [next(iter(step)) for step in project["pull"]]
    assert steps == ["prefect.deployments.steps.set_working_directory"]
    assert "ALIGN_PROJECT_DIR" in project["pull"][0][steps[0]]["directory"]
    assert "ALIGN_PROJECT_DIR=" in DOCKERFILE.read_text() or "ALIGN_PROJECT_DIR " in DOCKERFILE.read_text()
    assert "ALIGN_PROJECT_DIR" in (ROOT / "ray-cluster.yaml").read_text()


def test_prefect_yaml_matches_prefects_own_model():
    models = pytest.importorskip("prefect.cli.deploy._models")
    models.PrefectYamlModel.model_validate(_one(ROOT / "prefect.yaml"))


def test_work_pool_script_creates_a_process_pool():
    text = (INFRA / "prefect" / "create-work-pool.sh").read_text()
    assert re.search(r'work-pool create "\$POOL" --type process', text)
    assert 'POOL="${1:-align-pool}"' in text


# ------------------------------------------------------------------------------------------ serving


def _serve_configs() -> list[tuple[str, dict]]:
    configs = [("infra/serve/serve-config.yaml", _one(INFRA / "serve" / "serve-config.yaml"))]
    service = _one(INFRA / "k8s" / "rayservice.yaml")
    configs.append(("infra/k8s/rayservice.yaml", yaml.safe_load(service["spec"]["serveConfigV2"])))
    return configs


@pytest.mark.parametrize("name,config", _serve_configs(), ids=[n for n, _ in _serve_configs()])
def test_serve_configs_import_our_app_builder(name, config):
    from components.serving import app as serving_app

    (application,) = config["applications"]
    module, attr = application["import_path"].split(":")
    assert importlib.util.find_spec(module) is not None, f"{name}: {module} not importable"
    assert callable(getattr(importlib.import_module(module), attr))
    args = application["args"]
    assert args["tracking_uri"], "app_builder needs args.tracking_uri"
    assert set(args) <= {"tracking_uri", "serve", "registry", "model_version"}
    ServeConfig.model_validate(args.get("serve") or {})
    RegistryConfig.model_validate(args.get("registry") or {})
    for deployment in application.get("deployments", []):
        assert deployment["name"] == serving_app.DEPLOYMENT_NAME
        assert set(deployment.get("user_config") or {}) <= serving_app.USER_CONFIG_KEYS


def test_local_serve_config_binds_loopback():
    config = _one(INFRA / "serve" / "serve-config.yaml")
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    tracking = config["applications"][0]["args"]["tracking_uri"]
    assert tracking.startswith(("sqlite:////", "http://", "https://")), "SQLite URIs need four slashes"


# --------------------------------------------------------------------------------------- ray cluster


def test_ray_cluster_launcher_config():
    cfg = _one(ROOT / "ray-cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for t in types.values() if "p4d" in t["node_config"]["InstanceType"]
           or t["node_config"]["InstanceType"].startswith(("g5", "g6", "p5"))]
    assert gpu, "a GPU worker group"
    assert any("pip install" in c and "-c constraints.txt" in c and "-e ." in c for c in cfg["setup_commands"])
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c or "ray stop" in c)
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_ray_cluster_launcher_config_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing (starting) Ray
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray not installed")
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    jsonschema.validate(_one(ROOT / "ray-cluster.yaml"), json.loads(schema_path.read_text()))


# ------------------------------------------------------------------------------------------ kubernetes


K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml")) + [INFRA / "mlflow" / "mlflow-k8s.yaml"]


@pytest.mark.parametrize("path", K8S_FILES, ids=_rel)
def test_k8s_manifests_are_well_formed(path):
    for doc in _docs(path):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "align"
        if doc["kind"] in ("RayCluster", "RayJob", "RayService"):
            assert doc["apiVersion"] == "ray.io/v1"
            assert _kube_cluster_spec(doc)["rayVersion"] == _ray_version_pin()


def test_kuberay_token_auth_is_on():
    ray_kinds = {"RayCluster", "RayJob", "RayService"}
    found = set()
    for path in (INFRA / "k8s").glob("*.yaml"):
        for doc in _docs(path):
            if doc.get("kind") not in ray_kinds:
                continue
            found.add(doc["kind"])
            cluster = _kube_cluster_spec(doc)
            if (cluster.get("authOptions") or {}).get("mode") == "token":
                continue  # the operator injects the token and uses it itself
            for container in _kube_containers(doc):
                env = {e["name"]: e for e in container.get("env", [])}
                assert env["RAY_AUTH_MODE"]["value"] == "token", f"{_rel(path)}: {container['name']}"
                assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], "token only from a Secret"
            if cluster.get("enableInTreeAutoscaling"):
                autoscaler_env = {e["name"]: e for e in cluster["autoscalerOptions"]["env"]}
                assert "secretKeyRef" in autoscaler_env["RAY_AUTH_TOKEN"]["valueFrom"]
    assert found == ray_kinds


def test_rayjob_trains_the_paper_recipe():
    job = _one(INFRA / "k8s" / "rayjob-train.yaml")
    words = shlex.split(job["spec"]["entrypoint"].split("&&")[-1])
    assert words[:4] == ["align", "train", "--config", "configs/paper-b7-bert-base.yaml"]
    cfg = load_config(ROOT / words[3], words[4:])  # the overrides are valid config keys
    gpus = sum(int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
               * g["replicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.train.use_gpu and cfg.train.num_workers == gpus, "one Train worker per GPU"


def test_rayservice_and_rayjob_use_the_mlflow_service():
    mlflow_service = next(d for d in _docs(INFRA / "mlflow" / "mlflow-k8s.yaml") if d["kind"] == "Service")
    host = f"{mlflow_service['metadata']['name']}.{mlflow_service['metadata']['namespace']}.svc.cluster.local"
    url = f"http://{host}:{mlflow_service['spec']['ports'][0]['port']}"
    service = yaml.safe_load(_one(INFRA / "k8s" / "rayservice.yaml")["spec"]["serveConfigV2"])
    assert service["applications"][0]["args"]["tracking_uri"] == url
    assert f"storage.tracking_uri={url}" in _one(INFRA / "k8s" / "rayjob-train.yaml")["spec"]["entrypoint"]


# --------------------------------------------------------------------------------------- docker, mlflow


def test_dockerfile_basics():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "-c constraints.txt" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r'^ENTRYPOINT \["align"\]', text, re.M)
    for needed in ("configs", "flows", "components", "align_cli"):
        assert re.search(rf"^COPY {needed} ", text, re.M), needed


def test_mlflow_server_script_defaults_to_loopback_and_env_uris():
    text = (INFRA / "mlflow" / "run-mlflow-server.sh").read_text()
    assert 'HOST="${MLFLOW_HOST:-127.0.0.1}"' in text
    assert "${MLFLOW_BACKEND_STORE_URI:?" in text and "${MLFLOW_ARTIFACT_ROOT:?" in text
    assert "--backend-store-uri" in text and "--default-artifact-root" in text


# ------------------------------------------------------------------------------------- cross-cutting


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=_rel)
def test_referenced_recipes_exist(path):
    for recipe in set(re.findall(r"\bconfigs/[\w.-]+\.ya?ml\b", path.read_text())):
        assert (ROOT / recipe).is_file(), f"{_rel(path)} references missing {recipe}"


SECRET_PATTERNS = [
    re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}", re.I),
    re.compile(r"aws_access_key_id\s*[:=]\s*['\"]?[A-Z0-9]{8,}", re.I),
    re.compile(r"\bA(KI|SI)A[0-9A-Z]{16}\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(password|passwd|secret_key|api_key)\s*[:=]\s*['\"]?[^\s'\"$<{]{4,}", re.I),
    re.compile(r"://[^/\s:@]+:[^/\s@$<{]+@"),  # credentials inside a URI
]


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=_rel)
def test_no_plaintext_secrets(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{_rel(path)}: looks like a secret ({pattern.pattern})"
    if path.suffix in (".yaml", ".yml"):
        for doc in _docs(path):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                pytest.fail(f"{_rel(path)}: Secrets are created out of band, not committed")


def test_ray_tokens_only_come_from_secrets():
    for path in K8S_FILES:
        for match in re.finditer(r"name:\s*RAY_AUTH_TOKEN\s*\n\s*(\w+):", path.read_text()):
            assert match.group(1) == "valueFrom", f"{_rel(path)}: RAY_AUTH_TOKEN must come from a Secret"


@pytest.mark.parametrize("path", [p for p in DEPLOY_FILES if p.suffix != ".md"], ids=_rel)
def test_all_interfaces_only_inside_kubernetes(path):
    """0.0.0.0 is for pods behind ClusterIP Services; everything else that listens stays on loopback."""
    if path in K8S_IN_CLUSTER:
        return
    assert "0.0.0.0" not in _uncommented(path.read_text()), f"{_rel(path)} binds all interfaces"


def test_local_services_bind_loopback():
    datasource = _one(DASHBOARDS / "grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert datasource["url"].startswith("http://127.0.0.1:")
    assert "--web.listen-address=127.0.0.1:" in (DASHBOARDS / "prometheus.yml").read_text()
    assert "--dashboard-host=127.0.0.1" in (ROOT / "ray-cluster.yaml").read_text()
    assert "--host 127.0.0.1" in (DASHBOARDS / "README.md").read_text()  # the MLflow UI command


REGISTRY_HOSTS = ("pypi.org", "pythonhosted.org", "download.pytorch.org", "docker.io", "ghcr.io", "quay.io",
                  "registry.k8s.io", "gcr.io", "ecr.aws", "npmjs")


@pytest.mark.parametrize("path", DEPLOY_FILES + [DASHBOARDS / "README.md"], ids=_rel)
def test_no_package_registry_hosts(path):
    text = path.read_text().lower()
    assert not [h for h in REGISTRY_HOSTS if h in text], f"{_rel(path)} names a registry host"

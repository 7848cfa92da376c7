#!/usr/bin/env bash
# Start the MLflow tracking server (UI, REST API, model registry) for the ALIGN platform.
#
#   export MLFLOW_BACKEND_STORE_URI=sqlite:////srv/mlflow/mlflow.db      # four slashes: absolute path
#   export MLFLOW_ARTIFACT_ROOT=s3://my-bucket/align/mlartifacts
#   infra/mlflow/run-mlflow-server.sh
#
# Environment:
#   MLFLOW_BACKEND_STORE_URI  required: sqlite:////abs/path/mlflow.db, or postgresql+psycopg2://user@host:5432/db
#                             (password from ~/.pgpass, PGPASSWORD or a k8s Secret, never a file in the
#                             repository; Postgres also needs `pip install psycopg2-binary`, which is
#                             not part of constraints.txt). The URI is never echoed.
#                             MLflow >= 3.13 refuses the plain file store.
#   MLFLOW_ARTIFACT_ROOT      required: default artifact root for new experiments, e.g. s3://bucket/prefix
#   MLFLOW_HOST               bind address, default 127.0.0.1 (local only). On a Ray cluster the Train
#                             workers and Serve replicas must reach it: bind the head's private IP
#                             and keep the port closed to everything but the cluster's security group.
#   MLFLOW_PORT               default 5000
#   MLFLOW_WORKERS            server worker processes, default 2
#   MLFLOW_ALLOWED_HOSTS      Host headers to accept when reached by name (e.g. mlflow,mlflow:5000);
#                             MLflow's default accepts localhost and private IPs only.
#   AWS_ENDPOINT_URL          optional S3-compatible endpoint (MinIO, moto, ...); credentials come from
#                             the standard AWS chain (instance profile, AWS_PROFILE, env), never this file.
#
# Artifacts are not proxied (--no-serve-artifacts): the platform's clients (Ray Train rank 0, the
# registry stage, Serve replicas) read and write the artifact root directly, because each experiment is
# created with an explicit location under storage.artifact_uri (components/runtime/tracking.py). So the
# clients need S3 access themselves; the server needs it only to show artifacts in the UI.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. sqlite:////abs/path/mlflow.db}"
: "${MLFLOW_ARTIFACT_ROOT:?set MLFLOW_ARTIFACT_ROOT, e.g. s3://my-bucket/align/mlartifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MLFLOW="${MLFLOW_BIN:-}"
if [[ -z "$MLFLOW" ]]; then
  if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then MLFLOW="$ROOT/.venv/bin/mlflow"; else MLFLOW="mlflow"; fi
fi
PYTHON="$(dirname "$(command -v "$MLFLOW")")/python"
[[ -x "$PYTHON" ]] || PYTHON=python3

case "$MLFLOW_BACKEND_STORE_URI" in
  sqlite:////*)
    mkdir -p "$(dirname "${MLFLOW_BACKEND_STORE_URI#sqlite:///}")" ;;
  sqlite:///*)
    echo "MLFLOW_BACKEND_STORE_URI must be an absolute SQLite path: sqlite:////abs/path/mlflow.db" >&2
    exit 2 ;;
  postgresql*)
    if ! "$PYTHON" -c "import psycopg2" 2>/dev/null; then
      echo "a Postgres backend needs psycopg2: $PYTHON -m pip install psycopg2-binary" >&2
      exit 2
    fi ;;
esac

# MLflow's S3 client reads its own variable for a custom endpoint; keep it in step with the standard one.
if [[ -n "${AWS_ENDPOINT_URL:-}" && -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]]; then
  export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
fi

args=(server
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
  --default-artifact-root "$MLFLOW_ARTIFACT_ROOT"
  --no-serve-artifacts
  --host "$HOST" --port "$PORT" --workers "$WORKERS")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

echo "MLflow: http://$HOST:$PORT  backend=${MLFLOW_BACKEND_STORE_URI%%://*}  artifacts=$MLFLOW_ARTIFACT_ROOT" >&2
exec "$MLFLOW" "${args[@]}"

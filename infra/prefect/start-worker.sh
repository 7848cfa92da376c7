#!/usr/bin/env bash
# Start a Prefect worker that polls `align-pool` and runs each flow run as a local process.
#
# Run it where the flows should execute, with the project installed in the environment:
#   - embedded recipe: your machine (the flow starts its own local Ray head under $ALIGN_HOME);
#   - paper recipes: the Ray head of ray-cluster.yaml, e.g.
#       ray exec ray-cluster.yaml --tmux 'cd ~/align && infra/prefect/start-worker.sh'
# Keep it running (tmux, systemd, a k8s Deployment): scheduled runs only start while a worker polls.
#
# The worker's environment is the flow runs' environment: PREFECT_API_URL, RAY_AUTH_MODE=token,
# ALIGN_PROJECT_DIR (prefect.yaml's pull step changes into it) and, for S3, the standard AWS chain
# (instance profile, AWS_PROFILE, ...) plus AWS_ENDPOINT_URL for an S3-compatible store.
#
# Usage: infra/prefect/start-worker.sh [POOL_NAME]      (default: align-pool)
set -euo pipefail

POOL="${1:-align-pool}"
# shellcheck source=infra/prefect/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

export ALIGN_PROJECT_DIR="${ALIGN_PROJECT_DIR:-$ROOT}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"   # Ray 2.60's default; keep it on
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

cd "$ALIGN_PROJECT_DIR"
# --no-create-pool-if-not-found: the pool (and its concurrency limit) comes from
# create-work-pool.sh; a typo in the name should fail here, not silently create a second pool.
exec "$PREFECT" worker start --pool "$POOL" --type process --no-create-pool-if-not-found \
  --name "align-worker-$(hostname -s)"

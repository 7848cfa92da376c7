#!/usr/bin/env bash
# Create the `align-pool` work pool that prefect.yaml's deployments submit to (idempotent).
#
# A *process* pool: the worker runs each flow run as a subprocess on its own machine, inside the
# project's virtual environment. That is what the lifecycle needs: its heavy stages are Ray Data /
# Ray Train calls made from ordinary Prefect tasks (ARCHITECTURE.md, decisions), so the worker only has to be a
# machine that can reach the Ray cluster (a laptop for the embedded recipe, the Ray head on a
# cluster), not a container platform.
#
# Needs a real Prefect server: `prefect server start --host 127.0.0.1` (or Prefect Cloud) and
# PREFECT_API_URL pointing at it. Without PREFECT_API_URL, Prefect would create the pool in a
# temporary ephemeral server that disappears when this script ends.
#
# Usage: infra/prefect/create-work-pool.sh [POOL_NAME]      (default: align-pool)
set -euo pipefail

POOL="${1:-align-pool}"
# shellcheck source=infra/prefect/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ -z "${PREFECT_API_URL:-}" ]]; then
  PREFECT_API_URL="$("$PREFECT" config view --show-defaults 2>/dev/null | sed -n "s/^PREFECT_API_URL='\(.*\)'.*/\1/p" | head -n1)"
fi
if [[ -z "${PREFECT_API_URL:-}" || "$PREFECT_API_URL" == "None" ]]; then
  echo "PREFECT_API_URL is not set: start a server (prefect server start --host 127.0.0.1) and" >&2
  echo "  export PREFECT_API_URL=http://127.0.0.1:4200/api   (or: prefect config set PREFECT_API_URL=...)" >&2
  exit 2
fi
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"

if "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  echo "work pool '$POOL' already exists on $PREFECT_API_URL"
else
  "$PREFECT" work-pool create "$POOL" --type process
fi
# One lifecycle at a time per pool: two concurrent runs would compete for the same Ray cluster and
# could race on the registry's `champion` alias.
"$PREFECT" work-pool set-concurrency-limit "$POOL" 1

echo
echo "Next:"
echo "  $PREFECT deploy --all                    # from $ROOT (reads prefect.yaml)"
echo "  infra/prefect/start-worker.sh $POOL      # on the machine that should run the flows"

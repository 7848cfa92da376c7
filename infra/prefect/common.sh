#!/usr/bin/env bash
set -euo pipefail  # also set by the callers; stated here so the file is safe on its own
# Sourced by the scripts beside it: the project root and the `prefect` to call
# ($PREFECT_BIN, else the project's .venv, else whatever is on PATH).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFECT="${PREFECT_BIN:-}"
if [[ -z "$PREFECT" ]]; then
  if [[ -x "$ROOT/.venv/bin/prefect" ]]; then PREFECT="$ROOT/.venv/bin/prefect"; else PREFECT="prefect"; fi
fi

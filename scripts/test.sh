#!/usr/bin/env bash
# Install (if needed) and run the whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/mypy ingestflow flows tasks storage api deployments bench
exec .venv/bin/pytest --durations=25 "$@"

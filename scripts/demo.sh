#!/usr/bin/env bash
# Install, ingest the sample documents through the Prefect ingest flow into the embedded
# Postgres + pgvector, and run a search. Re-running it finds everything unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

export HF_HUB_OFFLINE=1
.venv/bin/ingestflow ingest samples/ --collection samples
.venv/bin/ingestflow search "how long should a client wait after HTTP 429?" --collection samples -k 3

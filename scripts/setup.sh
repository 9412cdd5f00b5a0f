#!/usr/bin/env bash
# Create .venv and install ingestflow with its extras; does nothing when already up to date.
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.ingestflow-installed
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing ingestflow and its dependencies into .venv (first run takes a few minutes)..."
    log=.venv/install.log
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
           .venv/bin/python -m pip install --disable-pip-version-check -e ".[local,dev]"; } >"$log" 2>&1; then
        tail -40 "$log"
        echo "installation failed; the full log is in $log" >&2
        exit 1
    fi
    echo "$wanted" > "$stamp"
fi

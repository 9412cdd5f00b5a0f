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
           .venv/bin/python -m pip install --disable-pip-version-check -e ".[local,dev,stores,bench,sentry]"; } >"$log" 2>&1; then
        tail -40 "$log"
        echo "installation failed; the full log is in $log" >&2
        exit 1
    fi
    echo "$wanted" > "$stamp"
fi

# Azurite, the Azure Blob emulator the object-store tests run against, from npm.
AZURITE_VERSION=3.37.0
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" .tools/node_modules/azurite/package.json; then
    if ! command -v npm >/dev/null; then
        echo "npm not found: install Node.js and npm to run the Azure Blob tests" >&2
    else
        echo "installing azurite $AZURITE_VERSION into .tools/ ..."
        mkdir -p .tools
        if ! npm install --prefix .tools --no-audit --no-fund --loglevel=error \
                "azurite@$AZURITE_VERSION" >.tools/install.log 2>&1; then
            tail -20 .tools/install.log
            echo "azurite installation failed; the full log is in .tools/install.log" >&2
            exit 1
        fi
    fi
fi

# Debian's Chromium (and the fonts it recommends), for the browser tests to render pages.
if [ ! -x /usr/bin/chromium ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    if ! command -v apt-get >/dev/null; then
        echo "apt-get not found: install Chromium at /usr/bin/chromium to run the browser tests" >&2
    else
        echo "installing chromium from Debian's packages ..."
        mkdir -p .tools
        if ! { $sudo apt-get update -qq &&
               $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                   --no-install-recommends chromium fonts-liberation; } >.tools/chromium-install.log 2>&1; then
            tail -20 .tools/chromium-install.log
            echo "chromium installation failed; the full log is in .tools/chromium-install.log" >&2
            exit 1
        fi
    fi
fi

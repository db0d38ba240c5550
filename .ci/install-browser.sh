#!/usr/bin/env bash
# Prerequisites of tests/test_browser.py: Debian's chromium + chromium-driver (apt, as root) and the
# Python packages of requirements-browser.txt (playwright, which drives /usr/bin/chromium through
# executable_path). Never runs `playwright install`: no browser download. Idempotent and quiet when done.
# Usage: bash .ci/install-browser.sh   (from anywhere; uses the repo's .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-browser: /usr/bin/chromium is missing and this is not root;" >&2
        echo "  run as root: apt-get update && apt-get install -y chromium chromium-driver" >&2
        exit 1
    fi
    echo "install-browser: installing chromium and chromium-driver with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq chromium chromium-driver >/dev/null; }
    if ! apt_install; then
        apt-get update -qq >/dev/null
        apt_install
    fi
fi

if [ ! -x "$PY" ]; then
    echo "install-browser: $PY not found; create the venv first (make setup)" >&2
    exit 1
fi
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements-browser.txt
"$PY" -c "import playwright" 2>/dev/null || { echo "install-browser: playwright did not import" >&2; exit 1; }
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null | head -1); playwright $("$PY" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p')"

#!/usr/bin/env bash
# The test suite on a bare machine (Python 3.11 + pip): installs what it needs, checks the
# import contracts (lint-imports), starts a PostgreSQL server on loopback for the storage
# tests, runs pytest on 2 workers.
FMS_EXTRAS=dev,dashboard,lightning,transformers,peft
source "$(dirname "$0")/_env.sh"
# Import-layer contracts (.importlinter) first: a second or so, and no point testing if broken.
lint-imports --no-cache || { echo "lint-imports: import contracts broken (see above)" >&2; exit 1; }
source scripts/_postgres.sh
# Headless Chromium for tests/test_dashboard_browser.py (which fails under CI=true without it).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
        chromium-driver >/dev/null) || echo "could not install chromium" >&2
fi
python -m pytest -n 2 -p no:cacheprovider --durations=15 "$@"

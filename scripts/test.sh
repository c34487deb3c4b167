#!/usr/bin/env bash
# The test suite on a bare machine (Python 3.11 + pip): installs what it needs, starts a
# PostgreSQL server on loopback for the storage tests, runs pytest on 2 workers.
FMS_EXTRAS=dev,dashboard,lightning,transformers
source "$(dirname "$0")/_env.sh"
source scripts/_postgres.sh
python -m pytest -n 2 -p no:cacheprovider --durations=15 "$@"

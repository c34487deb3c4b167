#!/usr/bin/env bash
# The documentation site (user guide, API reference, CLI) into docs/_build/html, with warnings
# as errors as tests/test_docs.py builds it. Installs what it needs into .venv (the test suite's
# extras: the integration pages import Lightning and transformers).
# Usage: bash scripts/docs.sh [sphinx-build options]
FMS_EXTRAS=dev,dashboard,lightning,transformers,peft
source "$(dirname "$0")/_env.sh"
python -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
echo "built: docs/_build/html/index.html"

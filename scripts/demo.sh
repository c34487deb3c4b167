#!/usr/bin/env bash
# The main job: an FMS study training small PyTorch models on scikit-learn's digits.
# Usage: bash scripts/demo.sh [options of `optuna-fms demo`]
FMS_EXTRAS=dashboard
source "$(dirname "$0")/_env.sh"
exec optuna-fms demo "$@"

"""``python -m optuna_fms.bench --hub zoo``: same as ``optuna-fms build-hub``."""

from __future__ import annotations

import sys

from optuna_fms.bench._build import main_build


if __name__ == "__main__":
    sys.exit(main_build())

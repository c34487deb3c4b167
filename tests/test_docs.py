"""The documentation site (docs/): built with warnings as errors, it documents every public name.

The build runs ``sphinx-build -W --keep-going`` on a copy of docs/ (autosummary writes its stub
pages into the source folder), once per test run, shared by the pytest-xdist workers; the tests
read its warnings and its ``objects.inv``, the inventory of every documented Python object.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from sphinx.util.inventory import InventoryFile

import optuna_fms
from optuna_fms._cli import _COMMANDS
import optuna_fms.integration
import optuna_fms.metanet
import optuna_fms.metanet.layers


DOCS = Path(__file__).resolve().parent.parent / "docs"


class _Site:
    def __init__(self, out: Path, returncode: int, log: str) -> None:
        self.out = out
        self.returncode = returncode
        self.log = log
        self.objects: set[str] = set()
        if (out / "objects.inv").is_file():
            with open(out / "objects.inv", "rb") as f:
                inventory = InventoryFile.load(f, "", lambda base, uri: uri)
            self.objects = {name for entries in inventory.values() for name in entries}


def _build(root: Path) -> dict[str, object]:
    src = root / "src"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns("_build", "generated"))
    out = root / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(root / "doctrees"), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {"out": str(out), "returncode": proc.returncode, "log": proc.stdout + proc.stderr}


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> _Site:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:  # one process: a fresh folder
        root = tmp_path_factory.mktemp("docs")
    else:  # the first xdist worker builds, the others wait for it and read its result
        root = tmp_path_factory.getbasetemp().parent / f"docs-{run}"
        root.mkdir(exist_ok=True)
    result_file = root / "result.json"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result_file.exists():
            result_file.write_text(json.dumps(_build(root)))
    result = json.loads(result_file.read_text())
    return _Site(Path(result["out"]), result["returncode"], result["log"])


def test_docs_build_without_warnings(site: _Site) -> None:
    assert site.returncode == 0, site.log
    assert "WARNING" not in site.log, site.log
    for page in ("index", "why-fms", "usage", "benchmarks", "reference/cli"):
        assert (site.out / f"{page}.html").is_file()


def _qualified_public_names() -> list[str]:
    names = [f"optuna_fms.{name}" for name in optuna_fms.__all__]
    # Re-exported lazily by optuna_fms.integration, documented in their submodules.
    names += [f"{optuna_fms.integration._LAZY[n]}.{n}" for n in optuna_fms.integration.__all__]
    for module in (optuna_fms.metanet, optuna_fms.metanet.layers):
        names += [f"{module.__name__}.{name}" for name in module.__all__]
    return names


def test_every_public_name_is_documented(site: _Site) -> None:
    names = _qualified_public_names()
    missing = [name for name in names if name not in site.objects]
    assert not missing, f"public names missing from the API reference: {missing}"


def test_cli_reference_lists_every_command(site: _Site) -> None:
    page = (site.out / "reference" / "cli.html").read_text()
    for command in _COMMANDS:
        assert f'id="optuna-fms-{command}"' in page, command

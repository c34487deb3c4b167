"""optuna-fms under the oldest Optuna it supports (the floor of ``optuna`` in pyproject.toml).

The newest end is the environment itself: ``constraints.txt`` does not pin Optuna, so an
install resolves to the newest release in the index, and tests/test_deprecations.py runs there.
This file tests the other end:

- The floor is read from pyproject.toml's ``dependencies`` (``optuna>=X``), and Optuna ``X``'s
  wheel is downloaded once (``pip download --no-deps``) into a cache,
  ``$XDG_CACHE_HOME/optuna-fms/wheels`` (``~/.cache/optuna-fms/wheels`` by default), then
  installed ``--no-deps`` from there into a throwaway target folder: a second or two.
- A subprocess with that folder first on ``sys.path`` (``PYTHONPATH``; Optuna's own
  dependencies come from this environment, and the test checks that they satisfy the old
  Optuna's requirements) asserts that the Optuna it imports is the old one, from that folder,
  then runs (a) ``check_an_fms_study`` of tests/test_deprecations.py: the short FMS study
  (``FMSSampler`` with the shipped metanetwork, ``FMSPruner``, SQLite, checkpoints, continued
  trials, forecasts, a warm-started second study) that fails on any deprecation warning from
  optuna-fms, and (b) a second session on the same SQLite storage: a new sampler and pruner
  load the study and go on until a trial continues, from its checkpoint, a trial that the first
  session paused.

When the wheel cannot be downloaded or installed the test fails under CI (``CI`` set, as in
tests/extras.py) and is skipped elsewhere, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import subprocess
import sys

from extras import unavailable
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename
from packaging.version import Version
import pytest

import optuna_fms


ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PACKAGE = Path(optuna_fms.__file__).resolve().parent
INSTALL_TIMEOUT_S = 300
STUDY_TIMEOUT_S = 300


def _floor(name: str) -> Version:
    """The lower bound (``>=``) of dependency ``name`` in pyproject.toml."""
    # A regular expression, not tomllib: the tests run on Python 3.10 as well.
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert block, "no dependencies in pyproject.toml"
    for line in re.findall(r'^\s*"([^"]+)",?\s*$', block.group(1), re.MULTILINE):
        requirement = Requirement(line)
        if requirement.name.lower() == name:
            bounds = [s.version for s in requirement.specifier if s.operator == ">="]
            assert len(bounds) == 1, f"{line!r}: one '>=' bound expected"
            return Version(bounds[0])
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "optuna-fms" / "wheels"


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("PIP_CONSTRAINT", None)  # tox's constraints.txt is for this environment
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    return subprocess.run(
        cmd, env=_pip_env(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
    )


def _cached_wheel(name: str, version: Version) -> Path | None:
    for path in sorted(_cache().glob(f"{name}-*.whl")):
        _, wheel_version, _, tags = parse_wheel_filename(path.name)
        if wheel_version == version and any(t.interpreter.startswith("py3") for t in tags):
            return path
    return None


def _install(name: str, version: Version, target: Path) -> None:
    """``name==version`` (a pure-Python wheel) into ``target``, without its dependencies."""
    wheel = _cached_wheel(name, version)
    if wheel is None:
        _cache().mkdir(parents=True, exist_ok=True)
        args = ["--no-deps", "--only-binary", ":all:", "--dest", str(_cache())]
        proc = _pip("download", "-q", *args, f"{name}=={version}")
        wheel = _cached_wheel(name, version)
        if proc.returncode != 0 or wheel is None:
            unavailable(f"could not download {name}=={version}: {proc.stderr[-2000:]}")
            return
    proc = _pip("install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel))
    if proc.returncode != 0:
        unavailable(f"could not install {wheel.name}: {proc.stderr[-2000:]}")


# What runs under the old Optuna. argv: the old Optuna's folder, the expected version, the
# study's folder, the folder of the optuna_fms under test.
_SCRIPT = """
import importlib.metadata
import json
from pathlib import Path
import sys

from packaging.requirements import Requirement
from packaging.version import Version
import torch

site, expected, folder = sys.argv[1], Version(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)

import optuna

assert Version(optuna.__version__) == expected, optuna.__version__
assert Path(optuna.__file__).resolve().is_relative_to(Path(site).resolve()), optuna.__file__
unmet = []
for line in importlib.metadata.requires("optuna") or []:
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    installed = importlib.metadata.version(requirement.name)
    if not requirement.specifier.contains(installed, prereleases=True):
        unmet.append(f"{line} (installed: {installed})")
assert not unmet, unmet

import optuna_fms
import test_deprecations as td

assert Path(optuna_fms.__file__).resolve().parent == Path(sys.argv[4]), optuna_fms.__file__

# (a) The FMS study, failing on a deprecation warning from optuna-fms.
storage = td.check_an_fms_study(folder)

# (b) A second session on the same storage continues a trial that the first one paused.
store = optuna.artifacts.FileSystemArtifactStore(str(folder))
with td.deprecations() as emitted:
    study = optuna.load_study(
        study_name="first",
        storage=storage,
        sampler=optuna_fms.FMSSampler(
            artifact_store=store, seed=2, weights="gmn", n_scratch_epochs=30
        ),
        pruner=optuna_fms.FMSPruner(max_steps=td.MAX_STEPS),
    )
    before = len(study.trials)
    continued = []
    while len(study.trials) < before + 12 and not continued:
        study.optimize(td.objective, n_trials=1)
        attrs = study.trials[-1].user_attrs
        parent = (attrs.get("fms:continues") or {}).get("trial")
        if parent is not None and parent < before and attrs.get("fms:resumed"):
            continued.append(study.trials[-1])
mine = [str(w) for w in emitted if td.ours(w)]
assert not mine, "\\n\\n".join(mine)
assert continued, "the second session continued no trial of the first"
trial = continued[0]
parent = study.trials[trial.user_attrs["fms:continues"]["trial"]]
step = trial.user_attrs["fms:continues"]["step"]
assert parent.state == optuna.trial.TrialState.PRUNED and "fms:paused" in parent.user_attrs
assert max(trial.intermediate_values) > step
print(json.dumps({
    "optuna": optuna.__version__,
    "trials": len(study.trials),
    "first_session": before,
    "continued": [parent.number, trial.number, step],
}))
"""


def test_the_oldest_supported_optuna_runs_an_fms_study(tmp_path: Path) -> None:
    floor = _floor("optuna")
    site = tmp_path / "site"
    _install("optuna", floor, site)
    folder = tmp_path / "study"
    folder.mkdir()
    env = _pip_env()
    # The old Optuna first, then tests/, then the folder of the optuna_fms under test (the one
    # this process imports: the repository's, or an installed one).
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS), str(PACKAGE.parent)])
    env["OMP_NUM_THREADS"] = "1"  # far faster on cores shared with other jobs
    cmd = [sys.executable, "-c", _SCRIPT, str(site), str(floor), str(folder), str(PACKAGE)]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Version(result["optuna"]) == floor
    assert result["trials"] > result["first_session"]


def test_the_floor_is_read_from_pyproject() -> None:
    # What the test above installs is pyproject.toml's floor, which this environment's Optuna
    # (the newest end) satisfies.
    import optuna

    floor = _floor("optuna")
    assert floor <= Version(optuna.__version__), (floor, optuna.__version__)
    with pytest.raises(AssertionError, match="not a dependency"):
        _floor("no-such-package")


def test_the_optunahub_package_lists_the_tested_floor() -> None:
    # The registry's optuna_versions are the versions the package was tested with: the floor
    # (tested above) is one of them.
    readme = (ROOT / "optunahub" / "package" / "samplers" / "fms" / "README.md").read_text()
    match = re.search(r"^optuna_versions: \[(.*)\]$", readme, re.MULTILINE)
    assert match, "no optuna_versions line in the OptunaHub README"
    listed = [Version(v.strip()) for v in match.group(1).split(",")]
    assert _floor("optuna") in listed, listed

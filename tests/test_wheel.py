"""The wheel and the sdist: built with ``python -m build``, installed (not editable) into a fresh
virtual environment, and run from there: ``optuna-fms demo`` and the README's usage snippet.

- The build: ``python -m build --no-isolation`` (the sdist, then the wheel built from the
  unpacked sdist, as a release does) on a copy of the build inputs in a temporary folder, so
  that the repository's working tree gets no ``build/`` or ``*.egg-info`` from it. Without
  isolation the build uses the setuptools installed here instead of downloading one: offline,
  and a few seconds. Their contents are checked: every module, the shipped metanetwork files,
  LICENSE (MIT) in both, CHANGELOG.md with the version in the sdist, no tests, caches or
  build outputs.
- The fresh environment: ``python -m venv --without-pip``, whose site-packages gets one
  ``.pth`` file holding the path of this environment's site-packages, so that the installed
  dependencies (torch, gpytorch, PyTorch Geometric, Optuna, ...) are importable without
  installing them again (minutes and gigabytes per run). A path line in a ``.pth`` file only
  appends that folder to ``sys.path``: the ``.pth`` files inside it are not processed, so the
  import hook of the repository's editable install (``__editable__.optuna_fms-*.pth``) is never
  installed and the repository's ``optuna_fms`` stays invisible (checked below before the
  install). The wheel is then installed by ``pip install --no-deps --ignore-installed``: a
  real, non-editable install whose files are copied into the fresh environment's
  site-packages, with its own ``optuna-fms`` console script (pip itself is this
  environment's, found through the same ``.pth``). The tests assert that ``optuna_fms`` is
  imported from there, not from the repository, and that the wheel's declared requirements
  are satisfied by what the environment sees.
- ``optuna-fms demo --epochs 30`` and the README's ``## Usage`` snippet (read from README.md,
  with a tiny model and train step defined around it and a smaller budget) run from that
  environment in a temporary working folder, SQLite storage there; ``FMSSampler(weights="gmn")``
  loads the metanetwork shipped in the wheel. They run with one torch thread
  (``OMP_NUM_THREADS=1``): far faster on cores shared with other jobs.

``build`` comes with the ``dev`` extra: without it the tests fail in CI (``CI`` set) and are
skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

from extras import require
from packaging.requirements import Requirement
import pytest


ROOT = Path(__file__).resolve().parents[1]
# What the build reads: the project's metadata, the sdist's extra files and the package.
BUILD_INPUTS = ("pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "CHANGELOG.md")
# The package's files that are not modules (the pretrained metanetworks); git's list of
# optuna_fms/ is read as well, so that a data file added later must ship too.
SHIPPED_DATA = {
    "optuna_fms/metanet/pretrained_gmn.safetensors",
    "optuna_fms/bench/metanets/without-arch.safetensors",
    "optuna_fms/bench/metanets/without-zoo.safetensors",
}
MAX_SDIST_BYTES = 2_000_000
MAX_WHEEL_BYTES = 2_000_000


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for the fresh environment's processes: nothing that adds paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    # One torch thread: on 2 cores shared with other jobs, torch's default thread pool made the
    # demo take 60-70 s instead of 12 s.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PIP_CONSTRAINT", None)
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc


# --- Building ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel (built from that sdist) of the working tree, in a temp folder."""
    require("build")
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]")
    shutil.copytree(ROOT / "optuna_fms", src / "optuna_fms", ignore=ignore)
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)]
    _run(cmd, cwd=tmp, timeout=300)
    version = _version()
    sdist = out / f"optuna_fms-{version}.tar.gz"
    wheel = out / f"optuna_fms-{version}-py3-none-any.whl"
    assert sorted(p.name for p in out.iterdir()) == sorted([sdist.name, wheel.name])
    return {"sdist": sdist, "wheel": wheel}


def _shipped_data() -> set[str]:
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "optuna_fms"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):  # not a git checkout
        tracked = []
    return SHIPPED_DATA | {p for p in tracked if not p.endswith(".py")}


def _package_modules() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "optuna_fms").rglob("*.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_holds_the_package_its_data_and_the_license(dists: dict[str, Path]) -> None:
    version = _version()
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"optuna_fms-{version}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert _package_modules() <= names, sorted(_package_modules() - names)
    assert _shipped_data() <= names, sorted(_shipped_data() - names)
    stray = sorted(n for n in names if n.endswith((".pyc", ".db", ".log")) or "/tests/" in n)
    assert not stray, stray
    assert {n.split("/")[0] for n in names} == {"optuna_fms", info}
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nLicense-File: LICENSE\n" in metadata
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "optuna-fms = optuna_fms._cli:main" in entry_points
    assert dists["wheel"].stat().st_size < MAX_WHEEL_BYTES


def _read(tar: tarfile.TarFile, name: str) -> str:
    file = tar.extractfile(name)
    assert file is not None, f"{name} is not a file in the sdist"
    return file.read().decode()


def test_the_sdist_holds_the_sources_license_and_changelog_only(dists: dict[str, Path]) -> None:
    version = _version()
    top = f"optuna_fms-{version}"
    with tarfile.open(dists["sdist"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        changelog = _read(tar, f"{top}/CHANGELOG.md")
        license_text = _read(tar, f"{top}/LICENSE")
    files = {n.removeprefix(f"{top}/") for n, m in members.items() if m.isfile()}
    package = {f for f in files if f.startswith("optuna_fms/")}
    assert package == _package_modules() | _shipped_data()
    assert {f for f in files if "/" not in f} == {
        "CHANGELOG.md",
        "LICENSE",
        "MANIFEST.in",
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",  # setuptools' egg_info tag settings, always written
    }
    others = sorted(
        f for f in files if "/" in f and not f.startswith(("optuna_fms/", "optuna_fms.egg-info/"))
    )
    assert not others, others  # no tests/, docs/, benchmarks/, caches or build outputs
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "optuna-fms contributors" in license_text
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, re.MULTILINE), (
        f"CHANGELOG.md has no section for version {version}"
    )
    assert dists["sdist"].stat().st_size < MAX_SDIST_BYTES


def test_the_package_version_is_the_projects() -> None:
    import optuna_fms

    assert optuna_fms.__version__ == _version()


# --- The fresh environment -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_env(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed (not editable); see the docstring."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent, timeout=60)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=venv.parent,
        timeout=60,
    ).stdout.strip()
    ours = sysconfig.get_path("purelib")
    Path(purelib, "_optuna_fms_test_dependencies.pth").write_text(ours + "\n")
    # Before the install: the dependencies are importable, the repository's optuna_fms is not
    # (the editable install's hook in `ours` is not run). Under tox, `ours` holds a regular
    # install of the package, which the fresh environment's own site-packages will shadow.
    probe = (
        "import importlib.util as u, torch; s = u.find_spec('optuna_fms'); "
        "print(s.origin if s else '')"
    )
    found = _run([str(python), "-c", probe], cwd=venv.parent, timeout=120).stdout.strip()
    assert not found or not Path(found).is_relative_to(ROOT / "optuna_fms"), found
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",
            "--no-index",
            "--disable-pip-version-check",
            str(dists["wheel"]),
        ],
        cwd=venv.parent,
        timeout=120,
    )
    return venv


_WHERE = """
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
import optuna_fms
from optuna_fms.metanet._pretrained import SHIPPED_FILE

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

dist = md.distribution("optuna-fms")
requires = dist.requires or []
print(json.dumps({
    "file": optuna_fms.__file__,
    "version": optuna_fms.__version__,
    "dist_version": dist.version,
    "purelib": str(dist.locate_file("")),
    "requires": requires,
    "installed": {Requirement(r).name: version(Requirement(r).name) for r in requires},
    "direct_url": dist.read_text("direct_url.json"),
    "shipped": str(SHIPPED_FILE),
    "sys_path": sys.path,
}))
"""


def test_the_fresh_environment_imports_the_installed_wheel(fresh_env: Path) -> None:
    python = fresh_env / "bin" / "python"
    facts = json.loads(_run([str(python), "-c", _WHERE], cwd=fresh_env, timeout=120).stdout)
    purelib = Path(facts["purelib"])
    assert purelib.is_relative_to(fresh_env)
    assert Path(facts["file"]).is_relative_to(purelib)
    assert not Path(facts["file"]).is_relative_to(ROOT)
    assert facts["version"] == facts["dist_version"] == _version()
    # A wheel install, not an editable one (an editable install records "dir_info").
    assert "editable" not in (facts["direct_url"] or "")
    assert str(ROOT) not in facts["sys_path"]
    # The shipped metanetwork is the wheel's copy, byte for byte the repository's.
    shipped = Path(facts["shipped"])
    assert shipped.is_relative_to(purelib)
    repo_file = ROOT / "optuna_fms" / "metanet" / "pretrained_gmn.safetensors"
    assert hashlib.sha256(shipped.read_bytes()).digest() == (
        hashlib.sha256(repo_file.read_bytes()).digest()
    )
    # The wheel's declared requirements (not those of extras) hold in that environment.
    unmet = []
    for line in facts["requires"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = facts["installed"][req.name]
        if have is None or not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{req} (installed: {have})")
    assert facts["requires"] and not unmet, unmet
    # pip agrees (its check covers every distribution on the path; only ours matter here).
    check = subprocess.run(
        [str(python), "-m", "pip", "check", "--disable-pip-version-check"],
        cwd=fresh_env,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "optuna-fms" not in check.stdout.lower(), check.stdout


def test_the_demo_runs_from_the_installed_wheel(fresh_env: Path, tmp_path: Path) -> None:
    script = fresh_env / "bin" / "optuna-fms"
    assert script.is_file()
    proc = _run(
        [
            str(script),
            "demo",
            "--epochs",
            "30",
            "--storage",
            "sqlite:///fms.db",
            "--artifact-dir",
            "artifacts",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert "Epochs trained:" in proc.stdout, proc.stdout
    assert "optuna-dashboard sqlite:///fms.db --artifact-dir artifacts" in proc.stdout
    assert (tmp_path / "fms.db").is_file()
    assert any((tmp_path / "artifacts").rglob("*")), "the demo saved no checkpoint"


# --- The README's usage snippet ------------------------------------------------------------

# A tiny model and training step for the snippet's `build` and `train_one_epoch`.
_PRELUDE = """
import torch
from torch import nn

_g = torch.Generator().manual_seed(0)
_X = torch.randn(96, 4, generator=_g)
_Y = (_X[:, 0] + 0.5 * _X[:, 1] > 0).long()


def build(lr):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def train_one_epoch(model, optimizer):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(_X), _Y).backward()
    optimizer.step()
    with torch.no_grad():
        return (model(_X).argmax(1) == _Y).float().mean().item()
"""

# The README's budget (30 epochs a trial, 1000 in all), smaller.
_BUDGET = {
    "max_steps=30": "max_steps=5",
    "range(start, 30)": "range(start, 5)",
    "EpochBudget(1000)": "EpochBudget(20)",
}

# After the snippet: what it did, and a short study that reads the checkpoints through the
# shipped pretrained metanetwork (FMSSampler(weights="gmn"), its default metanetwork).
_AFTER = """
import json
from optuna.trial import TrialState
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet._pretrained import SHIPPED_FILE

gmn_sampler = optuna_fms.FMSSampler(weights="gmn", artifact_store=store, seed=0)
net = gmn_sampler.engine.weight_inputs.metanetwork
shipped = PretrainedMetanetwork.load(SHIPPED_FILE)
same = isinstance(net, PretrainedMetanetwork) and all(
    torch.equal(a, b) for a, b in zip(net.state_dict().values(), shipped.state_dict().values())
)
gmn_study = optuna.create_study(
    study_name="gmn", direction="maximize", storage="sqlite:///fms.db",
    sampler=gmn_sampler, pruner=optuna_fms.FMSPruner(max_steps=5),
)
gmn_study.optimize(objective, callbacks=[optuna_fms.EpochBudget(12)])
best = optuna_fms.recommend(study)
print("FACTS " + json.dumps({
    "file": optuna_fms.__file__,
    "shipped": str(SHIPPED_FILE),
    "epochs": optuna_fms.epochs_spent(study.trials),
    "states": [t.state.name for t in study.trials],
    "checkpoints": sum(bool(t.user_attrs.get("fms:checkpoints")) for t in study.trials),
    "recommended": best.params,
    "gmn_loaded": same,
    "gmn_summary": gmn_sampler.engine.inputs_summary(),
    "gmn_trials": len(gmn_study.trials),
    "gmn_epochs": optuna_fms.epochs_spent(gmn_study.trials),
}))
"""


def _readme_usage() -> str:
    """The first python block of README.md's ``## Usage`` section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Usage\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md's ## Usage has no python block"
    return match.group(1)


def test_the_readme_usage_runs_from_the_installed_wheel(fresh_env: Path, tmp_path: Path) -> None:
    snippet = _readme_usage()
    for old, new in _BUDGET.items():
        assert snippet.count(old) == 1, f"README's usage snippet changed: no single {old!r}"
        snippet = snippet.replace(old, new)
    script = tmp_path / "usage.py"
    script.write_text(_PRELUDE + snippet + _AFTER)
    proc = _run([str(fresh_env / "bin" / "python"), str(script)], cwd=tmp_path, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FACTS ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    facts = json.loads(lines[-1].removeprefix("FACTS "))
    assert Path(facts["file"]).is_relative_to(fresh_env)
    assert Path(facts["shipped"]).is_relative_to(fresh_env)
    assert 20 <= facts["epochs"] <= 24, facts
    assert "PRUNED" in facts["states"], facts  # FMSPruner paused trials
    assert facts["checkpoints"] > 0
    assert set(facts["recommended"]) == {"lr"}
    assert facts["gmn_loaded"], facts
    assert "graph metanetwork pretrained on" in facts["gmn_summary"], facts
    assert facts["gmn_epochs"] >= 12 and facts["gmn_trials"] > 0

"""The OptunaHub package in optunahub/package/samplers/fms, checked so that it can be submitted
to the registry (optuna/optunahub-registry) as it is.

- The registry's rules (its CONTRIBUTING.md, package template and pre-commit): the README's
  front matter, its sections, no HTML, no binary files but README images, an MIT LICENSE,
  valid requirements, and mdformat leaving the README unchanged. The checker is tested on
  broken copies too.
- The package loads through ``optunahub.load_local_module`` and re-exports the installed
  optuna-fms (nothing vendored).
- The package's own tests (its ``tests/test_fms.py``: Optuna's sampler test suite against
  the loaded FMSSampler, and a study in which the loaded sampler and pruner pause and continue
  trials) are collected here.
- ``example.py`` runs offline in under a minute.

optunahub, mdformat and mdformat-myst come with the ``dev`` extra: without them the tests that
need them fail in CI (``CI`` set) and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from pathlib import Path
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from extras import require
from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement
from packaging.version import InvalidVersion
from packaging.version import Version
import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
REGISTRY_ROOT = ROOT / "optunahub" / "package"
PACKAGE = REGISTRY_ROOT / "samplers" / "fms"

REQUIRED_KEYS = ("author", "title", "description", "tags", "optuna_versions", "license")
SECTIONS = ["Abstract", "APIs", "Installation", "Example", "Others"]
CATEGORY_TAGS = {"samplers": "sampler", "pruners": "pruner", "visualization": "visualization"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
# What git leaves out of a submission (the registry's .gitignore): not part of the package.
NOT_SUBMITTED = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
HTML = re.compile(r"<!--|</?[A-Za-z][A-Za-z0-9-]*(\s[^<>]*)?/?>")
EXAMPLE_TIMEOUT_S = 60


# --- The registry's rules ----------------------------------------------------------------


def _front_matter(readme: str) -> tuple[dict[str, Any] | None, str]:
    """The README's YAML front matter (``None`` when absent or not a mapping) and its body."""
    lines = readme.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None, readme
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                header = yaml.safe_load("".join(lines[1:i]))
            except yaml.YAMLError:
                return None, "".join(lines[i + 1 :])
            return (header if isinstance(header, dict) else None), "".join(lines[i + 1 :])
    return None, readme


def _outside_code(body: str) -> list[str]:
    """The body's lines outside fenced code blocks."""
    lines, fence = [], None
    for line in body.splitlines():
        marker = re.match(r"\s*(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1).startswith(fence)):
            fence = marker.group(1)[:3] if fence is None else None
        elif fence is None:
            lines.append(line)
    return lines


def _is_binary(path: Path) -> bool:
    data = path.read_bytes()
    if b"\x00" in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _check_front_matter(header: dict[str, Any] | None, category: str) -> list[str]:
    if header is None:
        return ["README.md: no YAML front matter (a mapping between two '---' lines)"]
    problems = []
    for key in REQUIRED_KEYS:
        value = header.get(key)
        if value is None or value == "" or value == []:
            problems.append(f"README.md: front matter '{key}' is missing or empty")
    for key in ("author", "title", "description", "license"):
        if key in header and header[key] is not None and not isinstance(header[key], str):
            problems.append(f"README.md: front matter '{key}' must be a string")
    tags = header.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        problems.append("README.md: 'tags' must be a list of non-empty strings")
    elif CATEGORY_TAGS.get(category) not in tags:
        problems.append(f"README.md: 'tags' must include {CATEGORY_TAGS.get(category)!r}")
    versions = header.get("optuna_versions") or []
    if not isinstance(versions, list):
        problems.append("README.md: 'optuna_versions' must be a list of versions")
    else:
        for v in versions:
            try:
                Version(str(v))
            except InvalidVersion:
                problems.append(f"README.md: optuna_versions entry {v!r} is not a version")
    if header.get("license") not in (None, "", "MIT License"):
        problems.append(f"README.md: license must be 'MIT License', not {header['license']!r}")
    return problems


def _check_body(body: str) -> list[str]:
    problems = []
    headings = [line[3:].strip() for line in _outside_code(body) if line.startswith("## ")]
    if headings != SECTIONS:
        problems.append(f"README.md: sections must be {SECTIONS} in this order, not {headings}")
    for number, line in enumerate(body.splitlines(), start=1):
        if HTML.search(line):
            problems.append(f"README.md: HTML in body line {number}: {line.strip()!r}")
    return problems


def _check_files(package: Path, readme: str) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if not path.is_file() or NOT_SUBMITTED.intersection(relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if relative.as_posix() not in readme:
                problems.append(f"{relative}: an image that README.md does not show")
        elif _is_binary(path):
            problems.append(f"{relative}: a binary file (only README images may be binary)")
    return problems


def _check_license(package: Path) -> list[str]:
    path = package / "LICENSE"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    problems = []
    if not lines or lines[0] != "MIT License":
        problems.append("LICENSE: the first line must be 'MIT License'")
    if "Permission is hereby granted, free of charge" not in " ".join(text.split()):
        problems.append("LICENSE: not the MIT license text")
    holder = next((line for line in lines if line.startswith("Copyright (c)")), "")
    if not re.fullmatch(r"Copyright \(c\) \d{4}(-\d{4})? [^<>]+", holder):
        problems.append(f"LICENSE: no filled-in copyright line (year and holder): {holder!r}")
    return problems


def _check_requirements(package: Path) -> list[str]:
    path = package / "requirements.txt"
    if not path.is_file():
        return []
    problems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            Requirement(line)
        except InvalidRequirement:
            problems.append(f"requirements.txt: {line!r} is not a requirement")
    return problems


def registry_problems(package: Path) -> list[str]:
    """Every way ``package`` (a ``package/<category>/<name>`` directory) breaks the rules of
    the OptunaHub registry; empty when it can be submitted."""
    category = package.parent.name
    problems = []
    if category not in CATEGORY_TAGS:
        problems.append(f"category {category!r} is not one of {sorted(CATEGORY_TAGS)}")
    for name in ("__init__.py", "README.md", "LICENSE"):
        if not (package / name).is_file():
            problems.append(f"{name} is missing")
    readme_path = package / "README.md"
    readme = readme_path.read_text(encoding="utf-8") if readme_path.is_file() else ""
    if readme:
        header, body = _front_matter(readme)
        problems += _check_front_matter(header, category)
        problems += _check_body(body)
    problems += _check_files(package, readme)
    problems += _check_license(package)
    problems += _check_requirements(package)
    return problems


def test_package_follows_the_registry_rules() -> None:
    assert registry_problems(PACKAGE) == []


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


_ABSTRACT = "## Abstract\n"
_APIS = "## APIs\n"

BREAKAGES = {
    "empty author": (
        lambda p: _edit(p / "README.md", "author: optuna-fms contributors", "author: ''"),
        "'author' is missing or empty",
    ),
    "no description": (
        lambda p: _edit(p / "README.md", "description: ", "summary: "),
        "'description' is missing or empty",
    ),
    "no optuna_versions": (
        lambda p: _edit(p / "README.md", "optuna_versions: [4.8.0, 5.1.0]", "optuna_versions: []"),
        "'optuna_versions' is missing or empty",
    ),
    "bad version": (
        lambda p: _edit(
            p / "README.md", "optuna_versions: [4.8.0, 5.1.0]", "optuna_versions: [latest]"
        ),
        "'latest' is not a version",
    ),
    "no sampler tag": (
        lambda p: _edit(p / "README.md", "tags: [sampler, ", "tags: ["),
        "'tags' must include 'sampler'",
    ),
    "other license": (
        lambda p: _edit(p / "README.md", "license: MIT License", "license: Apache-2.0"),
        "license must be 'MIT License'",
    ),
    "no front matter": (
        lambda p: _edit(p / "README.md", "---\n", ""),
        "no YAML front matter",
    ),
    "sections out of order": (
        lambda p: (
            _edit(p / "README.md", _ABSTRACT, "## PLACEHOLDER\n"),
            _edit(p / "README.md", _APIS, _ABSTRACT),
            _edit(p / "README.md", "## PLACEHOLDER\n", _APIS),
        ),
        "sections must be",
    ),
    "a section missing": (
        lambda p: _edit(p / "README.md", "## Others\n", "### Others\n"),
        "sections must be",
    ),
    "HTML": (
        lambda p: _edit(
            p / "README.md", "## Example\n", "## Example\n\n<details>more</details>\n"
        ),
        "HTML in body",
    ),
    "HTML comment": (
        lambda p: _edit(p / "README.md", "## Others\n", "## Others\n\n<!-- a note -->\n"),
        "HTML in body",
    ),
    "binary weights": (
        lambda p: (p / "metanet.safetensors").write_bytes(b"\x08\x00\x00\x00{}\x00\x01\x02"),
        "metanet.safetensors: a binary file",
    ),
    "image not in README": (
        lambda p: (p / "images").mkdir() or (p / "images" / "x.png").write_bytes(b"\x89PNG\x00"),
        "images/x.png: an image that README.md does not show",
    ),
    "no LICENSE": (lambda p: (p / "LICENSE").unlink(), "LICENSE is missing"),
    "not MIT": (
        lambda p: (p / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n"),
        "LICENSE: the first line must be 'MIT License'",
    ),
    "template holder": (
        lambda p: _edit(
            p / "LICENSE", "2026 optuna-fms contributors", "2026 <COPYRIGHT HOLDER, e.g., John>"
        ),
        "no filled-in copyright line",
    ),
    "bad requirement": (
        lambda p: _edit(p / "requirements.txt", "optuna-fms>=", "optuna-fms=>"),
        "is not a requirement",
    ),
    "no __init__": (lambda p: (p / "__init__.py").unlink(), "__init__.py is missing"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_registry_check_fails_on_a_broken_copy(tmp_path: Path, breakage: str) -> None:
    copy = tmp_path / "package" / "samplers" / "fms"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns(*NOT_SUBMITTED))
    assert registry_problems(copy) == []
    change, expected = BREAKAGES[breakage]
    change(copy)
    problems = registry_problems(copy)
    assert any(expected in problem for problem in problems), problems


def test_registry_check_accepts_an_image_the_readme_shows(tmp_path: Path) -> None:
    copy = tmp_path / "package" / "samplers" / "fms"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns(*NOT_SUBMITTED))
    (copy / "images").mkdir()
    (copy / "images" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    _edit(copy / "README.md", "## APIs\n", "![Curves](images/curves.png)\n\n## APIs\n")
    assert registry_problems(copy) == []


def test_readme_is_formatted_as_the_registry_pre_commit_wants() -> None:
    # The registry's pre-commit runs mdformat with mdformat-myst (front matter included).
    require("mdformat")
    require("mdformat_myst")
    import mdformat

    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    assert mdformat.text(readme, extensions={"myst"}) == readme


# --- What this package promises beyond the rules -----------------------------------------


def _installed_lower_bounds() -> dict[str, Version]:
    """optuna-fms's dependencies (as installed) -> their lower bounds."""
    bounds = {}
    for line in importlib.metadata.requires("optuna-fms") or []:
        requirement = Requirement(line)
        if requirement.marker is not None:
            continue  # An extra's dependency.
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[requirement.name.lower()] = Version(spec.version)
    return bounds


def test_front_matter_and_requirements_agree_with_optuna_fms() -> None:
    header, _ = _front_matter((PACKAGE / "README.md").read_text(encoding="utf-8"))
    assert header is not None
    assert {"sampler", "pruner"} <= set(header["tags"])
    bounds = _installed_lower_bounds()
    assert all(Version(str(v)) >= bounds["optuna"] for v in header["optuna_versions"])
    lines = (PACKAGE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = {r.name.lower(): r for r in map(Requirement, filter(None, lines))}
    assert "optuna-fms" in requirements
    for name in ("optuna", "torch"):
        assert requirements[name].specifier == f">={bounds[name]}", name


def test_package_vendors_nothing() -> None:
    # Only the registry files and the package's tests: the sampler, the pruner and the
    # pretrained metanetwork come from the installed optuna-fms.
    files = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and not NOT_SUBMITTED.intersection(p.relative_to(PACKAGE).parts)
    }
    assert files == {
        "__init__.py",
        "README.md",
        "LICENSE",
        "requirements.txt",
        "example.py",
        "tests/test_fms.py",
    }


def test_load_local_module_gives_the_installed_optuna_fms() -> None:
    require("optunahub")
    import optunahub

    import optuna_fms

    module = optunahub.load_local_module(package="samplers/fms", registry_root=str(REGISTRY_ROOT))
    assert module.__name__ == "optunahub_registry.package.samplers.fms"
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is getattr(optuna_fms, name), name


# --- The package's own tests, and its example ----------------------------------------------


if importlib.util.find_spec("optunahub") is not None:
    # Imported by name from the package's tests folder, with pytest's assertion rewriting, so
    # that its test class and function are collected (and reported) here.
    sys.path.insert(0, str(PACKAGE / "tests"))
    pytest.register_assert_rewrite("test_fms")
    _package_tests = importlib.import_module("test_fms")
    TestOptunaHubFMSSampler = _package_tests.TestFMSSampler
    test_optunahub_sampler_and_pruner_pause_and_continue = (
        _package_tests.test_sampler_and_pruner_pause_and_continue
    )
else:

    def test_optunahub_package_tests() -> None:
        require("optunahub")


def test_example_runs_offline_in_under_a_minute(tmp_path: Path) -> None:
    require("optunahub")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(PACKAGE / "example.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < EXAMPLE_TIMEOUT_S
    assert "paused: " in result.stdout and "continued from a checkpoint: " in result.stdout
    assert "recommended: " in result.stdout
    assert list(tmp_path.iterdir()) == []  # Nothing left behind in the working directory.

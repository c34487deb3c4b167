"""Sphinx configuration of the optuna-fms documentation (API reference and user guide).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``. The toolchain is Optuna's
own (Sphinx, autodoc, autosummary) with numpydoc for the numpy-style docstrings and myst-parser
for the Markdown user guide; the CLI page is generated from the argparse parsers.
"""

from __future__ import annotations

import ast
from pathlib import Path
import re
from typing import Any

import optuna_fms


project = "optuna-fms"
author = "optuna-fms contributors"
copyright = "2026, optuna-fms contributors"
version = release = optuna_fms.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinxarg.ext",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Every reference to an optuna_fms name must resolve: a typo in a docstring fails the build.
nitpicky = True
# Without network access there are no intersphinx inventories for the standard library and the
# dependencies, so references to their names (mostly from type annotations) cannot resolve.
# They are ignored by top-level package (the package's dependencies and the standard-library
# modules its signatures use); references to optuna_fms itself are all checked.
_EXTERNAL = (
    "optuna",
    "torch",
    "numpy",
    "scipy",
    "gpytorch",
    "lightning",
    "transformers",
    "safetensors",
    "collections",
    "os",
    "pathlib",
    "typing",
)
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?")]

templates_path = ["_templates"]
autosummary_generate = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"

numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()

myst_heading_anchors = 3

# Keep option names such as ``--seed`` as typed (no en dashes) in the CLI page.
smartquotes = False

html_theme = "alabaster"
html_title = f"optuna-fms {release}"


def _type_checking_names() -> list[str]:
    """Names that optuna_fms imports from other packages only under ``TYPE_CHECKING``.

    autodoc cannot evaluate annotations that use them and prints the bare name (``Trial``),
    which no inventory can resolve; like the external names above, they are not checked.
    """
    names: set[str] = set()
    for path in Path(optuna_fms.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                for stmt in node.body:
                    if isinstance(stmt, ast.ImportFrom) and stmt.level == 0:
                        if not (stmt.module or "").startswith("optuna_fms"):
                            names.update(a.asname or a.name for a in stmt.names)
    return sorted(names)


nitpick_ignore = [("py:class", name) for name in _type_checking_names()]
# Internal types that appear in public signatures: the engine of the deprecated ``engine=``
# argument of forecast/recommend/diagnose, and the protocols behind FMSSampler's
# ``surrogate=``/``allocation=`` (whose docstrings describe what they accept).
nitpick_ignore += [
    ("py:class", "Engine"),
    ("py:class", "optuna_fms._engine._engine.Engine"),
    ("py:class", "optuna_fms._surrogate._fitted.SurrogateModel"),
    ("py:class", "optuna_fms._surrogate.allocation._base.AllocationRule"),
]


def _dataclass_factory_defaults(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: Any
) -> tuple[str | None, Any]:
    # A dataclass field with ``default_factory`` shows as ``= <factory>``, which is not Python:
    # Sphinx then splits the signature at every comma (``dict[str`` | ``float]``).
    if signature is not None:
        signature = re.sub(r"=\s*<factory>", "= ...", signature)
    return signature, ret


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _dataclass_factory_defaults)

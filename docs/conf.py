"""Sphinx configuration of the xgpp documentation (``make docs``; warnings are errors)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import sphinx_autosummary_accessors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import xgpp  # noqa: E402  (registers the ds.gpp accessor the API page documents)

project = "xgpp"
author = "xgpp developers"
copyright = "2026, xgpp developers"  # noqa: A001 - Sphinx's name
release = xgpp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_autosummary_accessors",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "generated/*.md"]

# --- autodoc / autosummary / numpydoc -------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc renders the types of the docstrings' Parameters
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
# autosummary writes class pages with their members; numpydoc's own member tables would list
# each method twice
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False
# Checks that catch malformed or drifting docstrings (a documented parameter the signature
# lacks, a return value without a description, misplaced sections or quotes).  Constants are
# left out: numpydoc would validate the docstring of their type (dict, str...), not their
# ``#:`` comment.
numpydoc_validation_checks = {
    "GL02", "GL03", "GL05", "GL06", "GL07", "GL08", "PR02", "PR06", "PR10", "RT03", "YD01",
}
numpydoc_validation_exclude = {r"\.[A-Z][A-Z0-9_]*$"}


def _short_values(limit: int = 70) -> set[str]:
    """Constants whose value is short enough to show on their page (others show no value)."""
    import importlib
    import inspect

    out = set()
    for name in ("xgpp.catalog", "xgpp.io.sources", "xgpp.io.fluxnet", "xgpp.models.base",
                 "xgpp.models.registry", "xgpp.synthetic.world", "xgpp.synthetic.config",
                 "xgpp.train.methods", "xgpp.cluster", "xgpp.variables", "xgpp.evaluate",
                 "xgpp.plots"):
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            value = getattr(module, attr, None)
            if inspect.ismodule(value) or callable(value):
                continue
            if len(repr(value)) <= limit:
                out.add(f"{name}.{attr}")
    return out


autosummary_context = {"short_values": sorted(_short_values())}

# --- MyST: the Markdown pages stay Markdown --------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML -----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xgpp {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []


def _write_methods_table(path: Path) -> None:
    """Write the table of registered training methods, so the guide lists what the code has."""
    from xgpp.train import METHODS

    rows = ["| method | trains on | outputs | what it does |", "|---|---|---|---|"]
    for name, m in METHODS.items():
        data = ["drivers"] + (["sites"] if m.needs_sites else []) + (
            [f"`{m.sif_product}`"] if m.sif_product else [])
        rows.append(f"| `{name}` | {', '.join(data)} | {', '.join(m.outputs)} | "
                    f"{m.description} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(rows) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


_write_methods_table(Path(__file__).parent / "generated" / "methods_table.md")

"""Sphinx configuration for the trio_session docs.

Builds offline: no intersphinx (it would fetch inventories over the network).
Pages are Markdown (MyST); API pages use autodoc on Google-style docstrings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs

# Let autodoc import the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_session


def _restore_attrs_class_modules() -> None:
    """Point attrs classes back at their defining private module, for autodoc only.

    ``trio_session/__init__.py`` rewrites ``__module__`` to ``trio_session`` so
    that reprs read ``trio_session.X`` (as trio does).  Autodoc reads the
    ``#:`` comments that document attrs fields from the source of
    ``__module__``, so without this the fields of e.g. SessionConfig would be
    missing.  Pages still show the public names given in the directives.
    """
    private = {
        name: module
        for name, module in sys.modules.items()
        if name.startswith("trio_session._") and module is not None
    }
    for public_name in trio_session.__all__:
        obj = getattr(trio_session, public_name)
        if not (isinstance(obj, type) and attrs.has(obj)):
            continue
        for modname, module in private.items():
            if getattr(module, public_name, None) is obj:
                obj.__module__ = modname
                break


_restore_attrs_class_modules()

project = "trio_session"
author = "trio_session contributors"
copyright = "trio_session contributors"
release = trio_session.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

nitpicky = False

# Google-style docstrings, as in trio.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"trio_session {release}"

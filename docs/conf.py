"""Sphinx configuration for the trio_session docs.

Builds offline: no intersphinx (it would fetch inventories over the network).
Pages are Markdown (MyST); API pages use autodoc on Google-style docstrings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
from docutils import nodes
from sphinx.application import Sphinx

# Let autodoc import the package from this checkout even when it is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_session
import trio_session.protocol
import trio_session.testing


def _restore_attrs_class_modules() -> None:
    """Point attrs classes back at their defining private module, for autodoc only.

    ``trio_session/__init__.py`` (and ``trio_session.protocol``) rewrite
    ``__module__`` to the public module so that reprs read ``trio_session.X``
    (as trio does).  Autodoc reads the ``#:`` comments that document attrs
    fields from the source of ``__module__``, so without this the fields of
    e.g. SessionConfig would be missing.  Pages still show the public names
    given in the directives (``automodule`` documents a module's ``__all__``
    whatever the members' ``__module__``).
    """
    publics = (trio_session, trio_session.protocol, trio_session.testing)
    for public in publics:  # the package init is lazy: load every public name first
        for public_name in public.__all__:
            getattr(public, public_name)
    private = {
        name: module
        for name, module in sys.modules.items()
        if name.startswith("trio_session.")
        and any(part.startswith("_") for part in name.split(".")[1:])
        and module is not None
    }
    for public in publics:
        for public_name in public.__all__:
            obj = getattr(public, public_name)
            if not (isinstance(obj, type) and attrs.has(obj)):
                continue
            for modname, module in private.items():
                if getattr(module, public_name, None) is obj:
                    obj.__module__ = modname
                    break


_restore_attrs_class_modules()

#: Classes that only the library instantiates: the API page shows them without a
#: constructor signature (``.. autoclass:: X()``), and this keeps
#: ``autodoc_typehints = "description"`` from listing their private constructor
#: arguments as "Parameters".
_CREATED_BY_THE_LIBRARY = {
    "trio_session.Context",
    "trio_session.Session",
    "trio_session.SessionStats",
    "trio_session.VenueServer",
    "trio_session.testing.MemoryVenue",
}


def _hide_constructor_parameters(
    app: Sphinx, domain: str, objtype: str, contentnode: nodes.Element
) -> None:
    if domain != "py" or objtype != "class":
        return
    signature = contentnode.parent[0]
    module = signature.get("module")
    fullname = f"{module}.{signature['fullname']}" if module else signature["fullname"]
    if fullname in _CREATED_BY_THE_LIBRARY:
        current = getattr(app.env, "current_document", None)
        annotations = getattr(current, "autodoc_annotations", None)
        if annotations is None:  # Sphinx < 9
            annotations = app.env.temp_data.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(fullname, None)


def setup(app: Sphinx) -> None:
    # Before autodoc merges type hints into descriptions (priority 500).
    app.connect("object-description-transform", _hide_constructor_parameters, priority=400)


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

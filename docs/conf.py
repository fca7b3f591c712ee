"""Sphinx configuration of the trio-noleader documentation.

Build: ``pip install -e ".[docs]"`` then
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio_noleader

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "trio-noleader"
author = "trio-noleader contributors"
copyright = "trio-noleader contributors, MIT licence"
release = trio_noleader.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
    "noleader_cli",
]

exclude_patterns = ["_build", "_inventories", "_ext"]
default_role = "py:obj"
primary_domain = "py"
highlight_language = "python3"
# Options like --grace stay as typed, not turned into dashes and curly quotes.
smartquotes = False

# -- autodoc and napoleon (Google-style docstrings, as trio's) -------------------
autodoc_member_order = "bysource"
# Every class entry lists its documented members: adding a name to the reference
# is one line (``.. autoclass:: Name`` or ``.. autofunction:: name``).
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- intersphinx -----------------------------------------------------------------
# The build must not need a network. Links go to the online docs, but the
# inventories are read from copies shipped in docs/_inventories only, never
# fetched: trio's was built from trio's own docs sources with Sphinx, Python's is
# the objects.inv of Python 3.11's HTML docs. docs/_inventories/README.rst says
# how to refresh them.
intersphinx_mapping = {
    "trio": ("https://trio.readthedocs.io/en/stable/",
             str(DOCS / "_inventories" / "trio.inv")),
    "python": ("https://docs.python.org/3/",
               str(DOCS / "_inventories" / "python.inv")),
}
intersphinx_timeout = 5

# -- HTML ------------------------------------------------------------------------
html_theme = "furo"
html_title = f"trio-noleader {release}"
html_static_path: list[str] = []

"""Sphinx configuration of fnlearn's documentation site (``docs/``).

Build it strictly (every warning is an error) from the repository root:

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The pages are the Markdown files of this folder (MyST), the tutorials under ``tutorials/``
are executed while the site builds (myst-nb), and the API reference under ``api/`` is
written at each build from the public names (``_ext/api_pages.py``).
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]
# The tutorials' kernels are other processes: they import this checkout's fnlearn too.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get(
    "PYTHONPATH")])])
# Executed pages draw with matplotlib's file backend, never a window.
os.environ.setdefault("MPLBACKEND", "agg")
# TensorFlow's C++ start-up notices (oneDNN, absl) are not part of any example's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fnlearn  # noqa: E402 - after the path is set

project = "fnlearn"
author = "fnlearn authors"
copyright = "fnlearn authors"  # noqa: A001 - Sphinx's name
release = version = fnlearn.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_design",
    "api_pages",
    "code_links",
    "site_pages",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "_ext", "_screenshots", "**/.ipynb_checkpoints"]

# Strict: a reference to a fnlearn name that does not exist is an error. Other libraries'
# names in signatures (jax.Array, optax.GradientTransformation) have no inventory offline,
# so they stay plain text.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!fnlearn\b).*")]
# `single backticks` in docstrings are code, as in Markdown, not cross-references.
default_role = "literal"

# MyST: headings get anchors (links like page.md#section), code fences stay code.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
suppress_warnings = ["myst.header"]

# Executed pages: run every time (a stale output is a lie), fail the build on an error.
nb_execution_mode = os.environ.get("FNLEARN_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_in_temp = True
nb_execution_show_tb = True
nb_merge_streams = True

# API reference: Google-style sections (Args, Returns, Raises), hints in the descriptions.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attributes as fields of the class entry: NamedTuple fields are also documented members.
napoleon_use_ivar = True
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_class_signature = "separated"
python_display_short_literal_types = True
add_module_names = False

html_theme = "furo"
html_title = f"fnlearn {release}"
html_static_path = []
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None

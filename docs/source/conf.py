"""Sphinx configuration of the pyro_decomp documentation.

Build (offline, warnings as errors)::

    pip install ".[docs]"
    sphinx-build -W --keep-going -b html docs/source docs/build/html

The API reference has one page per public module (every module of the package whose name does not start
with an underscore). The pages are written from the package itself when the build starts, into
``docs/source/api/``, so a new module gets its page without an edit here.
"""

import functools
import importlib
import inspect
import os
import pkgutil
import socket
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")

from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import pyro_decomp  # noqa: E402

project = "pyro-decomp"
author = "pyro-decomp developers"
copyright = "pyro-decomp developers"
release = pyro_decomp.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "myst_nb",
]

# Docstrings are reST field lists (``:param x:``, ``:returns:``); napoleon also reads Google/NumPy sections.
napoleon_google_docstring = True
napoleon_numpy_docstring = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "both"


def reachable(url, timeout=3.0):
    """Whether the host of ``url`` accepts a connection (so that its inventory can be fetched)."""
    host = urllib.parse.urlsplit(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


# Links into Pyro, PyTorch and NumPy. An inventory is fetched only from a host that answers: offline (or with
# PYRO_DECOMP_DOCS_OFFLINE=1) those links stay plain text, and the build with -W still succeeds, since Sphinx
# reports an unreachable inventory as a warning.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "pyro": ("https://docs.pyro.ai/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
}
if os.environ.get("PYRO_DECOMP_DOCS_OFFLINE"):
    intersphinx_mapping = {}
intersphinx_mapping = {k: v for k, v in intersphinx_mapping.items() if reachable(v[0])}
intersphinx_timeout = 10

# Tutorials are committed with their outputs; the docs build shows them and never runs them.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath"]

html_theme = "alabaster"
html_title = f"pyro-decomp {release}"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = []


@functools.cache
def public_modules():
    """Names of the package's public modules: no component starting with an underscore."""
    names = ["pyro_decomp"]
    for info in pkgutil.walk_packages(pyro_decomp.__path__, prefix="pyro_decomp."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return tuple(sorted(names))


@functools.cache
def home_of(module_name, name):
    """The public module whose page documents ``module_name.name``.

    Of the public modules that list the same object under that name in their ``__all__``, the one that defines
    it, else the deepest one (a package's page links to its submodules' entries instead of repeating them).
    """
    obj = getattr(importlib.import_module(module_name), name)
    listing = [
        m
        for m in public_modules()
        if name in getattr(importlib.import_module(m), "__all__", ())
        and getattr(importlib.import_module(m), name, None) is obj
    ]
    defined_in = getattr(obj, "__module__", None)
    if defined_in in listing:
        return defined_in
    return max(listing, key=lambda m: (m.count("."), m)) if listing else module_name


def directive_for(obj):
    """The autodoc directive that documents ``obj``."""
    if isinstance(obj, type):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isroutine(obj):
        return "autofunction"
    return "autodata"


def module_page(name):
    """The reST of one module's page: its docstring, the names documented here, links to the others."""
    module = importlib.import_module(name)
    title = f"``{name}``"
    text = f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n   :no-members:\n"
    listed = list(getattr(module, "__all__", ()))
    here = [n for n in listed if home_of(name, n) == name]
    elsewhere = [n for n in listed if n not in here]
    attribute_docs = ModuleAnalyzer.for_module(name).find_attr_docs() if here else {}
    for n in here:
        obj = getattr(module, n)
        directive = directive_for(obj)
        if directive == "autodata" and ("", n) not in attribute_docs:
            # a constant without a ``#:`` comment: autodoc would show its type's docstring (dict's, str's)
            text += f"\n.. py:data:: {n}\n   :type: {type(obj).__name__}\n\n"
            text += "   See the module's docstring.\n"
        elif directive == "autodata":  # a data name is resolved in the current module (automodule's)
            text += f"\n.. autodata:: {n}\n"
        else:
            text += f"\n.. {directive}:: {name}.{n}\n"
    if elsewhere:
        text += "\nAlso available here, documented on their own modules' pages:\n\n"
        text += "".join(f"- :obj:`{n} <{home_of(name, n)}.{n}>`\n" for n in elsewhere)
    return text


def write_api_pages(directory=None):
    """One page per public module (its ``__all__``, signatures and docstrings) and their index."""
    directory = directory or os.path.join(HERE, "api")
    os.makedirs(directory, exist_ok=True)
    modules = public_modules()
    for name in modules:
        text = module_page(name)
        path = os.path.join(directory, f"{name}.rst")
        old = open(path).read() if os.path.exists(path) else None
        if old != text:  # leave unchanged pages alone so incremental builds stay incremental
            with open(path, "w") as f:
                f.write(text)
    index = "API reference\n=============\n\nOne page per public module.\n\n.. toctree::\n   :maxdepth: 1\n\n"
    index += "".join(f"   {name}\n" for name in modules)
    with open(os.path.join(directory, "index.rst"), "w") as f:
        f.write(index)


write_api_pages()

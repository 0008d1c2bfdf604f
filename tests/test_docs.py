"""The documentation, as Pyro checks its own: the examples in docstrings run (doctest), the Sphinx reference
builds offline with warnings as errors and holds every public name, and every tutorial notebook runs with its
smoke switch (``CI=1``).

The doctests and the checks on the committed notebooks run by default; the Sphinx build and the notebook runs
take minutes on a busy machine, so they are ``slow`` (``python -m pytest -q --runslow tests/test_docs.py``;
``.ci/run`` runs them).
"""

import doctest
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import pyro_decomp

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "source"
TUTORIALS = sorted((SOURCE / "tutorials").glob("*.ipynb"))
# the modules whose docstring examples are the house's usage examples: each must have some
CORE_WITH_EXAMPLES = ("elbo", "divergences", "distributions", "priors")


def public_modules():
    """Every module of the package whose dotted name has no component starting with an underscore."""
    names = ["pyro_decomp"]
    for info in pkgutil.walk_packages(pyro_decomp.__path__, prefix="pyro_decomp."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


# ------------------------------------------------------------------------------------------------ doctests
def test_docstring_examples_run():
    """Every ``>>>`` example in a public module runs and prints what its docstring says."""
    torch.set_num_threads(1)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    attempted, failed = {}, {}
    for name in public_modules():
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=flags, verbose=False, report=False)
        attempted[name], failed[name] = result.attempted, result.failed
    assert not any(failed.values()), {k: v for k, v in failed.items() if v}
    for short in CORE_WITH_EXAMPLES:
        assert attempted[f"pyro_decomp.{short}"] > 0, f"pyro_decomp.{short} has no docstring example"


# ------------------------------------------------------------------------------------------------ notebooks
def test_tutorials_are_committed_with_outputs_and_a_smoke_switch():
    """Each tutorial has the smoke switch, ends in a check, shows a figure, carries no volatile metadata."""
    names = {p.stem for p in TUTORIALS}
    expected = {
        "decomposition_in_10_minutes",
        "your_own_prior",
        "your_own_pyro_model",
        "your_own_data",
        "metrics",
    }
    assert expected <= names, expected - names
    index = (SOURCE / "index.rst").read_text()
    for path in TUTORIALS:
        assert f"tutorials/{path.stem}" in index, f"{path.name} is not in the site's table of contents"
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        sources = ["".join(c["source"]) for c in code]
        assert any('smoke_test = "CI" in os.environ' in s for s in sources), path.name
        assert any("assert " in s for s in sources[-2:]), f"{path.name} does not end in a check"
        outputs = [o for c in code for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} has no figure output"
        assert not any(o.get("output_type") == "error" for o in outputs), (
            f"{path.name} was saved with an error"
        )
        assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, (path.name, sorted(nb["metadata"]))
        for cell in nb["cells"]:
            assert not cell.get("metadata"), (path.name, cell.get("metadata"))
            assert "id" not in cell, f"{path.name}: cell ids are volatile"


@pytest.mark.slow
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_with_smoke_switch(path, tmp_path, monkeypatch):
    """The notebook runs top to bottom with ``CI=1`` (its checks included), in a scratch directory."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()


# ------------------------------------------------------------------------------------------------ the site
def read_inventory(path):
    """The ``{(name, domain:role)}`` of a Sphinx ``objects.inv`` (version 2: four header lines, then zlib)."""
    raw = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    assert raw.startswith(b"# Sphinx inventory version 2"), raw[:40]
    entries = set()
    for line in zlib.decompress(raw[header_end:]).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        entries.add((name, role))
    return entries


@pytest.mark.slow
def test_sphinx_reference_builds_offline_with_warnings_as_errors(tmp_path):
    """``sphinx-build -W`` succeeds (with no network too: conf.py leaves out unreachable inventories), and
    every public module and every name of every public module's ``__all__`` is in the built inventory (under
    that module, or under the public module that defines the same object and documents it)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path / "html"
    env = dict(os.environ, MPLBACKEND="Agg")  # the README's command, as it is: no network needed
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-E",
        "-q",
        "-b",
        "html",
        str(SOURCE),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    entries = read_inventory(out / "objects.inv")
    names = {name for name, role in entries if role.startswith("py:")}
    modules = public_modules()
    missing_modules = [m for m in modules if (m, "py:module") not in entries]
    assert not missing_modules, missing_modules
    missing = []
    for m in modules:
        module = importlib.import_module(m)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            homes = [m] + [
                other
                for other in modules
                if f"{other}.{name}" in names and getattr(importlib.import_module(other), name, None) is obj
            ]
            if not any(f"{home}.{name}" in names for home in homes):
                missing.append(f"{m}.{name}")
    assert not missing, missing
    assert set(pyro_decomp.__all__) <= {n.rsplit(".", 1)[-1] for n in names}
    for path in TUTORIALS:
        assert (out / "tutorials" / f"{path.stem}.html").exists(), path.name

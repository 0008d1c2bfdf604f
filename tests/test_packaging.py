"""The README's quick start, the CI script and the lint configuration agree with the code."""

import configparser
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import pyro_decomp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.*)'$", ci, re.M).group(1)
    assert command in readme


def test_version_and_entry_point():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "pyro-decomp = pyro_decomp.cli:main" in cfg["options.entry_points"]["console_scripts"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyro_decomp.__version__)
    for dep in ("pyro-ppl", "torch", "torchvision", "numpy", "matplotlib"):
        assert dep in cfg["options"]["install_requires"]


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (pathlib.Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed (it comes with the test extra)",
)
def test_code_passes_ruff():
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_library_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A library example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # the example prints the loss components, then the held-out divergence as a finite number
    lines = result.stdout.strip().splitlines()
    assert "reconstruction" in lines[0] and math.isfinite(float(lines[-1]))


def test_readme_library_example_twice_in_one_process(tmp_path):
    """A notebook user re-running the cell: the second model trains as the first did, no clear_param_store."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A library example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "twice.py"
    script.write_text(
        "import json\n"
        f"exec(compile({code!r}, 'cell', 'exec'))\nfirst = losses\n"
        f"exec(compile({code!r}, 'cell', 'exec'))\nsecond = losses\n"
        "print(json.dumps([first, second]))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = json.loads(result.stdout.strip().splitlines()[-1])
    assert first[-1] < 0.5 * first[0]  # the loss falls
    assert second == first  # and the second model's falls exactly as the first one's did


# The import floors, lowest first: a module imports only modules of lower floors or earlier in its own floor.
FLOORS = [
    ["version", "util", "_atomic", "_pyro_compat", "epoch_means"],
    ["data", "distributions", "kernels", "divergences", "nets", "distributed"],
    ["distribution_prior", "priors", "marginals", "elbo", "metrics", "summary", "label_placement", "plots"],
    ["vae"],
    ["config", "build", "run_files", "runs"],
    ["trainer", "callbacks", "training", "evaluation", "sweeps"],
    ["experiments"],
    ["cli", "__main__"],
]


def _top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_import_floors_read_one_way_and_imports_sit_at_the_top():
    import ast

    order = [name for floor in FLOORS for name in floor]
    package = ROOT / "pyro_decomp"
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        owner = rel.parts[0].removesuffix(".py")
        if owner == "__init__":
            continue  # the package's face imports everything; nothing imports it
        tree = ast.parse(path.read_text())
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_decomp"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pyro_decomp")]
            else:
                continue
            if not names:
                continue
            assert node in top, f"{rel}:{node.lineno}: a function-local import of the package's own modules"
            if isinstance(node, ast.ImportFrom) and node.module == "pyro_decomp":
                targets = [a.name for a in node.names]  # from pyro_decomp import nets, plots
            else:
                targets = [_top_level(node.module if isinstance(node, ast.ImportFrom) else names[0])]
            for target in targets:
                assert target != "", f"{rel}:{node.lineno}: imports pyro_decomp/__init__"
                if target != owner:  # within a package (data/, experiments/) any order
                    assert order.index(target) < order.index(owner), f"{rel} imports {target}, a higher floor"

"""The README's quick start, the CI script and the lint configuration agree with the code."""

import configparser
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

"""Every example runs with ``--smoke`` on built-in data, in a fresh process, and writes what it says."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_example(name, tmp_path, *args):
    env = dict(os.environ)
    # no data files anywhere the examples look by default, one CPU thread, no display
    env.update(PYRO_DECOMP_DATA=str(tmp_path / "data"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


def check_outputs(out, figures, keys):
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == PNG_SIGNATURE, figure
    results = json.loads((out / "results.json").read_text())
    flat = (
        results
        if all(not isinstance(v, dict) for v in results.values())
        else {f"{arm}.{k}": v for arm, values in results.items() for k, v in values.items()}
    )
    for key in keys:
        assert key in flat and math.isfinite(flat[key]), (key, results)
    return results


def test_pinwheel_clustering(tmp_path):
    out = tmp_path / "out"
    proc = run_example("pinwheel_clustering.py", tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = check_outputs(
        out,
        ["beta1_alpha0_qz.png", "beta0_alpha1_qz.png"],
        ["beta1_alpha0.ari", "beta0_alpha1.ari", "beta0_alpha1.inclusive_kl", "beta1_alpha0.reconstruction"],
    )
    assert all(-1.0 <= r["ari"] <= 1.0 for r in results.values())
    assert "ARI" in proc.stdout


def test_shapes_independence(tmp_path):
    out = tmp_path / "out"
    proc = run_example(
        "shapes_independence.py", tmp_path, "--smoke", "--out", str(out), "--prior", "student-t"
    )
    assert proc.returncode == 0, proc.stderr
    assert "data: procedural shapes" in proc.stdout  # says which data it used
    results = check_outputs(
        out, ["traversals.png", "reconstructions.png"], ["disentanglement", "mig", "reconstruction_error"]
    )
    assert 0.0 <= results["disentanglement"] <= 1.0 and results["prior"] == "student-t"


def test_fashion_mnist_sparsity_falls_back_for_smoke(tmp_path):
    out = tmp_path / "out"
    proc = run_example("fashion_mnist_sparsity.py", tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "NOT Fashion-MNIST" in proc.stdout
    assert "train-images-idx3-ubyte" in proc.stderr  # what it needs
    results = check_outputs(out, ["latent_magnitude.png", "reconstructions.png"], ["hoyer", "iwae", "mmd"])
    assert 0.0 <= results["hoyer"] <= 1.0


def test_fashion_mnist_sparsity_without_data_says_what_it_needs(tmp_path):
    proc = run_example("fashion_mnist_sparsity.py", tmp_path, "--data-root", str(tmp_path / "empty"))
    assert proc.returncode == 2
    assert "FashionMNIST/raw" in proc.stderr and "--download" in proc.stderr


def test_custom_prior(tmp_path):
    out = tmp_path / "out"
    proc = run_example("custom_prior.py", tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "blocks (2, 4, 2)" in proc.stdout
    check_outputs(
        out,
        ["cluster_block.png", "marginals.png"],
        ["mmd_all", "mmd_block0", "mmd_block1", "mmd_block2", "hoyer_sparse_block"],
    )


def test_custom_prior_distribution_is_a_proper_density():
    # the user-written Logistic block: its density integrates to 1 and its samples have the closed-form
    # moments (mean μ, variance s²π²/3); with n = 20000 draws the standard error of the mean is
    # σ/√n ≈ 0.013 for s = 1, and of the variance about σ²·√(2 + κ)/√n with excess kurtosis κ = 1.2
    import torch

    sys.path.insert(0, str(EXAMPLES))
    try:
        from custom_prior import Logistic
    finally:
        sys.path.remove(str(EXAMPLES))
    d = Logistic(torch.tensor(0.5), torch.tensor(1.0))
    grid = torch.linspace(-40.0, 41.0, 200001, dtype=torch.float64)
    density = Logistic(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    assert float(torch.trapezoid(density.log_prob(grid).exp(), grid)) == pytest.approx(1.0, abs=1e-8)
    torch.manual_seed(0)
    z = d.rsample((20000,))
    sigma2 = math.pi**2 / 3
    assert float(z.mean()) == pytest.approx(0.5, abs=4 * math.sqrt(sigma2 / 20000))
    assert float(z.var()) == pytest.approx(sigma2, abs=4 * sigma2 * math.sqrt(3.2 / 20000))
    assert d.expand((3, 2)).sample().shape == (3, 2)
    assert d.expand((2,)).to_event(1).log_prob(torch.zeros(5, 2)).shape == (5,)


def test_flow_prior(tmp_path):
    out = tmp_path / "out"
    proc = run_example("flow_prior.py", tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = check_outputs(
        out,
        ["normal_qz.png", "flow_qz.png"],
        ["normal.loss", "flow.loss", "flow.inclusive_kl", "flow.flow_parameter_change"],
    )
    assert results["flow"]["flow_parameter_change"] > 0.0  # the flow given as a distribution was trained
    assert "learnt flow" in proc.stdout


def test_own_data(tmp_path):
    out = tmp_path / "out"
    proc = run_example("own_data.py", tmp_path, "--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "chosen from the data: network mlp, likelihood normal, D = 2" in proc.stdout
    assert f"data: {out / 'rings.npz'}" in proc.stdout  # reloaded from the file it wrote
    results = check_outputs(
        out, ["run/figures/reconstructions.png", "run/figures/aggregate_posterior.png"], ["ari", "iwae"]
    )
    assert results["test_points"] == 40 and -1.0 <= results["ari"] <= 1.0

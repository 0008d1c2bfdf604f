"""Every benchmark script runs in ``--quick`` mode and prints one valid JSON document whose correctness checks
hold. No timing is asserted: the numbers depend on the machine.

The five scripts start together (they are separate processes) and each test waits for its own.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("svi_step", "divergences", "disentanglement", "data", "metrics")

# float32 sums of up to ~10^5 terms in different orders differ by a few ulps times sqrt(terms): far below
# this relative tolerance, which is the one the benchmarks promise for equal values.
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def runs():
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name in SCRIPTS
    }
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            results[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return results


def load(runs, name):
    code, out, err = runs[name]
    assert code == 0, f"{name}.py --quick failed:\n{err[-3000:]}"
    result = json.loads(out)
    assert result["benchmark"] == name
    machine = result["machine"]
    for key in ("cpu_model", "logical_cpus", "torch", "pyro", "torch_threads"):
        assert machine[key] not in (None, "")
    return result


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_timing(entry):
    for stat in ("median", "q1", "q3", "min", "max"):
        assert positive(entry[stat]) or entry[stat] == 0
    assert entry["min"] <= entry["median"] <= entry["max"]


def test_svi_step_quick(runs):
    result = load(runs, "svi_step")
    assert set(result["settings"]) == {"pinwheel", "pinwheel_beta1", "conv64", "dcgan32"}
    for name, setting in result["settings"].items():
        check = setting["check"]
        cases = [k[len("loss_rel_diff_") :] for k in check if k.startswith("loss_rel_diff_")]
        assert "torch" in cases
        for case in cases:
            # the hand-written loss is DecompositionELBO's on the same draws, and so are its gradients
            assert check[f"loss_rel_diff_{case}"] <= REL_TOL, (name, case, check)
            assert check[f"grad_rel_diff_{case}"] <= REL_TOL, (name, case, check)
        timing = setting["timing"]
        for case in ("torch", "pyro_svi", "pyro_diff"):
            check_timing(timing[case]["wall_s"])
            check_timing(timing[case]["cpu_s"])
        for case in ("pyro_svi", "pyro_diff"):
            assert positive(timing[case]["ratio_vs_torch"]["wall"]["of_medians"])
        assert positive(result["summary"][name]["pyro_svi_vs_torch"]["wall"])
    for name in ("pinwheel", "pinwheel_beta1", "dcgan32"):
        assert "torch_fast" in result["settings"][name]["timing"]


def test_divergences_quick(runs):
    result = load(runs, "divergences")
    assert set(result["cases"]) == {f"{e} B=32 D=4" for e in ("mmd", "inclusive-kl", "exclusive-kl")}
    for key, entry in result["cases"].items():
        values = entry["values"]
        assert values["rel_diff_vs_float64"] <= REL_TOL, (key, values)
        assert values["grad_rel_diff_vs_float64"] <= REL_TOL, (key, values)
        for mode in ("forward", "forward_backward"):
            check_timing(entry["time"][mode]["library"]["wall_s"])
            assert positive(entry["time"][mode]["speedup"]["wall"]["paired_median"])
        for impl in ("library", "naive"):
            assert entry["memory"][impl]["peak_increase"] >= 0
    by_scales = result["mmd_memory_by_number_of_scales"]["peak_increase_bytes"]
    assert set(by_scales) == {"1", "6", "12"}


def test_disentanglement_quick(runs):
    result = load(runs, "disentanglement")
    # identical random draws give identical vote matrices, hence identical scores
    assert result["check_straightforward"]["identical_vote_matrix"]
    assert result["lean_full"]["identical_vote_matrix"]
    assert result["lean_full"]["score"] == result["library"]["score"]
    assert 0 < result["library"]["score"] <= 1
    for name in ("straightforward", "lean"):
        assert result[name]["extrapolated"]
        assert positive(result[name]["speedup_wall"])
    check_timing(result["library"]["wall_s"])


def test_data_quick(runs):
    result = load(runs, "data")
    images = 3 * 6 * 4 * 8 * 8  # the quick subsample of the 3 x 6 x 40 x 32 x 32 grid
    assert result["render"]["images"] == result["load"]["images"] == images
    # a .npy header (128 bytes) and 512 bytes (64 x 64 bits) per image
    assert result["render"]["cache_file_bytes"] == 128 + 512 * images
    assert result["load"]["white_pixels"] > 0
    for key in ("render_wall_s", "load_wall_s", "touch_all_wall_s"):
        assert positive(result["summary"][key])


def test_metrics_quick(runs):
    pytest.importorskip("sklearn")
    result = load(runs, "metrics")
    # one fit per factor (or code and factor), each seeded alone: the same numbers with 1 and 2 jobs
    for name, check in result["check"].items():
        assert check["identical_across_jobs"], name
    timed = result["metrics"]
    assert set(timed) == {"dci", "sap", "sap_continuous", "modularity_explicitness", "beta_vae", "mig"}
    for name, entry in timed.items():
        assert positive(entry["wall_s"]), name
    assert 0 <= timed["dci"]["value"]["disentanglement"] <= 1 and 0 <= timed["sap"]["value"] <= 1
    assert 0 <= timed["beta_vae"]["value"]["eval_accuracy"] <= 1


# ------------------------------------------------------------------------------------------------------
# The per-step shortcuts in DecompVAE that the SVI benchmark relies on: a fixed prior module of the library
# builds its distribution once, and again only when its tensors change.

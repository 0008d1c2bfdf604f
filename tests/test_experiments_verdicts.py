"""The statistics behind the verdicts, and the verdicts on hand-made results with known answers."""

import math

import pytest

from pyro_decomp.experiments.verdicts import (
    VERDICTS,
    cell,
    clustering_arms,
    difference,
    independence_differences,
    paired_difference,
    paired_values,
)


def test_paired_difference_by_hand():
    # d = [0.1, 0.2, 0.1]: mean 0.1333, sd sqrt(((-1/30)^2 * 2 + (2/30)^2) / 2) = 0.0577, SE 0.0577/sqrt(3)
    mean, se, n = paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.6])
    assert n == 3
    assert mean == pytest.approx(0.4 / 3)
    assert se == pytest.approx(0.057735 / math.sqrt(3), rel=1e-4)
    assert se == pytest.approx(0.0333, abs=1e-4)
    # one pair: no spread
    assert paired_difference([2.0], [0.5]) == (1.5, None, 1)
    # pairing removes what the pairs share: a shared offset per seed leaves no spread at all
    mean, se, n = paired_difference([1.1, 5.1, -2.9], [1.0, 5.0, -3.0])
    assert mean == pytest.approx(0.1) and se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_difference([], [])


def test_unpaired_difference_by_hand():
    # means 0.6 and 0.4667; variances 0.01 and 0.01333: SE sqrt(0.01/3 + 0.01333/3)
    diff, se = difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.6])
    assert diff == pytest.approx(0.6 - 1.4 / 3)
    assert se == pytest.approx(math.sqrt(0.01 / 3 + (0.04 / 3) / 3), rel=1e-6)


def test_paired_values_match_seeds():
    result = {
        "runs": [
            {"arm": "a", "seed": 2, "metrics": {"x": 3.0}},
            {"arm": "a", "seed": 0, "metrics": {"x": 1.0}},
            {"arm": "a", "seed": 1, "metrics": {"x": 2.0}},
            {"arm": "b", "seed": 0, "metrics": {"x": 10.0}},
            {"arm": "b", "seed": 2, "metrics": {"x": 30.0}},
        ]
    }
    assert paired_values(result, "a", "b", "x") == ([1.0, 3.0], [10.0, 30.0])


def test_count_cell():
    from pyro_decomp.experiments.verdicts import COLUMNS

    fmt = dict((key, fmt) for key, _, fmt in COLUMNS["clustering"])["components_used"]
    assert cell([4.0, 2.0, 1.0, 4.0], fmt) == "2"
    assert cell([], fmt) == "–"
    assert cell([0.5, 0.7], "{:.2f}") == "0.60 ± 0.14"


# ---------------------------------------------------------------------------------------------- independence
def independence_result(gains, costs, seeds=(0, 1, 2), iso_err=100.0):
    """The isotropic prior and a PCA prior at β ∈ {1, 4}: per-seed disentanglement gains (one list per β)
    and relative reconstruction costs (one number per β) of the PCA prior over the isotropic one."""
    arms, runs = [], []
    for beta_index, beta in enumerate((1.0, 4.0)):
        for group in ("iso", "pca"):
            name = f"{group}_beta{beta:g}"
            arms.append(
                {"name": name, "group": group, "beta": beta, "alpha": 0.0, "label": f"{group}, β={beta:g}"}
            )
            for k, seed in enumerate(seeds):
                base = 0.5 + 0.05 * seed  # seeds differ a lot; the pairs share it
                err = iso_err * (1 + 0.3 * seed)
                if group == "pca":
                    dis, err = base + gains[beta_index][k], err * (1 + costs[beta_index])
                else:
                    dis = base
                runs.append(
                    {
                        "arm": name,
                        "seed": seed,
                        "metrics": {"disentanglement": dis, "reconstruction_error": err},
                    }
                )
    return {"arms": arms, "runs": runs}


def test_independence_differences_are_paired():
    result = independence_result([[0.02, 0.03, 0.04], [0.01, -0.01, 0.0]], [0.05, 0.10])
    rows = independence_differences(result)
    assert [(r["group"], r["beta"], r["label"]) for r in rows] == [("pca", 1.0, "pca"), ("pca", 4.0, "pca")]
    mean, se, n = rows[0]["disentanglement"]
    assert (mean, se, n) == (pytest.approx(0.03), pytest.approx(0.01 / math.sqrt(3)), 3)
    # the reconstruction cost relative to the isotropic prior's mean error on the same seeds
    assert rows[0]["relative_cost"] == pytest.approx(0.05)
    assert rows[1]["relative_cost"] == pytest.approx(0.10)


def test_independence_verdict_held():
    # gains of 0.03 ± 0.006 at both β, far beyond 2 SE though the seeds spread by 0.05 each; cost 5%
    result = independence_result([[0.03, 0.04, 0.03], [0.02, 0.03, 0.025]], [0.05, 0.05])
    verdict = VERDICTS["independence"](result)
    assert verdict["status"] == "held"
    assert "2/2 β values" in verdict["evidence"] and "+5.0%" in verdict["evidence"]
    assert verdict["rule"].startswith("Rule (paired by seed)")


def test_independence_verdict_did_not_hold():
    # the mean gain is positive but within 2 SE of zero at one of the two β values: no majority
    result = independence_result([[0.03, 0.04, 0.03], [0.10, -0.08, 0.01]], [0.0, 0.0])
    assert VERDICTS["independence"](result)["status"] == "did not hold"
    # a loss everywhere
    result = independence_result([[-0.03, -0.04, -0.03], [-0.02, -0.03, -0.025]], [0.0, 0.0])
    verdict = VERDICTS["independence"](result)
    assert verdict["status"] == "did not hold" and "0/2 β values" in verdict["evidence"]


def test_independence_verdict_partly_held_when_reconstruction_costs_too_much():
    result = independence_result([[0.03, 0.04, 0.03], [0.02, 0.03, 0.025]], [0.15, 0.25])
    assert VERDICTS["independence"](result)["status"].startswith("partly held")


def test_independence_verdict_with_one_seed_is_not_judged():
    result = independence_result([[0.01], [0.02]], [0.0, 0.0], seeds=(0,))
    verdict = VERDICTS["independence"](result)
    assert verdict["status"] == "not judged (1 seed)"
    assert (
        "at least 2 seeds" in verdict["rule"] and "+0.010" in verdict["evidence"]
    )  # the numbers still shown
    result = independence_result([[0.01], [-0.02]], [0.0, 0.0], seeds=(0,))
    assert VERDICTS["independence"](result)["status"] == "not judged (1 seed)"


# ---------------------------------------------------------------------------------------------- clustering
def clustering_result(ari, used=None):
    """``ari[(setting, role)]``: per-seed ARIs of the (β=1, α=0) ("beta") and (β=0, α=1) ("alpha") arms."""
    arms, runs = [], []
    for (setting, role), values in ari.items():
        beta, alpha = (1.0, 0.0) if role == "beta" else (0.0, 1.0)
        name = f"{setting}_beta{beta:g}_alpha{alpha:g}"
        arms.append(
            {"name": name, "setting": setting, "beta": beta, "alpha": alpha, "label": name, "group": role}
        )
        for seed, value in enumerate(values):
            metrics = {"ari": value, "inclusive_kl": 1.0 + seed}
            if used is not None:
                metrics["components_used"] = used[(setting, role)][seed]
            runs.append({"arm": name, "seed": seed, "metrics": metrics})
    return {"arms": arms, "runs": runs}


def test_clustering_verdict_judges_the_decoder_setting():
    # decoder σ: α ahead by 0.400 (SE ≈ 0.05); global σ: β ahead by 0.120. Listed global first: the decoder
    # setting still leads
    ari = {
        ("global", "beta"): [0.95, 0.9, 0.97, 0.92],
        ("global", "alpha"): [0.85, 0.8, 0.9, 0.71],
        ("decoder", "beta"): [0.5, 0.6, 0.4, 0.55],
        ("decoder", "alpha"): [0.9, 0.95, 0.92, 0.88],
    }
    used = {key: [4, 4, 4, 4] for key in ari}
    used[("decoder", "beta")] = [2, 4, 1, 2]
    result = clustering_result(ari, used)
    assert [pair[0] for pair in clustering_arms(result)] == ["decoder", "global"]
    verdict = VERDICTS["clustering"](result)
    assert verdict["status"] == "held"
    evidence = verdict["evidence"]
    assert evidence.index("decoder predicts σ(z)") < evidence.index("global σ")
    assert "difference +0.400" in evidence  # 0.9125 − 0.5125
    assert "0/4 against 3/4" in evidence  # seeds on fewer than 4 components: α arm, β arm
    assert "difference -0.120" in evidence  # global σ: 0.815 − 0.935
    assert "not judged" in evidence.lower()
    assert "2 standard errors" in verdict["rule"]


def test_clustering_verdict_did_not_hold():
    ari = {
        ("decoder", "beta"): [0.85, 0.75, 0.9],
        ("decoder", "alpha"): [0.8, 0.9, 0.7],
        ("global", "beta"): [0.9, 0.9, 0.9],
        ("global", "alpha"): [0.5, 0.6, 0.7],
    }
    assert VERDICTS["clustering"](clustering_result(ari))["status"] == "did not hold"
    # ahead, but by less than 2 standard errors
    ari[("decoder", "alpha")] = [0.95, 0.7, 0.99]
    assert VERDICTS["clustering"](clustering_result(ari))["status"] == "did not hold"


def test_clustering_verdict_with_one_setting_and_one_seed():
    result = clustering_result({("", "beta"): [0.4], ("", "alpha"): [0.6]})
    verdict = VERDICTS["clustering"](result)
    assert verdict["status"] == "not judged (1 seed)"
    assert "not judged" not in verdict["evidence"].lower()  # only the other setting's evidence says so


def test_two_seeds_in_every_arm_are_needed():
    ari = {("", "beta"): [0.4, 0.41], ("", "alpha"): [0.9, 0.91]}
    assert VERDICTS["clustering"](clustering_result(ari))["status"] == "held"
    ari[("", "beta")] = [0.4]  # one arm with one seed
    assert VERDICTS["clustering"](clustering_result(ari))["status"] == "not judged (1 seed)"

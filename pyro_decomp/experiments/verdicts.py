"""What each experiment reports and how its verdict on the paper's claim is decided from the measurements.

Each rule is fixed before the numbers and stated in the report before them. Comparisons of two arms over seeds
use the standard error of a difference: for arms trained independently (clustering) the difference of the
means, with SE = √(s_a²/n_a + s_b²/n_b) (:func:`difference`); for arms whose runs pair up by seed
(independence: the same seed gives the same data order and initial networks for every prior) the mean of the
per-seed differences d_i = a_i − b_i, with SE = sd(d)/√n (:func:`paired_difference`), which removes the
variation that the paired runs share.

A verdict needs a spread, so at least :data:`MIN_SEEDS` seeds in every arm: with fewer, the status is
"not judged (n seed(s))" (:func:`not_judged`), whatever the numbers, and the report says so in every table.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from pyro_decomp.experiments.measure import ACTIVE_VARIANCE

__all__ = [
    "CLAIMS",
    "COLUMNS",
    "MIN_SEEDS",
    "PINWHEEL_COMPONENTS",
    "VERDICTS",
    "clustering_arms",
    "collapsed_runs",
    "difference",
    "independence_differences",
    "not_judged",
    "paired_difference",
    "paired_values",
    "uncollapsed_differences",
]

#: the components of the pinwheel mixture prior
PINWHEEL_COMPONENTS = 4
#: the fewest seeds per arm for a verdict (a standard error needs two)
MIN_SEEDS = 2


def count_below(limit: float) -> Callable[[Sequence[float]], str]:
    """A table cell that counts the seeds whose value is below ``limit``."""

    def count(values: Sequence[float]) -> str:
        return str(sum(v < limit for v in values)) if values else "–"

    return count


# Table columns per experiment: (metric key, header, cell format). A format string shows mean ± sd over the
# seeds; a function makes the cell from the seeds' values itself.
Format = Union[str, Callable[[Sequence[float]], str]]
COLUMNS: Dict[str, Tuple[Tuple[str, str, Format], ...]] = {
    "clustering": (
        ("ari", "ARI (clusters vs arms) ↑", "{:.3f}"),
        (
            "components_used",
            f"seeds using < {PINWHEEL_COMPONENTS} components",
            count_below(PINWHEEL_COMPONENTS),
        ),
        ("decoder_scale", "likelihood σ (mean, held-out)", "{:.3f}"),
        ("inclusive_kl", "held-out KL(p‖q) ↓", "{:.3f}"),
        ("mmd", "held-out MMD ↓", "{:.4f}"),
        ("mutual_information", "I(x; z) (nats)", "{:.2f}"),
        ("reconstruction", "E log p(x|z) ↑", "{:.3f}"),
    ),
    "independence": (
        ("disentanglement", "disentanglement ↑", "{:.3f}"),
        ("mig", "MIG ↑", "{:.3f}"),
        ("dci", "DCI disentanglement ↑", "{:.3f}"),
        ("sap", "SAP ↑", "{:.3f}"),
        ("reconstruction_error", "−E log p(x|z) (nats/image) ↓", "{:.1f}"),
        ("max_code_variance", "collapsed runs", count_below(ACTIVE_VARIANCE)),
    ),
    "sparsity": (
        ("hoyer", "Hoyer sparsity ↑", "{:.3f}"),
        ("reconstruction", "E log p(x|z) (nats/image) ↑", "{:.1f}"),
        ("iwae", "IWAE log p(x) ↑", "{:.1f}"),
        ("divergence", "held-out MMD D̂ ↓", "{:.4f}"),
    ),
}

CLAIMS = {
    "clustering": (
        "With the 4-component mixture prior, the α term (inclusive KL, β = 0) — not the β term alone — makes "
        "the aggregate encoding q(z) cluster by pinwheel arm (Mathieu et al., 2019, §5.2, Fig. 4)."
    ),
    "independence": (
        "Breaking the rotation symmetry of the isotropic Gaussian prior — an anisotropic Gaussian or a "
        "Student-t — improves axis-aligned disentanglement at little cost in reconstruction (§5.1, Fig. 3)."
    ),
    "sparsity": (
        "A sparse (spike-and-slab, γ = 0.8) prior with α > 0 gives sparser codes than the sparse prior alone "
        "(α = 0) or α alone (γ = 0), at a modest cost in likelihood (§5.3, Fig. 5)."
    ),
}


# ---------------------------------------------------------------------------------------------- summaries
def arm_values(result: Dict[str, Any], arm: str, key: str) -> List[float]:
    return [r["metrics"][key] for r in result["runs"] if r["arm"] == arm and key in r["metrics"]]


def mean_sd(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError("no values to summarise")
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(values) > 1 else None)


def cell(values: Sequence[float], fmt: Format) -> str:
    if callable(fmt):
        return fmt(values)
    if not values:
        return "–"
    mean, sd = mean_sd(values)
    if not math.isfinite(mean):
        return str(mean)
    return fmt.format(mean) if sd is None else f"{fmt.format(mean)} ± {fmt.format(sd)}"


def difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, Optional[float]]:
    """mean(a) − mean(b) and its standard error (None unless both have at least 2 values)."""
    ma, sa = mean_sd(a)
    mb, sb = mean_sd(b)
    if sa is None or sb is None:
        return ma - mb, None
    return ma - mb, math.sqrt(sa**2 / len(a) + sb**2 / len(b))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, Optional[float], int]:
    """The mean of the paired differences d_i = a_i − b_i, its standard error sd(d)/√n (the sample standard
    deviation, n − 1 in the denominator; ``None`` for one pair) and the number of pairs n.

    :raises ValueError: when ``a`` and ``b`` differ in length or are empty.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values must pair up, got {len(a)} and {len(b)} values")
    if not len(a):
        raise ValueError("no pairs to compare")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    n = len(d)
    return float(d.mean()), (float(d.std() / math.sqrt(n)) if n > 1 else None), n


def paired_values(
    result: Dict[str, Any], arm_a: str, arm_b: str, key: str
) -> Tuple[List[float], List[float]]:
    """The values of metric ``key`` of two arms on the seeds that both have, in the order of the seeds."""

    def by_seed(arm):
        return {
            r["seed"]: r["metrics"][key] for r in result["runs"] if r["arm"] == arm and key in r["metrics"]
        }

    a, b = by_seed(arm_a), by_seed(arm_b)
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def seeds_per_arm(result: Dict[str, Any]) -> int:
    """The fewest measured seeds of any arm of ``result``."""
    counts = {a["name"]: 0 for a in result["arms"]}
    for run in result["runs"]:
        if run["arm"] in counts and run.get("metrics"):
            counts[run["arm"]] += 1
    return min(counts.values(), default=0)


def not_judged(result: Dict[str, Any]) -> Optional[str]:
    """``"not judged (n seed(s))"`` when some arm has fewer than :data:`MIN_SEEDS` seeds, else None."""
    n = seeds_per_arm(result)
    if n >= MIN_SEEDS:
        return None
    return f"not judged ({n} seed{'' if n == 1 else 's'})"


def _fmt_se(mean: float, se: Optional[float], fmt: str = "{:+.3f}") -> str:
    return fmt.format(mean) + ("" if se is None else f" ± {se:.3f}")


# ---------------------------------------------------------------------------------------------- clustering
def clustering_arms(result: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """``(setting, α arm, β arm)`` per likelihood setting of the clustering experiment, the headline (the
    paper's decoder-predicted scale, ``"decoder"``) first."""
    arms = result["arms"]
    settings = list(dict.fromkeys(a.get("setting", "") for a in arms))
    settings.sort(key=lambda s: s != "decoder")
    pairs = []
    for setting in settings:
        members = [a for a in arms if a.get("setting", "") == setting]
        alpha = next(a["name"] for a in members if a["alpha"] > 0 and a["beta"] == 0)
        beta = next(a["name"] for a in members if a["alpha"] == 0 and a["beta"] > 0)
        pairs.append((setting, alpha, beta))
    return pairs


_SETTING_NAMES = {
    "decoder": "with the paper's likelihood (the decoder predicts σ(z))",
    "global": "with one learnt global σ (initialised at 0.1)",
    "paper": "with the paper's β term (the KL against p(z)², the paper's likelihood)",
    "": "",
}


def _clustering_comparison(
    result, setting: str, alpha: str, beta: str, note: str = ""
) -> Tuple[str, float, Optional[float]]:
    """One sentence on the two arms of ``setting``; the ARI difference (α arm − β arm) and its standard
    error."""
    a, b = arm_values(result, alpha, "ari"), arm_values(result, beta, "ari")
    diff, se = difference(a, b)
    where = _SETTING_NAMES.get(setting, setting) + note
    text = (f"{where[0].upper()}{where[1:]}: " if where else "") + (
        f"ARI {mean_sd(a)[0]:.3f} with (β=0, α=1) against {mean_sd(b)[0]:.3f} with (β=1, α=0), "
        f"difference {diff:+.3f}"
        + (f" (standard error {se:.3f}, {len(a)} and {len(b)} seeds)" if se is not None else "")
    )
    used_a, used_b = arm_values(result, alpha, "components_used"), arm_values(result, beta, "components_used")
    if used_a and used_b:
        below = count_below(PINWHEEL_COMPONENTS)
        text += (
            f"; seeds whose encodings use fewer than {PINWHEEL_COMPONENTS} components: {below(used_a)}/"
            f"{len(used_a)} against {below(used_b)}/{len(used_b)}"
        )
    kl_a, kl_b = arm_values(result, alpha, "inclusive_kl"), arm_values(result, beta, "inclusive_kl")
    if kl_a and kl_b:
        text += f"; held-out KL(p‖q) {mean_sd(kl_a)[0]:.3f} against {mean_sd(kl_b)[0]:.3f}"
    sd_a, sd_b = arm_values(result, alpha, "decoder_scale"), arm_values(result, beta, "decoder_scale")
    if sd_a and sd_b:
        text += f"; likelihood σ {mean_sd(sd_a)[0]:.3f} against {mean_sd(sd_b)[0]:.3f}"
    return text + ".", diff, se


def _verdict_clustering(result) -> Dict[str, str]:
    (setting, alpha, beta), *others = clustering_arms(result)
    text, diff, se = _clustering_comparison(result, setting, alpha, beta)
    texts = [text] + [_clustering_comparison(result, *other, note=", not judged")[0] for other in others]
    status = "held" if se is not None and diff > 2 * se else "did not hold"
    where = f" {_SETTING_NAMES[setting]}," if _SETTING_NAMES.get(setting) else ""
    rule = (
        f"Rule:{where} the (β=0, α=1) arm clusters better than the (β=1, α=0) arm, with an ARI higher by "
        "more than 2 standard errors of the difference of the means"
        + ("; the other likelihood is reported, not judged." if others else ".")
    )
    return {"status": status, "evidence": " ".join(texts), "rule": rule}


# ---------------------------------------------------------------------------------------------- independence
def independence_differences(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each non-isotropic prior against the isotropic one at each β, paired by seed: one row per prior and β
    with ``group``, ``label`` (the prior's), ``beta``, ``disentanglement`` and ``reconstruction_error`` as
    ``(mean, standard error, pairs)`` of the paired differences (prior − isotropic), and ``relative_cost``:
    the mean difference in reconstruction error over the isotropic prior's mean error on the same seeds."""
    arms = {a["name"]: a for a in result["arms"]}
    betas = sorted({a["beta"] for a in arms.values()})
    groups = [g for g in dict.fromkeys(a["group"] for a in arms.values()) if g != "iso"]

    def arm_name(group, beta):
        return next(n for n, a in arms.items() if a["group"] == group and a["beta"] == beta)

    rows = []
    for group in groups:
        for beta in betas:
            name, iso = arm_name(group, beta), arm_name("iso", beta)
            row = {"group": group, "label": arms[name]["label"].rsplit(", β=", 1)[0], "beta": beta}
            for key in ("disentanglement", "reconstruction_error"):
                row[key] = paired_difference(*paired_values(result, name, iso, key))
            iso_err = paired_values(result, name, iso, "reconstruction_error")[1]
            row["relative_cost"] = row["reconstruction_error"][0] / abs(mean_sd(iso_err)[0])
            rows.append(row)
    return rows


def collapsed_runs(result: Dict[str, Any]) -> set:
    """``(arm, seed)`` of the runs that collapsed: the largest variance over the data of an encoder mean
    coordinate, ``max_code_variance``, below :data:`~pyro_decomp.experiments.measure.ACTIVE_VARIANCE` (no
    active dimension). Runs measured without it count as not collapsed."""
    return {
        (r["arm"], r["seed"])
        for r in result["runs"]
        if r["metrics"].get("max_code_variance", math.inf) < ACTIVE_VARIANCE
    }


def uncollapsed_differences(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The rows of :func:`independence_differences` again over the seeds where neither run of a pair
    collapsed (:func:`collapsed_runs`): per prior and β, ``group``, ``label``, ``beta``, ``collapsed`` (the
    collapsed runs of the prior and of the isotropic prior, over the seeds both have), ``pairs`` (those kept)
    and ``disentanglement`` as ``(mean, standard error, pairs)`` of the paired differences, ``None`` when no
    pair is left. Empty when the runs were measured without ``max_code_variance``."""
    if not any("max_code_variance" in r["metrics"] for r in result["runs"]):
        return []
    collapsed = collapsed_runs(result)
    arms = {a["name"]: a for a in result["arms"]}
    rows = []
    for name, arm in arms.items():
        iso = next((n for n, a in arms.items() if a["group"] == "iso" and a["beta"] == arm["beta"]), None)
        if arm["group"] == "iso" or iso is None:
            continue
        seeds = {r["seed"] for r in result["runs"] if r["arm"] == name} & {
            r["seed"] for r in result["runs"] if r["arm"] == iso
        }
        kept = {s for s in seeds if (name, s) not in collapsed and (iso, s) not in collapsed}
        sub = {"runs": [r for r in result["runs"] if r["seed"] in kept]}
        a, b = paired_values(sub, name, iso, "disentanglement")
        rows.append(
            {
                "group": arm["group"],
                "label": arm["label"].rsplit(", β=", 1)[0],
                "beta": arm["beta"],
                "collapsed": (
                    sum((name, s) in collapsed for s in seeds),
                    sum((iso, s) in collapsed for s in seeds),
                ),
                "pairs": len(a),
                "disentanglement": paired_difference(a, b) if a else None,
            }
        )
    return rows


def _verdict_independence(result) -> Dict[str, str]:
    rows = independence_differences(result)
    lines, statuses = [], []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        wins = 0
        for r in members:
            mean, se, _ = r["disentanglement"]
            wins += se is not None and mean > 2 * se
        cost = sum(r["relative_cost"] for r in members) / len(members)
        gains = ", ".join(
            f"β={r['beta']:g} {_fmt_se(r['disentanglement'][0], r['disentanglement'][1])}" for r in members
        )
        lines.append(
            f"{group}: disentanglement gain beyond 2 standard errors at {wins}/{len(members)} β values "
            f"({gains}), reconstruction error {100 * cost:+.1f}% on average"
        )
        if wins * 2 > len(members):
            statuses.append("held" if cost <= 0.10 else "partly held")
    if "held" in statuses:
        status = "held"
    elif "partly held" in statuses:
        status = "partly held (better disentanglement, but more than 10% worse reconstruction)"
    else:
        status = "did not hold"
    rule = (
        "Rule (paired by seed): at each β, each non-isotropic prior is compared with the isotropic prior on "
        "the same seeds, by the mean of the per-seed differences and its standard error (sd of the "
        "differences / √n). The claim held for a prior when its disentanglement gain exceeds 2 standard "
        "errors at a majority of the β values and its reconstruction error is "
        "on average (over β) at most 10% above the isotropic prior's; it held when some prior meets both, "
        "partly held when some prior meets only the first."
    )
    return {"status": status, "evidence": "; ".join(lines) + ".", "rule": rule}


def _verdict_sparsity(result) -> Dict[str, str]:
    arms = {a["name"]: a for a in result["arms"]}

    def hoyer(name):
        return mean_sd(arm_values(result, name, "hoyer"))[0]

    sparse = [n for n, a in arms.items() if a["prior_options"].get("gamma") == 0.8]
    dense = [n for n, a in arms.items() if a["prior_options"].get("gamma") == 0.0]
    sparse_alpha = [n for n in sparse if arms[n]["alpha"] > 0]
    sparse_zero = [n for n in sparse if arms[n]["alpha"] == 0]
    best = max(sparse_alpha, key=hoyer)
    rivals = sparse_zero + dense
    rival = max(rivals, key=hoyer)
    baseline = next(n for n in dense if arms[n]["alpha"] == 0)
    cost = mean_sd(arm_values(result, best, "iwae"))[0] - mean_sd(arm_values(result, baseline, "iwae"))[0]
    text = (
        f"Hoyer sparsity {hoyer(best):.3f} with {arms[best]['label']} against at most {hoyer(rival):.3f} "
        f"among the sparse prior alone and α alone (best of those: {arms[rival]['label']}); IWAE "
        f"log-likelihood {cost:+.1f} nats per image against {arms[baseline]['label']}."
    )
    status = "held" if hoyer(best) > hoyer(rival) else "did not hold"
    rule = (
        "Rule: the best γ=0.8, α>0 arm has a higher mean Hoyer sparsity than every γ=0.8, α=0 and every "
        "γ=0 arm (the likelihood cost is reported, not judged)."
    )
    return {"status": status, "evidence": text, "rule": rule}


def _judged_only_with_seeds(verdict: Callable[[Dict[str, Any]], Dict[str, str]]):
    """``verdict`` with its status replaced by :func:`not_judged`'s when the arms have too few seeds (the
    rule and the evidence are still given)."""

    def decide(result: Dict[str, Any]) -> Dict[str, str]:
        out = verdict(result)
        note = not_judged(result)
        if note is not None:
            out["status"] = note
            out["rule"] += f" A verdict needs at least {MIN_SEEDS} seeds in every arm."
        return out

    decide.__name__ = verdict.__name__
    decide.__doc__ = verdict.__doc__
    return decide


VERDICTS = {
    "clustering": _judged_only_with_seeds(_verdict_clustering),
    "independence": _judged_only_with_seeds(_verdict_independence),
    "sparsity": _judged_only_with_seeds(_verdict_sparsity),
}

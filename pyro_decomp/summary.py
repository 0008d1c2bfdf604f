"""What the numbers of an evaluation mean: their units, which way is better, the level that chance
reaches, and whether the encoder has collapsed.

A number without a reference misleads: a disentanglement score of 0.58 reads as half-way to perfect, until
random codes, scored by the same metric on the same factors, reach 0.5. :func:`chance_levels` gives that
reference; :func:`collapse_warning` says when the encodings carry (almost) nothing about the data, whatever
the other numbers say; :func:`cluster_ari` scores the encodings' clusters against the data's labels; and
:func:`summary_rows` turns ``evaluation.json`` into rows of (name, value, unit, better direction, chance).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from pyro_decomp import metrics

__all__ = [
    "COLLAPSE_MUTUAL_INFORMATION",
    "INACTIVE_VARIANCE_RATIO",
    "UNITS",
    "chance_levels",
    "cluster_ari",
    "collapse_warning",
    "kmeans",
    "summary_rows",
]

# the encoder has collapsed when Î(x; z) is below this (nats) ...
COLLAPSE_MUTUAL_INFORMATION = 0.05
# ... or when every dimension is inactive: encoder noise is more than this share of its aggregate variance
INACTIVE_VARIANCE_RATIO = 0.99

# name in evaluation.json -> (unit, better direction)
UNITS = {
    "loss": ("nats / point", "lower"),
    "reconstruction": ("nats / point (E_q log p(x|z))", "higher"),
    "kl": ("nats / point", "neither (the overlap factor)"),
    "other_kl": ("nats / point", "neither"),
    "divergence": ("D̂(q(z), p(z)), the run's estimator", "lower"),
    "reconstruction_squared_error": ("squared error / point", "lower"),
    "iwae_log_likelihood": ("nats / point", "higher"),
    "hoyer_sparsity": ("Hoyer sparsity in [0, 1]", "higher for sparse priors"),
    "overlap: mutual_information": ("nats (Î(x; z), at most log M)", "neither: near 0 is collapse"),
    "overlap: upper_bound": ("nats (log M)", "reference"),
    "overlap: variance_ratio": ("share in [0, 1]", "neither: near 1 is collapse"),
    "alignment": ("D(q(z), p(z)), the run's divergence", "lower"),
    "disentanglement": ("score in [0, 1] (Kim & Mnih)", "higher"),
    "mig": ("score in [0, 1] (MIG)", "higher"),
    "ari": ("adjusted Rand index in [-1, 1]", "higher (0 is chance)"),
    "dci_disentanglement": ("score in [0, 1] (DCI disentanglement)", "higher"),
    "dci_completeness": ("score in [0, 1] (DCI completeness)", "higher"),
    "dci_informativeness": ("test accuracy in [0, 1] (DCI informativeness)", "higher"),
    "sap": ("score in [0, 1] (SAP)", "higher"),
    "modularity": ("score in [0, 1] (modularity)", "higher"),
    "explicitness": ("ROC-AUC in [0, 1] (explicitness)", "higher"),
    "beta_vae": ("accuracy in [0, 1] (β-VAE score)", "higher"),
}
FACTOR_METRICS = (
    "disentanglement",
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "modularity",
    "explicitness",
    "beta_vae",
)  # the scores of ground-truth data, in the order the summary lists them


def chance_levels(
    factors: torch.Tensor,
    dim: int,
    *,
    num_votes: int,
    votes_size: int,
    seed: int = 0,
) -> Dict[str, float]:
    """The disentanglement score and MIG of random codes: ``(N, dim)`` draws of N(0, I), independent of the
    data, scored by the same metrics (and the same votes) on the same ``factors`` ``(N, K)``. A model scores
    above chance only where it beats these."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(len(factors), dim, generator=generator)
    return {
        "disentanglement": metrics.disentanglement_score(
            codes,
            factors,
            num_votes=num_votes,
            votes_size=votes_size,
            generator=torch.Generator().manual_seed(seed),
        ),
        "mig": metrics.mig(codes, factors),
    }


def collapse_warning(overlap: Dict[str, Any]) -> Optional[str]:
    """A line of warning when the encoder has collapsed, else None: Î(x; z) below
    :data:`COLLAPSE_MUTUAL_INFORMATION` nats, or every dimension inactive (variance ratio above
    :data:`INACTIVE_VARIANCE_RATIO`: q(z|x) hardly moves with x)."""
    mi = overlap.get("mutual_information")
    ratios = overlap.get("variance_ratio_per_dim")
    reasons = []
    if mi is not None and mi < COLLAPSE_MUTUAL_INFORMATION:
        reasons.append(f"I(x; z) = {mi:.3g} nats < {COLLAPSE_MUTUAL_INFORMATION}")
    if ratios is not None and len(ratios) and min(float(r) for r in ratios) > INACTIVE_VARIANCE_RATIO:
        reasons.append(f"every dimension is inactive (variance ratio > {INACTIVE_VARIANCE_RATIO})")
    if not reasons:
        return None
    return (
        "the encoder has collapsed (" + "; ".join(reasons) + "): z says (almost) nothing about x, so the "
        "scores below measure noise"
    )


def kmeans(
    points: torch.Tensor, k: int, *, iterations: int = 50, restarts: int = 5, seed: int = 0
) -> torch.Tensor:
    """Lloyd's k-means on ``points`` ``(N, D)`` from k-means++ starts (Arthur & Vassilvitskii, 2007: each
    next centre drawn with probability proportional to its squared distance to the nearest centre so far),
    the best of ``restarts`` runs by within-cluster sum of squares; returns the cluster of each point
    ``(N,)``. Seeded by ``seed``; a cluster left empty keeps its centre."""
    generator = torch.Generator().manual_seed(seed)
    points = points.double()
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = points[torch.randint(len(points), (1,), generator=generator)]
        for _ in range(1, k):
            d2 = torch.cdist(points, centres).min(-1).values.square()
            weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
            centres = torch.cat([centres, points[torch.multinomial(weights, 1, generator=generator)]])
        for _ in range(iterations):
            assignment = torch.cdist(points, centres).argmin(-1)
            counts = torch.bincount(assignment, minlength=k).unsqueeze(-1)
            sums = torch.zeros_like(centres).index_add_(0, assignment, points)
            moved = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
            if torch.equal(moved, centres):
                break
            centres = moved
        distance = torch.cdist(points, centres)
        assignment = distance.argmin(-1)
        inertia = float(distance.min(-1).values.square().sum())
        if inertia < best_inertia:
            best, best_inertia = assignment, inertia
    return best


def cluster_ari(codes: torch.Tensor, labels: torch.Tensor, prior, seed: int = 0) -> Dict[str, Any]:
    """The adjusted Rand index between the data's ``labels`` ``(N,)`` and clusters of the encoder means
    ``codes`` ``(N, D)``: each point's nearest component of a mixture prior module (one with ``locs``), else
    k-means with as many clusters as there are labels. Chance is 0."""
    labels = labels.long().flatten()
    locs = getattr(prior, "locs", None)
    if locs is not None:
        clusters = torch.cdist(codes.double(), locs.detach().cpu().double()).argmin(-1)
        how = "nearest prior component"
    else:
        k = int(labels.unique().numel())
        clusters = kmeans(codes, k, seed=seed)
        how = f"k-means, k = {k}"
    return {"value": metrics.adjusted_rand_index(labels, clusters), "clusters": how, "chance": 0.0}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The numbers of an evaluation a reader looks at first, each as ``{"name", "value", "unit", "better"}``
    and, where chance reaches a known level, ``"chance"``."""
    rows: List[Dict[str, Any]] = []

    def add(name, value, key=None, chance=None):
        if not _number(value):
            return
        unit, better = UNITS.get(key or name, ("", ""))
        row = {"name": name, "value": value, "unit": unit, "better": better}
        if chance is not None:
            row["chance"] = chance
        rows.append(row)

    for key in ("loss", "reconstruction", "kl", "divergence", "reconstruction_squared_error"):
        add(key, result.get(key))
    add("iwae_log_likelihood", result.get("iwae_log_likelihood", {}).get("mean"))
    add("hoyer_sparsity", result.get("hoyer_sparsity"))
    for key in ("mutual_information", "upper_bound", "variance_ratio"):
        add(f"overlap: {key}", result.get("overlap", {}).get(key))
    alignment = result.get("alignment", {})
    add(f"alignment: {alignment.get('divergence')}", alignment.get("value"), key="alignment")
    chance = result.get("chance", {})
    for key in FACTOR_METRICS:
        add(key, result.get(key), chance=chance.get(key))
    ari = result.get("ari")
    if isinstance(ari, dict):
        add(f"ari ({ari['clusters']})", ari.get("value"), key="ari", chance=ari.get("chance"))
    return rows

"""Predictor-based disentanglement metrics: models fitted to predict each factor from the codes, as
disentanglement_lib (Locatello et al., 2019) computes them.

* :func:`dci` -- disentanglement, completeness and informativeness of Eastwood & Williams (2018);
* :func:`sap` -- the separated attribute predictability of Kumar et al. (2018);
* :func:`explicitness` and :func:`modularity_explicitness` -- Ridgeway & Mozer (2018).

Each takes ``(codes, factors)`` like :func:`~pyro_decomp.metrics.mig`, either with explicit test arrays or
split at random into ``num_train`` training and ``num_test`` test points (disentanglement_lib: 10,000 and
5,000). The models are scikit-learn's, as disentanglement_lib's (``pip install "pyro-decomp[metrics]"``),
fitted factor by factor on ``n_jobs`` threads; each fit is seeded by ``random_state`` alone, so the numbers
do not depend on ``n_jobs``. Factors are class labels (their distinct values); a factor that takes one value
in the training points has nothing to predict and is left out (disentanglement_lib's models refuse it),
and the result names the factors used.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from pyro_decomp.metrics._common import (
    NUM_TEST,
    NUM_TRAIN,
    _labels,
    _map,
    _sklearn,
    _train_test,
)
from pyro_decomp.metrics.information import modularity

__all__ = ["dci", "dci_from_importance", "explicitness", "modularity_explicitness", "sap"]


def _split(codes, factors, test_codes, test_factors, num_train, num_test, generator):
    """numpy train/test codes, integer labels, and the factors that vary in the training points."""
    x_train, f_train, x_test, f_test = _train_test(
        codes, factors, test_codes, test_factors, num_train, num_test, generator
    )
    y_train, y_test = _labels(f_train, f_test)
    used = [k for k in range(y_train.shape[1]) if len(np.unique(y_train[:, k])) > 1]
    if not used:
        raise ValueError("every factor takes a single value in the training points: nothing to predict")
    return x_train, y_train, x_test, y_test, f_train, used


# ---------------------------------------------------------------------------------------------- DCI
def _normalised_entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Entropy along ``dim`` of ``p`` normalised to sum to one there, in base ``p.shape[dim]`` (0 in base 1:
    a distribution over one outcome)."""
    base = p.shape[dim]
    if base < 2:
        return torch.zeros(p.shape[1 - dim], dtype=p.dtype)
    p = p / p.sum(dim, keepdim=True)
    return -torch.xlogy(p, p).sum(dim) / math.log(base)


def dci_from_importance(importance) -> Tuple[float, float]:
    r"""Disentanglement and completeness (Eastwood & Williams, 2018, §2) of a ``(D, K)`` importance matrix R
    (R_ij: how much code i matters to the prediction of factor j), as disentanglement_lib computes them.

    .. math::

        D = \sum_i ρ_i \bigl(1 - H_K(P_{i·})\bigr), \quad ρ_i = \frac{\sum_j R_{ij}}{\sum_{ij} R_{ij}},
        \qquad
        C = \sum_j ρ_j \bigl(1 - H_D(P_{·j})\bigr), \quad ρ_j = \frac{\sum_i R_{ij}}{\sum_{ij} R_{ij}},

    where P_{i·} is row i of R + 10⁻¹¹ normalised to sum to one, P_{·j} column j likewise, and H_b the
    entropy in base b (``scipy.stats.entropy(R.T + 1e-11, base=K)`` in disentanglement_lib). An all-zero R
    takes uniform weights ρ (and scores 0). A diagonal R gives D = C = 1; a code that carries two of K
    factors equally has 1 − H_K = 1 − ln 2 / ln K. With K = 1 (D = 1) every code (factor) has entropy 0.

    :returns: ``(disentanglement, completeness)``.
    """
    r = torch.as_tensor(importance, dtype=torch.float64)
    if r.dim() != 2 or r.numel() == 0:
        raise ValueError(f"importance must be a non-empty (D, K) matrix, got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise ValueError("importance must hold finite, non-negative numbers")
    per_code = 1.0 - _normalised_entropy(r + 1e-11, dim=1)
    per_factor = 1.0 - _normalised_entropy(r + 1e-11, dim=0)
    weights = r if float(r.sum()) > 0 else torch.ones_like(r)
    code_weight = weights.sum(1) / weights.sum()
    factor_weight = weights.sum(0) / weights.sum()
    return float((per_code * code_weight).sum()), float((per_factor * factor_weight).sum())


def dci(
    codes,
    factors,
    test_codes=None,
    test_factors=None,
    *,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    generator: Optional[torch.Generator] = None,
    random_state: int = 0,
    n_jobs: Optional[int] = None,
    progress: bool = False,
) -> Dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams, 2018), as disentanglement_lib's
    ``compute_dci`` computes them.

    Per factor j, a ``GradientBoostingClassifier(random_state=random_state)`` (scikit-learn's defaults: 100
    stages of depth-3 trees, learning rate 0.1) is fitted on the training codes (not normalised) to predict
    the factor's value. Its ``|feature_importances_|`` make column j of the importance matrix R (D x K), and
    its accuracy the informativeness; ``"disentanglement"`` and ``"completeness"`` are
    :func:`dci_from_importance` of R, ``"informativeness_train"``/``"informativeness_test"`` the mean accuracy
    over factors on the training/test points. disentanglement_lib leaves the boosters unseeded (its trees
    break ties between equally good splits at random); here they are seeded.

    :param codes: ``(N, D)`` representations; the training points when test arrays are given.
    :param factors: ``(N, K)`` factor values or indices.
    :param test_codes: ``(M, D)`` test representations, or ``None`` to split ``codes`` at random.
    :param test_factors: ``(M, K)``.
    :param num_train: training points of the random split (disentanglement_lib: 10,000).
    :param num_test: test points of the random split (disentanglement_lib: 5,000).
    :param generator: a ``torch.Generator`` for the split.
    :param random_state: seed of every booster.
    :param n_jobs: boosters fitted at a time (``None``: one per usable core).
    :param progress: a progress bar over the factors on stderr.
    :returns: a dict with the four scores, ``"importance"`` (D x K' float64 tensor) and ``"factors_used"``
        (the K' factor columns that vary in the training points).
    """
    x_train, y_train, x_test, y_test, _, used = _split(
        codes, factors, test_codes, test_factors, num_train, num_test, generator
    )
    ensemble = _sklearn().ensemble

    def fit(k):
        model = ensemble.GradientBoostingClassifier(random_state=random_state).fit(x_train, y_train[:, k])
        return (
            np.abs(model.feature_importances_),
            float(np.mean(model.predict(x_train) == y_train[:, k])),
            float(np.mean(model.predict(x_test) == y_test[:, k])),
        )

    fits = _map(fit, used, n_jobs, progress, "DCI boosters")
    importance = torch.from_numpy(np.stack([f[0] for f in fits], 1).astype(np.float64))
    disentanglement, completeness = dci_from_importance(importance)
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness_train": float(np.mean([f[1] for f in fits])),
        "informativeness_test": float(np.mean([f[2] for f in fits])),
        "importance": importance,
        "factors_used": used,
    }


# ---------------------------------------------------------------------------------------------- SAP
def sap(
    codes,
    factors,
    test_codes=None,
    test_factors=None,
    *,
    continuous_factors: bool = False,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    generator: Optional[torch.Generator] = None,
    random_state: int = 0,
    n_jobs: Optional[int] = None,
    progress: bool = False,
    return_scores: bool = False,
):
    """The separated attribute predictability (SAP) score of Kumar et al. (2018, §3), as disentanglement_lib's
    ``compute_sap`` computes it.

    A score matrix S (D x K) says how well code i alone predicts factor j:

    * discrete factors (the default): S_ij is the test accuracy of
      ``LinearSVC(C=0.01, class_weight="balanced", random_state=random_state)`` fitted on code i alone;
    * ``continuous_factors``: on the training points, S_ij = cov(z_i, y_j)² / (var z_i · var y_j) (sample
      moments, ddof = 1), the squared correlation, and 0 where var z_i <= 1e-12.

    SAP = (1/K) Σ_j (S_(1)j − S_(2)j), the mean over factors of the gap between the largest and the
    second-largest entry of column j. disentanglement_lib's defaults: 10,000 / 5,000 points, discrete.
    disentanglement_lib leaves the classifiers unseeded; here they are seeded (scikit-learn's default
    ``dual="auto"`` solves the primal problem when there are more points than features, and uses no random
    numbers then). A score matrix with one code has no second-largest entry: D >= 2.

    :param codes: ``(N, D)`` representations, D >= 2; the training points when test arrays are given.
    :param factors: ``(N, K)`` factor values (continuous: their values are used) or indices.
    :param test_codes: ``(M, D)`` or ``None`` to split at random (continuous factors use no test points).
    :param test_factors: ``(M, K)``.
    :param continuous_factors: treat the factors as continuous.
    :param num_train: training points of the random split.
    :param num_test: test points of the random split.
    :param generator: a ``torch.Generator`` for the split.
    :param random_state: seed of every classifier.
    :param n_jobs: classifiers fitted at a time (``None``: one per usable core).
    :param progress: a progress bar over the D·K fits on stderr.
    :param return_scores: also return S (D x K' float64 tensor, the varying factors' columns).
    :returns: the score, or ``(score, S)``.
    """
    x_train, y_train, x_test, y_test, f_train, used = _split(
        codes, factors, test_codes, test_factors, num_train, num_test, generator
    )
    dim = x_train.shape[1]
    if dim < 2:
        raise ValueError(f"SAP needs at least 2 code dimensions, got {dim}")
    if continuous_factors:
        z = x_train - x_train.mean(0)
        y = f_train[:, used].astype(np.float64)
        y = y - y.mean(0)
        dof = max(len(z) - 1, 1)
        cov = z.T @ y / dof  # (D, K')
        var_z = np.square(z).sum(0) / dof
        var_y = np.square(y).sum(0) / dof
        active = var_z > 1e-12
        scores = np.square(cov) / (np.where(active, var_z, 1.0)[:, None] * var_y)
        scores[~active] = 0.0
    else:
        svm = _sklearn().svm
        pairs = [(i, k) for i in range(dim) for k in used]

        def fit(pair):
            i, k = pair
            model = svm.LinearSVC(C=0.01, class_weight="balanced", random_state=random_state)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", _sklearn().exceptions.ConvergenceWarning)
                model.fit(x_train[:, i : i + 1], y_train[:, k])
            return float(np.mean(model.predict(x_test[:, i : i + 1]) == y_test[:, k]))

        scores = np.array(_map(fit, pairs, n_jobs, progress, "SAP classifiers")).reshape(dim, len(used))
    top = np.sort(scores, axis=0)
    value = float(np.mean(top[-1] - top[-2]))
    return (value, torch.from_numpy(scores)) if return_scores else value


# ---------------------------------------------------------------------------------------------- explicitness
def _auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro ROC-AUC of ``proba`` (N, C) against the one-hot labels of ``y`` over ``classes`` (columns where
    both labels occur)."""
    metrics = _sklearn().metrics
    aucs = []
    for c, label in enumerate(classes):
        truth = y == label
        if truth.any() and not truth.all():
            aucs.append(metrics.roc_auc_score(truth, proba[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def explicitness(
    codes,
    factors,
    test_codes=None,
    test_factors=None,
    *,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    generator: Optional[torch.Generator] = None,
    random_state: int = 0,
    n_jobs: Optional[int] = None,
    progress: bool = False,
) -> Dict:
    """The explicitness of Ridgeway & Mozer (2018, §3), as disentanglement_lib's
    ``compute_modularity_explicitness`` computes it.

    The codes are standardised with the training points' mean and standard deviation (ddof = 0; a constant
    code is only centred). Per factor j, ``LogisticRegression(random_state=random_state)`` (scikit-learn's
    defaults: lbfgs, multinomial, C = 1) is fitted on all codes, and scored by the ROC-AUC of its
    ``predict_proba`` against the one-hot labels, averaged over the factor's values (macro; a value that is
    absent from the points scored is left out, where disentanglement_lib fails). The scores are the mean over
    factors on the training and on the test points.

    Parameters as :func:`dci`.

    :returns: ``{"explicitness_train", "explicitness_test", "factors_used"}``.
    """
    x_train, y_train, x_test, y_test, _, used = _split(
        codes, factors, test_codes, test_factors, num_train, num_test, generator
    )
    return _explicitness(x_train, y_train, x_test, y_test, used, random_state, n_jobs, progress)


def _explicitness(x_train, y_train, x_test, y_test, used, random_state, n_jobs, progress) -> Dict:
    mean, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
    linear_model = _sklearn().linear_model

    def fit(k):
        model = linear_model.LogisticRegression(random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _sklearn().exceptions.ConvergenceWarning)
            model.fit(x_train, y_train[:, k])
        return (
            _auc(y_train[:, k], model.predict_proba(x_train), model.classes_),
            _auc(y_test[:, k], model.predict_proba(x_test), model.classes_),
        )

    fits = _map(fit, used, n_jobs, progress, "explicitness classifiers")
    return {
        "explicitness_train": float(np.mean([f[0] for f in fits])),
        "explicitness_test": float(np.nanmean([f[1] for f in fits])),
        "factors_used": used,
    }


def modularity_explicitness(
    codes,
    factors,
    test_codes=None,
    test_factors=None,
    *,
    bins: int = 20,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    generator: Optional[torch.Generator] = None,
    random_state: int = 0,
    n_jobs: Optional[int] = None,
    progress: bool = False,
) -> Dict:
    """Modularity and explicitness (Ridgeway & Mozer, 2018) on one split, as disentanglement_lib's
    ``compute_modularity_explicitness``: :func:`~pyro_decomp.metrics.modularity` of the training points
    (``bins`` histogram bins, disentanglement_lib: 20) and :func:`explicitness`.

    Parameters as :func:`dci`, and ``bins``.

    :returns: ``{"modularity", "explicitness_train", "explicitness_test", "factors_used"}``.
    """
    x_train, y_train, x_test, y_test, _, used = _split(
        codes, factors, test_codes, test_factors, num_train, num_test, generator
    )
    result = {"modularity": modularity(torch.from_numpy(x_train), torch.from_numpy(y_train), bins=bins)}
    result.update(_explicitness(x_train, y_train, x_test, y_test, used, random_state, n_jobs, progress))
    return result

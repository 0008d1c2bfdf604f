"""pyro_decomp.metrics.predictors: DCI, SAP, explicitness -- closed forms, disentanglement_lib's synthetic
table, and independence from the number of threads."""

import math
import sys

import numpy as np
import pytest
import torch

from pyro_decomp.metrics import (
    dci,
    dci_from_importance,
    explicitness,
    modularity_explicitness,
    sap,
)

sklearn = pytest.importorskip("sklearn")


def identity_data(num_points, num_factors=10, num_values=10, seed=0):
    """disentanglement_lib's IdentityObservationsData: independent factors uniform on num_values values,
    observed as they are. Returns train and test factors (independent draws)."""
    rs = np.random.RandomState(seed)
    return (
        rs.randint(num_values, size=(num_points, num_factors)),
        rs.randint(num_values, size=(num_points, num_factors)),
    )


def permuted(factors, seed=0):
    """Each row's entries in a random order (disentanglement_lib's 'bad' representation)."""
    rs = np.random.RandomState(seed)
    return np.stack([rs.permutation(row) for row in factors]).astype(np.float64)


def duplicated(factors):
    return np.hstack([factors, factors]).astype(np.float64)


# ------------------------------------------------------------------------------------------ DCI closed forms
LN2_LN10 = math.log(2) / math.log(10)


@pytest.mark.parametrize(
    "matrix, expected",
    [
        (np.diag(5.0 * np.ones(5)), (1.0, 1.0)),
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), (1.0, 1.0)),  # an empty code
        (np.zeros((10, 10)), (0.0, 0.0)),
        (np.vstack([np.diag(5.0 * np.ones(5))] * 2), (1.0, 1.0 - LN2_LN10)),  # redundant codes
        (np.diag(5.0 * np.ones(5))[:2], (1.0, 1.0)),  # missed factors
        (np.hstack([np.diag(5.0 * np.ones(5))] * 2), (1.0 - LN2_LN10, 1.0)),  # one code, two factors
    ],
)
def test_dci_hand_built_importance_matrices(matrix, expected):
    d, c = dci_from_importance(torch.tensor(matrix))
    # the 1e-11 added to every entry moves the entropies by O(1e-9)
    assert d == pytest.approx(expected[0], abs=1e-8)
    assert c == pytest.approx(expected[1], abs=1e-8)


def test_dci_from_importance_matches_scipy_entropy():
    stats = pytest.importorskip("scipy.stats")
    r = np.random.RandomState(1).gamma(0.5, size=(7, 4))
    d, c = dci_from_importance(r)
    per_code = 1 - stats.entropy(r.T + 1e-11, base=4)
    per_factor = 1 - stats.entropy(r + 1e-11, base=7)
    assert d == pytest.approx(np.sum(per_code * r.sum(1) / r.sum()), rel=1e-12)
    assert c == pytest.approx(np.sum(per_factor * r.sum(0) / r.sum()), rel=1e-12)


def test_dci_from_importance_errors():
    with pytest.raises(ValueError, match="non-negative"):
        dci_from_importance(-np.eye(3))
    with pytest.raises(ValueError, match=r"\(D, K\)"):
        dci_from_importance(np.ones(3))


# ---------------------------------------------------------------------------------------------- DCI table
def dci_table(num_points, num_factors, num_values):
    train, test = identity_data(num_points, num_factors, num_values)
    kw = dict(n_jobs=1)
    ident = dci(train.astype(float), train, test.astype(float), test, **kw)
    perm = dci(permuted(train, 1), train, permuted(test, 2), test, **kw)
    dup = dci(duplicated(train), train, duplicated(test), test, **kw)
    assert 0.9 <= ident["disentanglement"] <= 1.0 and 0.9 <= ident["completeness"] <= 1.0
    assert ident["informativeness_test"] == 1.0
    assert 0.0 <= perm["disentanglement"] <= 0.2 and 0.0 <= perm["completeness"] <= 0.2
    assert 0.9 <= dup["disentanglement"] <= 1.0
    # each factor's importance split between its two copies: 1 - H_D with D = 2K codes
    target = 1 - math.log(2) / math.log(2 * num_factors)
    assert abs(dup["completeness"] - target) <= 0.1
    return dup


@pytest.mark.slow
def test_dci_disentanglement_lib_table():
    # disentanglement_lib's dci_test: 10 factors of 10 values, 1,000 train and 1,000 test points; its
    # duplicated-code target is 1 - ln 2 / ln 10 +- 0.1 (which holds for 1 - ln 2 / ln 20 too)
    dup = dci_table(1000, 10, 10)
    assert abs(dup["completeness"] - (1 - LN2_LN10)) <= 0.1


def test_dci_table_small():
    # binary factors: one booster tree per stage, so this runs in seconds
    dci_table(200, 3, 2)


# ---------------------------------------------------------------------------------------------- SAP
def test_sap_continuous_hand_computed_covariances():
    # codes a = (1, 2, 3, 4), b = (1, 0, 0, 1), c constant; factors y1 = (0, 0, 1, 1), y2 = (1, 2, 3, 4).
    # deviations: a (-1.5, -.5, .5, 1.5), b (.5, -.5, -.5, .5), y1 (-.5, -.5, .5, .5), y2 = a's:
    # (n-1) cov(a, y1) = 2, (n-1) var a = 5, (n-1) var y1 = 1 -> S = 4/5; cov(b, y1) = cov(b, y2) = 0;
    # corr(a, y2) = 1; c has zero variance -> 0. SAP = mean(0.8 - 0, 1 - 0) = 0.9.
    codes = torch.tensor([[1.0, 1.0, 5.0], [2.0, 0.0, 5.0], [3.0, 0.0, 5.0], [4.0, 1.0, 5.0]])
    factors = torch.tensor([[0, 1], [0, 2], [1, 3], [1, 4]])
    score, s = sap(codes, factors, codes, factors, continuous_factors=True, return_scores=True)
    expected = torch.tensor([[0.8, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(s, expected, atol=1e-12)
    assert score == pytest.approx(0.9, abs=1e-12)


def test_sap_continuous_matches_numpy_cov():
    rs = np.random.RandomState(3)
    codes, factors = rs.randn(300, 4), rs.randint(5, size=(300, 3))
    codes[:, 0] += factors[:, 1]
    _, s = sap(codes, factors, codes, factors, continuous_factors=True, return_scores=True)
    for i in range(4):
        for j in range(3):
            c = np.cov(codes[:, i], factors[:, j], ddof=1)
            assert s[i, j] == pytest.approx(c[0, 1] ** 2 / (c[0, 0] * c[1, 1]), rel=1e-10)


@pytest.mark.parametrize("num_points", [3000])
def test_sap_disentanglement_lib_table(num_points):
    # disentanglement_lib's sap_score_test: continuous factors, 3,000 / 3,000 points
    train, test = identity_data(num_points)
    kw = dict(continuous_factors=True)
    assert 0.9 <= sap(train.astype(float), train, test.astype(float), test, **kw) <= 1.0
    assert 0.0 <= sap(duplicated(train), train, duplicated(test), test, **kw) <= 0.2
    zeros = np.zeros(train.shape)
    assert 0.0 <= sap(zeros, train, zeros, test, **kw) <= 0.2


def test_sap_discrete_identity_codes_of_binary_factors():
    # a binary factor is read off its own code exactly (S = 1) and not at all from an independent one: the
    # balanced LinearSVC predicts about half of the points right, so SAP is about 1/2
    train, test = identity_data(2000, num_factors=3, num_values=2)
    score, s = sap(train.astype(float), train, test.astype(float), test, return_scores=True, n_jobs=1)
    assert torch.equal(s.diagonal(), torch.ones(3, dtype=torch.float64))
    off = s[~torch.eye(3, dtype=torch.bool)]
    # accuracy of a fixed rule on 2,000 fair coin flips: sd 0.011, so 0.5 +- 0.06 is 5 sd
    assert (off - 0.5).abs().max() < 0.06
    top2 = s.sort(0).values[-2]
    assert score == pytest.approx(float((1 - top2).mean()), abs=1e-12)
    assert 0.4 < score < 0.6


# ---------------------------------------------------------------------------------------------- explicitness
def test_explicitness_identity_and_random_codes():
    train, test = identity_data(1500, num_factors=3, num_values=4)
    good = explicitness(train.astype(float), train, test.astype(float), test, n_jobs=1)
    assert good["explicitness_test"] > 0.95
    rs = np.random.RandomState(5)
    bad = explicitness(rs.randn(1500, 3), train, rs.randn(1500, 3), test, n_jobs=1)
    # AUC of an uninformative score on 1,500 points: sd about 0.015 per value, so 0.5 +- 0.06
    assert abs(bad["explicitness_test"] - 0.5) < 0.06


def test_explicitness_equals_disentanglement_libs_multilabel_auc():
    # disentanglement_lib: standardise with the training moments, LogisticRegression(), ROC-AUC of
    # predict_proba against MultiLabelBinarizer's one-hot labels (macro average)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import MultiLabelBinarizer

    rs = np.random.RandomState(6)
    f_train, f_test = rs.randint(4, size=(600, 2)), rs.randint(4, size=(400, 2))
    z_train = f_train @ rs.randn(2, 3) + rs.randn(600, 3)
    z_test = f_test @ rs.randn(2, 3) + rs.randn(400, 3)
    mean, sd = z_train.mean(0), z_train.std(0)
    expected_train, expected_test = [], []
    for k in range(2):
        clf = LogisticRegression().fit((z_train - mean) / sd, f_train[:, k])
        mlb = MultiLabelBinarizer()
        expected_train.append(
            roc_auc_score(mlb.fit_transform(f_train[:, k : k + 1]), clf.predict_proba((z_train - mean) / sd))
        )
        expected_test.append(
            roc_auc_score(mlb.fit_transform(f_test[:, k : k + 1]), clf.predict_proba((z_test - mean) / sd))
        )
    got = explicitness(z_train, f_train, z_test, f_test, n_jobs=1)
    assert got["explicitness_train"] == pytest.approx(np.mean(expected_train), rel=1e-12)
    assert got["explicitness_test"] == pytest.approx(np.mean(expected_test), rel=1e-12)


# ------------------------------------------------------------------------------------------ threads, splits
def test_results_do_not_depend_on_the_number_of_threads():
    train, test = identity_data(200, num_factors=3, num_values=2, seed=8)
    rs = np.random.RandomState(9)
    z_train = train + 0.8 * rs.randn(*train.shape)
    z_test = test + 0.8 * rs.randn(*test.shape)
    args = (z_train, train, z_test, test)
    one = dci(*args, n_jobs=1)
    three = dci(*args, n_jobs=3)
    assert torch.equal(one["importance"], three["importance"])
    assert one["informativeness_test"] == three["informativeness_test"]
    assert torch.equal(
        sap(*args, n_jobs=1, return_scores=True)[1], sap(*args, n_jobs=4, return_scores=True)[1]
    )
    assert explicitness(*args, n_jobs=1) == explicitness(*args, n_jobs=2)


def test_seeded_split():
    train, _ = identity_data(400, num_factors=3, num_values=3)
    codes = train + 0.5 * np.random.RandomState(0).randn(*train.shape)
    kw = dict(num_train=200, num_test=100, n_jobs=1)
    a = modularity_explicitness(codes, train, generator=torch.Generator().manual_seed(1), **kw)
    b = modularity_explicitness(codes, train, generator=torch.Generator().manual_seed(1), **kw)
    # the split is rows of a randperm: the same as passing those rows explicitly
    order = torch.randperm(400, generator=torch.Generator().manual_seed(1)).numpy()
    tr, te = order[:200], order[200:300]
    c = modularity_explicitness(codes[tr], train[tr], codes[te], train[te], n_jobs=1)
    assert a == b == c


def test_factor_with_one_value_is_left_out():
    train, test = identity_data(200, num_factors=3, num_values=2)
    train[:, 1] = test[:, 1] = 7
    result = dci(train.astype(float), train, test.astype(float), test, n_jobs=1)
    assert result["factors_used"] == [0, 2] and result["importance"].shape == (3, 2)


def test_predictor_errors():
    codes, factors = np.zeros((10, 2)), np.zeros((10, 2), dtype=int)
    factors[::2] = 1
    with pytest.raises(ValueError, match="num_train \\+ num_test = 15"):
        dci(codes, factors)  # the default 10,000 + 5,000 points do not fit: stated, not truncated
    with pytest.raises(ValueError, match="num_train \\+ num_test = 15"):
        sap(codes, factors, num_train=10, num_test=5)
    with pytest.raises(ValueError, match="both test_codes and test_factors"):
        sap(codes, factors, codes)
    with pytest.raises(ValueError, match="same number of rows"):
        dci(codes, factors[:5], codes, factors)
    with pytest.raises(ValueError, match="single value"):
        dci(codes, np.zeros((10, 2)), codes, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        sap(codes[:, :1], factors, codes[:, :1], factors)
    with pytest.raises(ValueError, match="n_jobs"):
        dci(codes, factors, codes, factors, n_jobs=0)


def test_missing_scikit_learn_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    codes, factors = np.random.RandomState(0).randn(10, 2), np.arange(20).reshape(10, 2) % 3
    with pytest.raises(ImportError, match=r'pip install "pyro-decomp\[metrics\]"') as info:
        dci(codes, factors, codes, factors)
    assert "\n" not in str(info.value)

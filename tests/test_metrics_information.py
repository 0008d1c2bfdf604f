"""pyro_decomp.metrics.information: MIG and modularity."""

import math

import numpy as np
import pytest
import torch

from pyro_decomp.metrics import (
    mig,
    modularity,
    modularity_from_mutual_information,
)


def grid_factors(sizes):
    """Every combination of factor indices, in mixed-radix order (the last factor varies fastest)."""
    return torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(-1, len(sizes))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def noisy_codes(factors, noise, extra=0, seed=0):
    g = gen(seed)
    f = factors.double()
    codes = f + noise * torch.randn(f.shape, generator=g, dtype=f.dtype)
    if extra:
        codes = torch.cat([codes, torch.randn(f.shape[0], extra, generator=g, dtype=f.dtype)], -1)
    return codes


# ---------------------------------------------------------------------------------------------- MIG
def reference_mutual_information(codes, factors, bins):
    """I(z_d; v_k) from explicit histograms, one (d, k) pair at a time."""
    n, dim = codes.shape
    out = np.zeros((dim, factors.shape[1]))
    for d in range(dim):
        c = codes[:, d]
        edges = np.linspace(c.min(), c.max(), bins + 1)
        b = np.clip(np.digitize(c, edges[1:-1]), 0, bins - 1)
        for k in range(factors.shape[1]):
            _, v = np.unique(factors[:, k], return_inverse=True)
            joint = np.zeros((bins, v.max() + 1))
            np.add.at(joint, (b, v), 1.0 / n)
            pb, pv = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
            nz = joint > 0
            out[d, k] = (joint[nz] * np.log(joint[nz] / (pb * pv)[nz])).sum()
    return out


def test_mig_identity_is_one():
    # on a full grid each factor is a function of its own dimension (20 equal-width bins separate up to 20
    # values), so I(z_k; v_k) = H(v_k), and the other dimensions are independent of it: I = 0
    factors = grid_factors((3, 4, 5, 2))
    value, mi = mig(factors.float(), factors, return_mutual_information=True)
    assert value == pytest.approx(1.0, abs=1e-12)
    entropy = torch.tensor([math.log(s) for s in (3, 4, 5, 2)], dtype=torch.float64)
    assert torch.allclose(mi, torch.diag(entropy), atol=1e-12)


def test_mig_known_partial_code():
    # dimension 0 reveals only floor(v_0 / 2) of a 4-valued factor: I = log 2 = H(v_0) / 2; dimension 1
    # encodes factor 1 exactly; factor 0's gap is log 2 - 0, so MIG = (1/2 + 1) / 2
    factors = grid_factors((4, 3))
    codes = torch.stack([torch.div(factors[:, 0], 2, rounding_mode="floor"), factors[:, 1]], -1).double()
    assert mig(codes, factors) == pytest.approx(0.75, abs=1e-12)


def test_mig_matches_explicit_histograms():
    factors = grid_factors((3, 4, 6)).repeat(20, 1)
    codes = noisy_codes(factors, 1.0, extra=1).numpy()
    _, mi = mig(codes, factors, bins=7, return_mutual_information=True)
    assert np.allclose(mi.numpy(), reference_mutual_information(codes, factors.numpy(), 7), atol=1e-12)


def test_mig_random_codes_is_about_zero():
    # Under independence 2 N Î(z_d; v_k) is about chi-squared with (bins-1)(n_k-1) degrees of freedom, so
    # each estimate has standard deviation sqrt(2 df) / (2N); the gap between the top two of D such estimates
    # stays within a few of them. Bound: 4 standard deviations, divided by H(v_k), for every factor.
    sizes, bins = (4, 5, 6), 20
    factors = grid_factors(sizes).repeat(100, 1)
    n = factors.shape[0]
    codes = torch.randn(n, 4, generator=gen(5))
    value = mig(codes, factors, bins=bins)
    bound = max(4 * math.sqrt(2 * (bins - 1) * (s - 1)) / (2 * n) / math.log(s) for s in sizes)
    assert 0 <= value < bound


def test_mig_errors():
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        mig(torch.zeros(6, 1), grid_factors((2, 3)))
    with pytest.raises(ValueError, match="more than one value"):
        mig(torch.randn(5, 2), torch.zeros(5, 1))


# ---------------------------------------------------------------------------------------------- modularity
@pytest.mark.parametrize(
    "matrix, expected",
    [
        (np.diag(5.0 * np.ones(5)), 1.0),
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2.0 / 3.0),  # an empty code scores 0
        (np.zeros((10, 10)), 0.0),
        (np.vstack([np.diag(5.0 * np.ones(5))] * 2), 1.0),  # redundant codes
        (np.diag(5.0 * np.ones(5))[:2], 1.0),  # missed factors
        # one code, two of K = 10 factors: δ = m² / (m² (K - 1)) = 1/9
        (np.hstack([np.diag(5.0 * np.ones(5))] * 2), 1.0 - 1.0 / 9.0),
    ],
)
def test_modularity_hand_built_information_tables(matrix, expected):
    assert modularity_from_mutual_information(matrix) == pytest.approx(expected, abs=1e-12)


def identity_factors(num_points, seed=0):
    """disentanglement_lib's IdentityObservationsData: 10 independent factors uniform on 10 values."""
    return np.random.RandomState(seed).randint(10, size=(num_points, 10))


def test_modularity_disentanglement_lib_table():
    pytest.importorskip("sklearn")
    # disentanglement_lib's modularity_explicitness_test: 3,000 points (20,000 for the permuted code); the
    # 20 histogram bins of an integer code on 0..9 keep its 10 values apart, as its identity discretiser does
    factors = identity_factors(3000)
    assert 0.9 <= modularity(factors.astype(float), factors) <= 1.0
    assert 0.9 <= modularity(np.hstack([factors, factors]).astype(float), factors) <= 1.0
    many = identity_factors(20000, seed=1)
    rs = np.random.RandomState(2)
    shuffled = np.stack([rs.permutation(row) for row in many]).astype(float)
    assert 0.0 <= modularity(shuffled, many) <= 0.2


def test_modularity_information_equals_explicit_histograms():
    pytest.importorskip("sklearn")
    factors = grid_factors((3, 4, 5))
    codes = noisy_codes(factors, 0.7, extra=2, seed=5)
    _, table = modularity(codes, factors, bins=20, return_mutual_information=True)
    expected = reference_mutual_information(codes.numpy(), factors.numpy(), 20)
    assert np.allclose(table.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_modularity_errors():
    with pytest.raises(ValueError, match="bins"):
        modularity(torch.randn(10, 2), torch.zeros(10, 2), bins=0)
    with pytest.raises(ValueError, match=r"\(D, K\)"):
        modularity_from_mutual_information(np.ones(3))

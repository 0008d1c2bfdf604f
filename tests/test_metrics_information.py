"""pyro_decomp.metrics.information: MIG and modularity."""

import math

import numpy as np
import pytest
import torch

from pyro_decomp.metrics import (
    mig,
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

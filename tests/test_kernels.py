"""Kernels against brute-force loops over pairs, scales and coordinates, and their hand-written gradients
against autograd and finite differences."""

import pytest
import torch

import pyro_decomp.kernels as kn
from pyro_decomp.kernels import IMQKernel, RBFKernel

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def imq_loop(a, b, per_dim=True, scales=SCALES):
    """k(a_i, b_j) by explicit loops over pairs, scales and coordinates."""
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            for s in scales:
                c = 2.0 * s
                if per_dim:
                    for d in range(a.shape[1]):
                        out[i, j] += c / (c + float(a[i, d] - b[j, d]) ** 2)
                else:
                    out[i, j] += c / (c + float(((a[i] - b[j]) ** 2).sum()))
    return out


@pytest.mark.parametrize("per_dim", [True, False])
def test_imq_gram_matches_double_loop(per_dim):
    a, b = torch.randn(5, 3), torch.randn(4, 3) * 2
    gram = IMQKernel(per_dim=per_dim)(a, b)
    assert gram.shape == (5, 4)
    assert torch.allclose(gram.double(), imq_loop(a, b, per_dim), rtol=1e-5)


def test_imq_custom_scales_and_diagonal():
    a = torch.randn(6, 4)
    gram = IMQKernel(scales=(0.3, 7.0))(a, a)
    assert torch.allclose(gram.double(), imq_loop(a, a, scales=(0.3, 7.0)), rtol=1e-5)
    # k(z, z) = sum_s sum_d 1
    assert torch.allclose(gram.diagonal(), torch.full((6,), 2.0 * 4))


def test_rbf_gram_fixed_and_median_bandwidth():
    a, b = torch.randn(5, 3), torch.randn(7, 3)
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
    assert torch.allclose(RBFKernel(bandwidth=1.7)(a, b), torch.exp(-d2 / (2 * 1.7**2)), rtol=1e-5)
    pooled = torch.cat([a, b])
    p2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    i, j = torch.triu_indices(12, 12, offset=1)
    med = p2[i, j].median()
    assert torch.allclose(RBFKernel()(a, b), torch.exp(-d2 / (2 * med)), rtol=1e-5)


@pytest.mark.parametrize("kernel", [IMQKernel(), IMQKernel(per_dim=False), RBFKernel(0.8)])
def test_kernel_leading_dims_are_independent_copies(kernel):
    a, b = torch.randn(3, 6, 4), torch.randn(3, 5, 4)
    gram = kernel(a, b)
    assert gram.shape == (3, 6, 5)
    for k in range(3):
        assert torch.allclose(gram[k], kernel(a[k], b[k]), rtol=1e-5)
    # a (6, D) broadcasts against b (3, 5, D)
    assert torch.allclose(kernel(a[0], b), torch.stack([kernel(a[0], b[k]) for k in range(3)]), rtol=1e-5)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_imq_pair_sums_and_gradients_match_gram_in_many_chunks(lead, monkeypatch):
    """The fused per-dimension sums (upper triangle, gradient accumulated in the forward pass) equal the
    sums of the gram matrix, with chunks of a few rows (uneven last chunk) and with one chunk."""
    kernel = IMQKernel()
    x = torch.randn(*lead, 11, 3, dtype=torch.float64, requires_grad=True)
    y = (torch.randn(*lead, 11, 3, dtype=torch.float64) + 0.5).requires_grad_()

    def reference():
        gx, gy, gxy = kernel(x, x), kernel(y, y), kernel(x, y)
        return kn._offdiag_sum(gx), kn._offdiag_sum(gy), gxy.sum()

    ref = reference()
    ref_grads = [torch.autograd.grad(s, (x, y), allow_unused=True) for s in ref]
    rows_of_two = 2 * (3 if lead else 1) * 3 * 11 + 5
    for budget in (1 << 17, rows_of_two):
        monkeypatch.setattr(kn, "_CPU_CHUNK", budget)
        sums = kernel.pair_sums(x, y)
        for s, r, r_grads in zip(sums, ref, ref_grads):
            assert torch.allclose(s, r, rtol=1e-10)
            grads = torch.autograd.grad(s, (x, y), allow_unused=True)
            for g, h in zip(grads, r_grads):
                if h is None:
                    assert g is None or not g.any()
                else:
                    assert torch.allclose(g, h, rtol=1e-8, atol=1e-12)


def test_imq_autograd_functions_pass_gradcheck(monkeypatch):
    monkeypatch.setattr(kn, "_CPU_CHUNK", 17)  # several chunks of a few rows
    a = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    k = IMQKernel(scales=(0.2, 1.5))
    assert torch.autograd.gradcheck(lambda a, b: k(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a: k(a, a), (a,))
    assert torch.autograd.gradcheck(lambda a, b: k.pair_sums(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a: k.pair_sums(a, b.detach()), (a,))
    full = IMQKernel(scales=(0.2, 1.5), per_dim=False)
    assert torch.autograd.gradcheck(lambda a, b: full(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a: full(a, a), (a,))


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="scales"):
        IMQKernel(scales=(1.0, -2.0))
    with pytest.raises(ValueError, match="scales"):
        IMQKernel(scales=())
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(bandwidth=0.0)
    with pytest.raises(ValueError, match="same last"):
        IMQKernel()(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., B, D\)"):
        IMQKernel()(torch.randn(3), torch.randn(3, 1))

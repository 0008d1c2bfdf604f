"""Marginal CDFs and the map to normal scores: closed forms, scipy, the probability integral transform."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import scipy.special as sp
import torch

from pyro_decomp.marginals import prior_cdf_transform, student_t_cdf


def test_student_t_cdf_matches_closed_forms_and_scipy():
    t = torch.cat([torch.linspace(-60, 60, 601), torch.tensor([-1e4, -1e-8, 0.0, 1e-8, 1e4])]).double()
    lower = t < -5
    # closed forms, written without cancellation in the lower tail (u = -|t|): F_1(u) = atan(-1/u) / π
    # (Cauchy) and F_2(u) = 1 / (r (r - u)), r = sqrt(2 + u²); F(t) = 1 - F(-t) above 0. (scipy's stdtr loses
    # digits near t = 0 for ν = 1.)
    u = -t.abs()
    r = torch.sqrt(2 + u * u)
    tails = {1.0: torch.where(u < 0, torch.atan(-1 / u) / math.pi, 0.5), 2.0: 1 / (r * (r - u))}
    for df, tail in tails.items():
        ref = torch.where(t <= 0, tail, 1 - tail)
        ours = student_t_cdf(t, df)
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-15)
        assert torch.allclose(ours[lower], ref[lower], rtol=1e-10, atol=0)  # relative precision in the tail
    for df in (0.7, 3.0, 9.0, 40.0, 1000.0):
        ours = student_t_cdf(t, df).numpy()
        ref = sp.stdtr(df, t.numpy())
        assert np.allclose(ours, ref, rtol=1e-9, atol=1e-13)
        normal = lower.numpy() & (ref > 1e-300)  # scipy flushes subnormal results to 0
        assert np.allclose(ours[normal], ref[normal], rtol=1e-8, atol=0)
    # loc, scale and broadcasting over df
    df = torch.tensor([2.0, 5.0, 9.0], dtype=torch.float64)
    x = torch.tensor([[0.3], [-2.0]], dtype=torch.float64)
    ours = student_t_cdf(x, df, loc=1.0, scale=2.0)
    ref = sp.stdtr(df.numpy(), (x.numpy() - 1.0) / 2.0)
    assert ours.shape == (2, 3) and np.allclose(ours.numpy(), ref, rtol=1e-10)


def test_prior_cdf_transform_maps_prior_draws_to_standard_normals():
    # for a Student-t prior the transform is Φ^{-1}(F_t(z)); compare with scipy pointwise, then check that
    # prior draws come out N(0, 1): mean and variance within 5 standard errors (n = 20000)
    prior = dist.StudentT(
        torch.tensor([3.0, 9.0]), torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.5])
    ).to_event(1)
    z = prior.sample((20000,))
    out = prior_cdf_transform(prior)(z)
    expected = sp.ndtri(sp.stdtr(np.array([3.0, 9.0]), (z.double().numpy() - [0.5, -1.0]) / [2.0, 0.5]))
    assert np.allclose(out.numpy(), expected, rtol=1e-7, atol=1e-9)
    assert out.mean(0).abs().max() < 5 / math.sqrt(20000)
    assert (out.var(0) - 1).abs().max() < 5 * math.sqrt(2 / 20000)
    # far tails stay finite and ordered
    far = prior_cdf_transform(prior)(torch.tensor([[-1e6, 1e6], [1e6, -1e6]]))
    assert torch.isfinite(far).all() and far[0, 0] < -5 and far[0, 1] > 5


def test_prior_cdf_transform_other_priors():
    z = torch.randn(50, 2, dtype=torch.float64) * 3
    normal = dist.Normal(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])).to_event(1)
    assert torch.allclose(prior_cdf_transform(normal)(z), (z - normal.mean) / normal.stddev.double())
    laplace = dist.Laplace(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).to_event(
        1
    )
    tail = 0.5 * torch.exp(-z.abs())  # Laplace: P(X <= -|z|)
    assert torch.allclose(prior_cdf_transform(laplace)(z), z.sign() * -torch.special.ndtri(tail), atol=1e-9)
    cauchy = dist.Cauchy(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).to_event(1)
    tail = torch.atan(1 / z.abs()) / math.pi
    assert torch.allclose(prior_cdf_transform(cauchy)(z), z.sign() * -torch.special.ndtri(tail), atol=1e-9)
    # a family without closed-form tails goes through its cdf
    uniform = dist.Uniform(-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).to_event(
        1
    )
    inside = torch.rand(20, 2, dtype=torch.float64) * 2 - 1
    assert torch.allclose(
        prior_cdf_transform(uniform)(inside), torch.special.ndtri((inside + 1) / 2), atol=1e-9
    )
    # a Gaussian mixture: marginal CDF Σ_k π_k Φ((z_d - μ_kd) / σ)
    locs = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, 0.3).to_event(1))

    def phi(x):  # Φ with its lower tail intact (torch.special.ndtr flushes it to 0 beyond -9)
        return 0.5 * torch.special.erfc(-x / math.sqrt(2))

    lower = (weights[:, None] * phi((z.unsqueeze(-2) - locs) / 0.3)).sum(-2)
    upper = (weights[:, None] * phi((locs - z.unsqueeze(-2)) / 0.3)).sum(-2)
    expected = torch.where(lower < 0.5, torch.special.ndtri(lower), -torch.special.ndtri(upper))
    assert torch.allclose(prior_cdf_transform(mix)(z), expected, atol=1e-8)
    assert torch.isfinite(expected).all()  # z reaches 20 standard deviations: both tails are exercised
    with pytest.raises(ValueError, match="marginal CDF"):
        prior_cdf_transform(dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))(z)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        prior_cdf_transform(normal)(torch.zeros(4, 3))

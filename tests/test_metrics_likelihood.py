"""pyro_decomp.metrics.likelihood: The IWAE log-likelihood."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_decomp import DecompVAE
from pyro_decomp.metrics import (
    iwae_log_likelihood,
)


# ---------------------------------------------------------------------------------------------- IWAE
class LinearEncoder(nn.Module):
    """q(z|x) = N(A (x - b) + c, diag(s²)), with fixed A, b, c, s."""

    def __init__(self, A, b, c, s):
        super().__init__()
        for name, value in dict(A=A, b=b, c=c, s=s).items():
            self.register_buffer(name, value)
        self.anchor = nn.Parameter(torch.zeros((), dtype=A.dtype))  # so the module has a device and a mode

    def forward(self, x):
        loc = (x - self.b) @ self.A.T + self.c
        return loc, self.s.expand_as(loc)


def linear_gaussian(sigma=0.5, loc_shift=0.0, scale_factor=1.0):
    """z ~ N(0, I_2), x | z ~ N(W z + b, σ² I_3), W with orthogonal columns so that p(z|x) is diagonal:
    p(z|x) = N(Σ Wᵀ (x - b) / σ², Σ), Σ = (I + WᵀW / σ²)^{-1}; log p(x) = log N(x; b, W Wᵀ + σ² I)."""
    dtype = torch.float64
    W = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [0.0, 1.5]], dtype=dtype)  # orthogonal columns
    b = torch.tensor([0.3, -0.2, 0.1], dtype=dtype)
    post_var = 1 / (1 + (W * W).sum(0) / sigma**2)
    A = post_var[:, None] * W.T / sigma**2
    decoder = nn.Linear(2, 3).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    encoder = LinearEncoder(A, b, torch.full((2,), loc_shift, dtype=dtype), post_var.sqrt() * scale_factor)
    prior = dist.Normal(torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype)).to_event(1)
    vae = DecompVAE(encoder, decoder, prior, likelihood="normal", likelihood_scale=sigma).double()
    marginal = dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(3, dtype=dtype))
    posterior = (A, b, post_var)
    return vae, marginal, posterior


def test_iwae_is_exact_with_the_true_posterior():
    # with q(z|x) = p(z|x) every importance weight equals p(x): the estimate is exact for any S
    vae, marginal, _ = linear_gaussian()
    x = marginal.sample((16,))
    for s, batch_size in ((1, None), (50, None), (50, 7), (50, 3)):
        est = iwae_log_likelihood(vae, x, num_samples=s, batch_size=batch_size)
        assert est.shape == (16,)
        assert torch.allclose(est, marginal.log_prob(x), atol=1e-10)


def gaussian_kl_and_chi2(vae, x, posterior):
    """Per point: KL(q(z|x) || p(z|x)) and E_q[w²] / p(x)² = ∫ p(z|x)² / q(z|x) dz (diagonal Gaussians)."""
    A, b, post_var = posterior
    m = (x - b) @ A.T
    s2 = post_var
    mu, t = vae.encoder(x)
    t2 = t**2
    kl = 0.5 * (t2 / s2 + (mu - m) ** 2 / s2 - 1 + torch.log(s2 / t2)).sum(-1)
    a = 2 / s2 - 1 / t2
    bb = 2 * m / s2 - mu / t2
    c = 2 * m**2 / s2 - mu**2 / t2
    chi2 = (t / (s2 * a.sqrt()) * torch.exp(0.5 * (bb**2 / a - c))).prod(-1)
    return kl, chi2


def test_iwae_bias_matches_theory_and_shrinks_with_samples():
    # S = 1 is the ELBO: E[log p(x) - estimate] = KL(q || p(z|x)), checked to 4 standard errors of the mean
    # over 400 points. For large S, the delta method gives E[gap] ≈ (E[w²]/p² - 1) / (2S) and a standard
    # deviation ≈ sqrt((E[w²]/p² - 1) / S) per point: the S = 2000 estimate must sit within 4 standard
    # errors of that small bias. The mean gap must decrease with S.
    vae, marginal, posterior = linear_gaussian(loc_shift=0.2, scale_factor=1.2)
    x = marginal.sample((400,))
    exact = marginal.log_prob(x)
    kl, chi2 = gaussian_kl_and_chi2(vae, x, posterior)
    var_w = chi2 - 1
    gaps = {}
    for s in (1, 20, 2000):
        gap = exact - iwae_log_likelihood(vae, x, num_samples=s, batch_size=20000)
        gaps[s] = gap.mean().item()
        if s == 1:
            se = gap.std().item() / math.sqrt(len(x))
            assert abs(gaps[1] - kl.mean().item()) < 4 * se
    se_big = (var_w / 2000).sqrt().mean().item() / math.sqrt(len(x))
    assert abs(gaps[2000] - (var_w / 4000).mean().item()) < 4 * se_big
    assert gaps[1] > gaps[20] > gaps[2000] - 4 * se_big
    assert gaps[20] > 0


def test_iwae_restores_mode_and_needs_no_grad():
    vae, marginal, _ = linear_gaussian()
    vae.train()
    est = iwae_log_likelihood(vae, marginal.sample((3,)), num_samples=4)
    assert vae.training and not est.requires_grad
    vae.eval()
    iwae_log_likelihood(vae, marginal.sample((3,)), num_samples=4)
    assert not vae.training
    with pytest.raises(ValueError, match="num_samples"):
        iwae_log_likelihood(vae, marginal.sample((3,)), num_samples=0)
    with pytest.raises(ValueError, match="x must be a tensor"):
        iwae_log_likelihood(vae, torch.zeros(3), num_samples=2)


class ScaleDecoder(nn.Module):
    """``z -> (W z + b, scale(z))``: the linear-Gaussian decoder with a per-point scale, either the constant σ
    or ``σ · (1 + softplus(v · z))`` when ``varying``."""

    predicts_scale = True

    def __init__(self, linear, sigma, varying=False):
        super().__init__()
        self.linear = linear
        self.sigma = sigma
        self.varying = varying
        self.register_buffer("v", torch.tensor([0.7, -1.3], dtype=linear.weight.dtype))

    def forward(self, z):
        loc = self.linear(z)
        if not self.varying:
            return loc, torch.full_like(loc, self.sigma)
        factor = 1 + nn.functional.softplus(z @ self.v)
        return loc, self.sigma * factor.unsqueeze(-1).expand_as(loc)


def scale_decoder_vae(varying, sigma=0.5):
    vae, marginal, posterior = linear_gaussian(sigma=sigma)
    tuple_vae = DecompVAE(
        vae.encoder, ScaleDecoder(vae.decoder, sigma, varying), vae.prior_distribution(), likelihood="normal"
    ).double()
    assert not hasattr(tuple_vae, "log_obs_scale")
    return vae, tuple_vae, marginal


def test_iwae_with_a_decoder_scale_equal_to_the_global_one():
    # the predicted scale σ equals the global one: the same draws give the same estimate, and with the true
    # posterior it is exact
    vae, tuple_vae, marginal = scale_decoder_vae(varying=False)
    x = marginal.sample((16,))
    for s, batch_size in ((1, None), (30, None), (30, 7)):
        pyro.set_rng_seed(3)
        ours = iwae_log_likelihood(tuple_vae, x, num_samples=s, batch_size=batch_size)
        pyro.set_rng_seed(3)
        theirs = iwae_log_likelihood(vae, x, num_samples=s, batch_size=batch_size)
        assert ours.shape == (16,)
        assert torch.allclose(ours, theirs, atol=1e-12)
        assert torch.allclose(ours, marginal.log_prob(x), atol=1e-10)


def test_iwae_with_a_varying_decoder_scale_matches_a_loop():
    # log p̂(x_b) = logsumexp_s [Σ_i log N(x_bi; μ_i(z_s), σ_i(z_s)) + log p(z_s) − log q(z_s|x_b)] − log S,
    # written one sample and one point at a time on the same draws
    _, vae, marginal = scale_decoder_vae(varying=True)
    x = marginal.sample((5,))
    S = 12
    pyro.set_rng_seed(7)
    est = iwae_log_likelihood(vae, x, num_samples=S)
    pyro.set_rng_seed(7)
    q = vae.encoder_distribution(x)
    z = q.sample((S,))
    prior = vae.prior_distribution()
    expected = torch.empty(5, dtype=x.dtype)
    for b in range(5):
        log_w = []
        for s in range(S):
            loc, scale = vae.decoder(z[s, b])
            log_lik = torch.distributions.Normal(loc, scale).log_prob(x[b]).sum()
            qb = torch.distributions.Normal(q.base_dist.loc[b], q.base_dist.scale[b])
            log_w.append(log_lik + prior.log_prob(z[s, b]) - qb.log_prob(z[s, b]).sum())
        expected[b] = torch.logsumexp(torch.stack(log_w), 0) - math.log(S)
    assert torch.allclose(est, expected, atol=1e-10)
    # the varying scale does change the estimate
    _, constant, _ = scale_decoder_vae(varying=False)
    pyro.set_rng_seed(7)
    assert (iwae_log_likelihood(constant, x, num_samples=S) != est).all()

import math

import pyro.distributions as dist
import pytest
import torch
from scipy import integrate
from torch import nn
from torch.distributions import kl_divergence

from pyro_decomp.divergences import (
    DIVERGENCES,
    MMD,
    ExclusiveKL,
    IMQKernel,
    InclusiveKL,
    RBFKernel,
    build_divergence,
    prior_draws,
)

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def std_normal(d, loc=0.0, scale=1.0):
    return dist.Normal(torch.full((d,), float(loc)), torch.full((d,), float(scale))).to_event(1)


# ----------------------------------------------------------------------------------- brute-force references
def mmd_loop(x, y, k):
    """The U-statistic of DESIGN §2 by loops over the gram entries."""
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    B = x.shape[0]
    same = sum(float(kxx[i, j] + kyy[i, j]) for i in range(B) for j in range(B) if i != j)
    cross = sum(float(kxy[i, j]) for i in range(B) for j in range(B))
    return same / (B * (B - 1)) - 2.0 * cross / B**2


def log_aggregate_loop(q_loc, q_scale, v):
    """log (1/B) sum_b N(v_i; loc_b, scale_b^2 I), one i at a time."""
    B = q_loc.shape[0]
    out = []
    for i in range(v.shape[0]):
        terms = [dist.Normal(q_loc[b], q_scale[b]).log_prob(v[i]).sum() for b in range(B)]
        out.append(torch.logsumexp(torch.stack(terms), 0) - math.log(B))
    return torch.stack(out)


# -------------------------------------------------------------------------------------------------- MMD
@pytest.mark.parametrize("kernel", [IMQKernel(), IMQKernel(per_dim=False), RBFKernel(1.3)])
def test_mmd_matches_double_loop_with_the_same_prior_draws(kernel):
    z = torch.randn(6, 3) + 0.4
    prior = std_normal(3).expand([6])
    torch.manual_seed(7)
    value = MMD(kernel)(z, None, prior)
    torch.manual_seed(7)
    zp = prior.sample()
    assert value.dim() == 0
    assert value.item() == pytest.approx(mmd_loop(z, zp, kernel), rel=1e-5)


def test_mmd_rbf_median_bandwidth_is_shared_by_the_three_terms():
    z = torch.randn(6, 2)
    prior = std_normal(2).expand([6])
    torch.manual_seed(3)
    value = MMD(RBFKernel())(z, None, prior)
    torch.manual_seed(3)
    zp = prior.sample()
    pooled = torch.cat([z, zp])
    p2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    i, j = torch.triu_indices(12, 12, offset=1)
    sigma = p2[i, j].median().sqrt().item()
    assert value.item() == pytest.approx(mmd_loop(z, zp, RBFKernel(sigma)), rel=1e-5)


def test_mmd_leading_dims_average_per_copy_estimates():
    z = torch.randn(3, 5, 2)
    prior = std_normal(2)  # batch shape () is expanded to z's (3, 5)
    torch.manual_seed(11)
    value = MMD()(z, None, prior)
    torch.manual_seed(11)
    zp = prior.expand([3, 5]).sample()
    expected = sum(mmd_loop(z[k], zp[k], IMQKernel()) for k in range(3)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-5)


def expected_mmd_gaussians(shift, d, sq=1.0, sp=1.0, scales=SCALES):
    """MMD^2 of the per-dim IMQ kernel between N(shift, sq^2 I) and N(0, sp^2 I), by quadrature:
    each 1-D kernel term is E[c / (c + w^2)] with w the difference of two independent draws."""

    def mean_imq(c, m, v):
        def integrand(w):
            return c / (c + w * w) * math.exp(-((w - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)

        return integrate.quad(integrand, -math.inf, math.inf, epsabs=1e-12)[0]

    total = 0.0
    for s in scales:
        c = 2 * s
        total += mean_imq(c, 0, 2 * sq**2) + mean_imq(c, 0, 2 * sp**2) - 2 * mean_imq(c, shift, sq**2 + sp**2)
    return d * total


def test_mmd_is_unbiased_and_grows_with_a_mean_shift():
    """Mean over R independent minibatches vs. the quadrature value of MMD^2(q, p); tolerance 4 standard
    errors of that mean (sample sd over the R estimates / sqrt(R)). At shift 0, q = p and MMD^2 = 0."""
    R, B, D = 150, 24, 2
    est = MMD()
    prior = std_normal(D).expand([B])
    means = []
    for shift in (0.0, 0.5, 1.0):
        values = torch.stack([est(torch.randn(B, D) + shift, None, prior) for _ in range(R)])
        mean, se = values.mean().item(), values.std().item() / math.sqrt(R)
        assert abs(mean - expected_mmd_gaussians(shift, D)) < 4 * se
        means.append((mean, se))
    assert means[0][0] < means[1][0] - 4 * math.hypot(means[0][1], means[1][1])
    assert means[1][0] < means[2][0] - 4 * math.hypot(means[1][1], means[2][1])


def test_mmd_needs_two_samples_and_matching_shapes():
    prior = std_normal(3)
    with pytest.raises(ValueError, match="at least 2"):
        MMD()(torch.randn(1, 3), None, prior)
    with pytest.raises(ValueError, match=r"event_shape \(2,\)"):
        MMD()(torch.randn(4, 2), None, prior)
    with pytest.raises(ValueError, match="does not broadcast"):
        MMD()(torch.randn(4, 3), None, prior.expand([5]))
    with pytest.raises(ValueError, match="callable"):
        MMD(kernel=3)


# ---------------------------------------------------------------------------------- inclusive / exclusive KL
def test_exclusive_and_inclusive_kl_match_loops():
    B, D = 5, 2
    loc, scale = torch.randn(B, D), torch.rand(B, D) + 0.3
    q = dist.Normal(loc, scale).to_event(1)
    z = q.sample()
    prior = dist.StudentT(4.0, torch.zeros(D), torch.ones(D)).to_event(1)
    expected = (log_aggregate_loop(loc, scale, z) - prior.log_prob(z)).mean()
    assert torch.allclose(ExclusiveKL()(z, q, prior), expected, rtol=1e-5)

    torch.manual_seed(5)
    value = InclusiveKL()(z, q, prior)
    torch.manual_seed(5)
    zp = prior.expand([B]).sample()
    expected = (prior.log_prob(zp) - log_aggregate_loop(loc, scale, zp)).mean()
    assert torch.allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("q_batch", ["particles", "shared"])
def test_kl_estimators_with_a_leading_particle_dim(q_batch):
    """z (K, B, D) with q of batch (K, B), or of batch (B,) shared by all particles: per-particle estimates
    averaged. The B x B table must pair z[k, i] with q[k, b] (not with q[i, b])."""
    K, B, D = 3, 4, 2
    loc = torch.randn(K, B, D) if q_batch == "particles" else torch.randn(B, D)
    scale = torch.rand(loc.shape) + 0.3
    q = dist.Normal(loc, scale).to_event(1)
    z = torch.randn(K, B, D)
    prior = std_normal(D)

    def q_of(k):
        return (loc[k], scale[k]) if loc.dim() == 3 else (loc, scale)

    per = [(log_aggregate_loop(*q_of(k), z[k]) - prior.log_prob(z[k])).mean() for k in range(K)]
    assert torch.allclose(ExclusiveKL()(z, q, prior), torch.stack(per).mean(), rtol=1e-5)

    torch.manual_seed(2)
    value = InclusiveKL()(z, q, prior)
    torch.manual_seed(2)
    zp = prior.expand([K, B]).sample()
    per = [(prior.log_prob(zp[k]) - log_aggregate_loop(*q_of(k), zp[k])).mean() for k in range(K)]
    assert torch.allclose(value, torch.stack(per).mean(), rtol=1e-5)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_diagonal_normal_table_is_accurate_for_narrow_far_encodings(lead):
    """The diagonal-Normal table (one float64 matrix product of large, cancelling terms) against the
    generic ``log_prob`` path (a MultivariateNormal of the same density) and a float64 loop, with encoder
    scales of 1e-3 around locations of size 10, where a float32 expansion would be off by whole nats."""
    B, D = 6, 3
    loc = 10 * torch.randn(*lead, B, D)
    scale = 1e-3 * (torch.rand(*lead, B, D) + 0.5)
    q = dist.Normal(loc, scale).to_event(1)
    z = q.sample()
    z[..., 0, :] = loc[..., 1, :] + 2e-3  # one sample close to another point's encoding
    prior = std_normal(D)
    mvn = dist.MultivariateNormal(loc, torch.diag_embed(scale.square()))
    value = ExclusiveKL()(z, q, prior)
    assert torch.allclose(value, ExclusiveKL()(z, mvn, prior), rtol=1e-5)
    flat = (-1, B, D)
    per = [
        (log_aggregate_loop(lc.double(), sc.double(), zz.double()) - prior.log_prob(zz).double()).mean()
        for lc, sc, zz in zip(loc.reshape(flat), scale.reshape(flat), z.reshape(flat))
    ]
    assert value.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-5)


def test_kl_estimators_approach_the_closed_form_as_the_batch_grows():
    """q(z|x_b) = N(m_b, s^2 I) with m_b ~ N(0, tau^2 I), so the aggregate q(z) = N(0, (tau^2 + s^2) I);
    p = N(0.5, 1.3^2 I). Both minibatch estimators are biased upwards by O(1/B) (log of a B-term average).
    Small batch: the bias is visible (> 4 standard errors of the mean over R batches). Large batch: the
    estimate is within 4 standard errors of the closed form and closer than the small-batch one."""
    D, tau, s = 2, 1.0, 0.6
    aggregate = std_normal(D, scale=math.sqrt(tau**2 + s**2))
    prior = std_normal(D, loc=0.5, scale=1.3)
    truth = {
        "exclusive": kl_divergence(aggregate, prior).item(),
        "inclusive": kl_divergence(prior, aggregate).item(),
    }
    estimators = {"exclusive": ExclusiveKL(), "inclusive": InclusiveKL()}
    errors = {}
    for B, R in ((16, 200), (768, 8)):
        m = torch.randn(R, B, D) * tau
        q = dist.Normal(m, s).to_event(1)
        z = q.sample()
        for name, est in estimators.items():
            values = torch.stack([est(z[r], dist.Normal(m[r], s).to_event(1), prior) for r in range(R)])
            err, se = values.mean().item() - truth[name], values.std().item() / math.sqrt(R)
            errors[name, B] = (err, se)
    for name in estimators:
        small, large = errors[name, 16], errors[name, 768]
        assert small[0] > 4 * small[1]
        assert abs(large[0]) < 4 * large[1]
        assert abs(large[0]) < small[0]


def test_kl_estimators_check_q():
    z = torch.randn(4, 2)
    prior = std_normal(2)
    with pytest.raises(ValueError, match=r"batch_shape \(\.\.\., 4\)"):
        ExclusiveKL()(z, std_normal(2).expand([3]), prior)
    with pytest.raises(ValueError, match="q must be a distribution"):
        InclusiveKL()(z, None, prior)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., B, D\)"):
        ExclusiveKL()(torch.randn(2), std_normal(2), prior)


# ------------------------------------------------------------------------------- prior draws and gradients
class ScalePrior(nn.Module):
    """p(z) = N(0, softplus(raw)^2 I) with a learnable raw scale."""

    def __init__(self, d):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(d))

    def forward(self):
        return dist.Normal(torch.zeros_like(self.raw), nn.functional.softplus(self.raw)).to_event(1)


def test_prior_draws_are_reparameterised_only_for_learnable_priors():
    prior = ScalePrior(3)()
    assert prior_draws(prior.expand([4])).requires_grad
    assert not prior_draws(std_normal(3).expand([4])).requires_grad
    mixture = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(2, requires_grad=True)), std_normal(3, scale=0.5).expand([2])
    )
    draws = prior_draws(mixture.expand([4]))
    assert draws.shape == (4, 3) and not draws.requires_grad


@pytest.mark.parametrize("name", DIVERGENCES)
def test_gradients_reach_the_encoder_and_a_learnable_prior(name):
    B, D = 8, 3
    module = ScalePrior(D)
    loc = torch.randn(B, D, requires_grad=True)
    q = dist.Normal(loc, 0.5).to_event(1)
    z = q.rsample()
    value = build_divergence(name)(z, q, module().expand([B]))
    g_loc, g_raw = torch.autograd.grad(value, (loc, module.raw))
    assert g_loc.abs().sum() > 0 and torch.isfinite(g_loc).all()
    assert g_raw.abs().sum() > 0 and torch.isfinite(g_raw).all()


def test_mixture_prior_gets_gradient_from_inclusive_kl_only_through_log_density():
    B, D = 8, 2
    logits = torch.zeros(2, requires_grad=True)
    mixture = dist.MixtureSameFamily(
        dist.Categorical(logits=logits),
        dist.Normal(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), 0.3).to_event(1),
    )
    q = dist.Normal(torch.randn(B, D), 0.5).to_event(1)
    z = q.sample()
    assert not MMD()(z, q, mixture).requires_grad
    (g,) = torch.autograd.grad(InclusiveKL()(z, q, mixture), (logits,))
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- registry
def test_build_divergence_names_objects_and_errors():
    assert DIVERGENCES == ("mmd", "inclusive-kl", "exclusive-kl")
    assert isinstance(build_divergence("mmd"), MMD) and build_divergence("mmd").kernel.per_dim
    assert isinstance(build_divergence("Inclusive_KL"), InclusiveKL)
    assert isinstance(build_divergence("exclusive-kl"), ExclusiveKL)
    assert isinstance(build_divergence("mmd-rbf").kernel, RBFKernel)
    assert not build_divergence("mmd-imq-full").kernel.per_dim
    est = MMD(RBFKernel(2.0))
    assert build_divergence(est) is est
    with pytest.raises(ValueError, match="'wasserstein'"):
        build_divergence("wasserstein")
    with pytest.raises(ValueError, match="int"):
        build_divergence(3)

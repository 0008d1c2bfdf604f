"""pyro_decomp.metrics.decomposition: The decomposition diagnostics: overlap and alignment."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_decomp import DecompVAE
from pyro_decomp.metrics import (
    alignment,
    overlap,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- diagnostics
class ScaledEncoder(nn.Module):
    """q(z|x) = N(a x, s² I) for x of dimension D."""

    def __init__(self, a, s):
        super().__init__()
        self.a, self.s = a, s
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.a * x, torch.full_like(x, self.s)


def scaled_vae(a, s, dim=2):
    prior = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    return DecompVAE(ScaledEncoder(a, s), nn.Linear(dim, dim), prior)


def test_overlap_grows_with_encoder_variance():
    x = torch.randn(1500, 2, generator=gen(0))
    results = [overlap(scaled_vae(1.0, s), x, num_samples=1500, generator=gen(1)) for s in (0.3, 1.0, 3.0)]
    mi = [r["mutual_information"] for r in results]
    ratio = [r["variance_ratio"] for r in results]
    assert mi[0] > mi[1] > mi[2] > 0 and ratio[0] < ratio[1] < ratio[2]
    for r, s in zip(results, (0.3, 1.0, 3.0)):
        # the law of total variance on the encoder means x: s² / (Var(x_d) + s²), exactly
        expected = s**2 / (x.double().var(0, correction=0) + s**2)
        assert torch.allclose(r["variance_ratio_per_dim"].double(), expected, rtol=1e-5)
        assert r["upper_bound"] == pytest.approx(math.log(1500))
    # with x ~ N(0, I) and z | x ~ N(x, s² I): I(x; z) = (D/2) log(1 + 1/s²). The per-point terms
    # log q(z|x) - log q(z) have standard deviation about 1.0 nats for s = 1 (0.46 for s = 3), so the mean
    # of M = 1500 has a standard error of about 0.026; the finite mixture q̂ adds an O(1/M) bias. Tolerance:
    # 0.15, about 6 standard errors.
    assert mi[1] == pytest.approx(math.log(2.0), abs=0.15)
    assert mi[2] == pytest.approx(math.log(1 + 1 / 9), abs=0.15)


def test_overlap_without_overlap_reaches_log_m():
    # tiny encoder variances: z_n is explained by its own x_n alone, so log q̂(z_n) = log q(z_n|x_n) - log M
    x = torch.randn(300, 2, generator=gen(2))
    r = overlap(scaled_vae(1.0, 1e-4), x, num_samples=300, generator=gen(3))
    assert r["mutual_information"] == pytest.approx(math.log(300), abs=1e-6)


def test_overlap_accepts_datasets_and_loaders():
    x = torch.randn(64, 2, generator=gen(4))
    vae = scaled_vae(0.5, 0.7)
    labels = torch.arange(64)
    ref = overlap(vae, x, num_samples=64, generator=gen(5))
    dataset = torch.utils.data.TensorDataset(x, labels)
    for data in (dataset, torch.utils.data.DataLoader(dataset, batch_size=10)):
        r = overlap(vae, data, num_samples=64, generator=gen(5))
        assert r["variance_ratio"] == pytest.approx(ref["variance_ratio"], rel=1e-6)
        assert r["mutual_information"] == pytest.approx(ref["mutual_information"], rel=1e-6)
    # a subset of M < N points
    r = overlap(vae, x, num_samples=20, generator=gen(5))
    assert r["upper_bound"] == pytest.approx(math.log(20))


class GaussianMomentKL:
    """KL(N(mean(z), cov(z)) || p) for a standard normal prior: a simple, consistent estimator of
    D(q(z), p(z)) when q(z) is Gaussian. Checks the call form of `alignment` as it goes."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, q, prior):
        self.calls.append(
            (tuple(z.shape), tuple(q.batch_shape), tuple(q.event_shape), tuple(prior.event_shape))
        )
        d = z.shape[-1]
        mean = z.mean(0)
        cov = torch.cov(z.T)
        return 0.5 * (torch.trace(cov) + mean @ mean - d - torch.logdet(cov))


def test_alignment_vanishes_when_the_aggregate_encoding_is_the_prior():
    # x ~ N(0, I), q(z|x) = N(a x, (1 - a²) I): q(z) = N(0, I) = p(z). For M draws from p the moment-matched
    # KL is about χ²_f / (2M), f = D + D(D+1)/2 (mean and covariance parameters): for D = 2, M = 4000 its mean
    # is 6.3e-4 and its standard deviation 4.0e-4; the bound 0.004 is the mean plus 8 standard deviations.
    x = torch.randn(4000, 2, generator=gen(6))
    est = GaussianMomentKL()
    aligned = alignment(scaled_vae(0.6, 0.8), x, est, num_samples=4000, generator=gen(7))
    assert est.calls == [((4000, 2), (4000,), (2,), (2,))]
    assert 0 <= aligned < 0.004
    misaligned = alignment(scaled_vae(0.3, 0.2), x, est, num_samples=4000, generator=gen(7))
    # q(z) = N(0, (0.09 + 0.04) I): KL = D/2 (v - 1 - log v), v = 0.13. The estimated variances have a
    # relative standard deviation of sqrt(2/M) = 0.022, and dKL/dv = (D/2)(1 - 1/v): the estimate's relative
    # standard deviation is about 1.2%; tolerance 5% (4 of them)
    assert misaligned == pytest.approx(0.13 - 1 - math.log(0.13), rel=0.05)
    # batches are averaged
    alignment(scaled_vae(0.6, 0.8), x, est, num_samples=1000, batch_size=250, generator=gen(7))
    assert [c[0] for c in est.calls[-4:]] == [(250, 2)] * 4


@pytest.mark.parametrize("name", ["mmd", "inclusive-kl", "exclusive-kl"])
def test_alignment_with_named_divergences(name):
    divergences = pytest.importorskip("pyro_decomp.divergences")
    x = torch.randn(1000, 2, generator=gen(8))
    aligned = alignment(scaled_vae(0.6, 0.8), x, name, num_samples=1000, generator=gen(9))
    misaligned = alignment(scaled_vae(0.3, 0.2), x, name, num_samples=1000, generator=gen(9))
    assert math.isfinite(aligned) and misaligned > aligned
    by_object = alignment(
        scaled_vae(0.6, 0.8), x, divergences.build_divergence(name), num_samples=1000, generator=gen(9)
    )
    assert by_object == pytest.approx(aligned)


def test_alignment_bad_divergence():
    with pytest.raises(ValueError, match="divergence"):
        alignment(scaled_vae(0.6, 0.8), torch.randn(10, 2), 3.0)

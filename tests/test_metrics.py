import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_decomp import DecompVAE
from pyro_decomp.metrics import (
    adjusted_rand_index,
    alignment,
    disentanglement_score,
    hoyer_sparsity,
    iwae_log_likelihood,
    mig,
    overlap,
)


def grid_factors(sizes):
    """Every combination of factor indices, in mixed-radix order (the last factor varies fastest)."""
    return torch.cartesian_prod(*[torch.arange(s) for s in sizes]).reshape(-1, len(sizes))


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- Kim & Mnih
def reference_votes(codes, factors, num_votes, votes_size, seed, prune_threshold=None):
    """The metric written the straightforward way: one vote at a time, a boolean mask of the whole data set
    per vote, drawing random numbers in the order that ``disentanglement_score`` documents (factor by factor,
    value by value, in vote order within a value: Python's sort is stable)."""
    g = gen(seed)
    n, dim = codes.shape
    num_factors = factors.shape[1]
    std = codes.double().std(0, correction=0)
    active = std > 0
    if prune_threshold is not None:
        active &= std >= prune_threshold
    values = [torch.unique(factors[:, k]) for k in range(num_factors)]
    vote_factor = torch.randint(0, num_factors, (num_votes,), generator=g)
    draws = torch.randint(0, 2**62, (num_votes,), generator=g)
    votes = torch.zeros(dim, num_factors, dtype=torch.long)
    for k in range(num_factors):
        for j in sorted(range(num_votes), key=lambda j: int(draws[j] % len(values[k]))):
            if vote_factor[j] != k:
                continue
            value = values[k][draws[j] % len(values[k])]
            members = torch.nonzero(factors[:, k] == value).flatten()
            pos = torch.randint(0, 2**62, (votes_size,), generator=g) % len(members)
            z = codes[members[pos]].double() / std
            var = z.var(0)
            var[~active] = float("inf")
            votes[int(var.argmin()), k] += 1
    return votes


def noisy_codes(factors, noise, extra=0, seed=0):
    g = gen(seed)
    f = factors.double()
    codes = f + noise * torch.randn(f.shape, generator=g, dtype=f.dtype)
    if extra:
        codes = torch.cat([codes, torch.randn(f.shape[0], extra, generator=g, dtype=f.dtype)], -1)
    return codes


def test_identity_codes_score_exactly_one():
    # A vote fixing factor k sees zero variance in dimension k and positive variance elsewhere (unless all
    # votes_size draws of another factor coincide: probability <= 5 * (1/3)^49 here), so every vote is right.
    factors = grid_factors((3, 4, 5))
    score, votes = disentanglement_score(
        factors.float(), factors, num_votes=600, votes_size=50, generator=gen(0), return_votes=True
    )
    assert score == 1.0
    assert torch.equal(votes, torch.diag(votes.diagonal()))
    assert votes.sum() == 600


def test_factor_values_or_indices_give_the_same_votes():
    # any increasing map of the factor values keeps the value order, hence the groups and the votes
    factors = grid_factors((3, 4, 5))
    values = torch.stack(
        [factors[:, 0] * 0.5 + 1.0, factors[:, 1].double() ** 2, factors[:, 2] * 10.0 - 3.0], -1
    )
    codes = noisy_codes(factors, 0.8, extra=1)
    a = disentanglement_score(codes, factors, 400, 30, generator=gen(1), return_votes=True)
    b = disentanglement_score(codes, values, 400, 30, generator=gen(1), return_votes=True)
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_vectorised_votes_equal_the_per_vote_loop():
    factors = grid_factors((2, 3, 4)).repeat(5, 1)
    codes = noisy_codes(factors, 1.0, extra=2, seed=3)
    codes[:, 3] *= 1e-3  # an almost constant dimension: pruned below
    for prune in (None, 0.01):
        expected = reference_votes(codes, factors, 300, 20, seed=7, prune_threshold=prune)
        score, votes = disentanglement_score(
            codes, factors, 300, 20, prune_threshold=prune, generator=gen(7), return_votes=True
        )
        assert torch.equal(votes, expected)
        assert score == expected.max(-1).values.sum().item() / 300
    assert votes[3].sum() == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_score_does_not_depend_on_the_chunk_size(chunk_size):
    factors = grid_factors((3, 5))
    codes = noisy_codes(factors, 1.5, extra=1)
    ref = disentanglement_score(codes, factors, 500, 40, generator=gen(2), return_votes=True)[1]
    votes = disentanglement_score(
        codes, factors, 500, 40, generator=gen(2), chunk_size=chunk_size, return_votes=True
    )
    assert torch.equal(votes[1], ref)


def test_permuted_and_rescaled_codes_score_the_same():
    factors = grid_factors((3, 4, 5))
    codes = noisy_codes(factors, 0.9, extra=2)
    score, votes = disentanglement_score(codes, factors, 1000, 40, generator=gen(4), return_votes=True)
    assert 0.5 < score < 1.0  # noisy enough that some votes go wrong
    perm = torch.tensor([3, 0, 4, 2, 1])
    scale = torch.tensor([0.01, 3.0, 250.0, 1.0, 7.5], dtype=torch.float64)
    shift = torch.tensor([5.0, -1.0, 1e4, 0.0, 2.0], dtype=torch.float64)
    moved = codes[:, perm] * scale + shift
    score2, votes2 = disentanglement_score(moved, factors, 1000, 40, generator=gen(4), return_votes=True)
    assert score2 == score
    assert torch.equal(votes2, votes[perm])
    # a nonlinear monotone map per dimension keeps the identity code perfect
    identity = factors.double()
    warped = torch.stack([identity[:, 0].exp(), identity[:, 1] ** 3, torch.tanh(identity[:, 2] / 4)], -1)
    assert disentanglement_score(warped, factors, 500, 40, generator=gen(5)) == 1.0


def test_random_codes_score_chance():
    # With codes independent of the factors and i.i.d. across dimensions, each vote's argmin is uniform on
    # the D dimensions and independent of its factor, so the vote matrix is Multinomial(M, 1/(DK)) over the
    # D x K cells and the score is Σ_d max_k V[d, k] / M. Its distribution is simulated below; the score must
    # lie within 4 of its standard deviations of its mean. Deterministically, score >= 1/K
    # (max_k V[d, k] >= Σ_k V[d, k] / K).
    # The model needs value groups much larger than votes_size: votes that fix the same value reuse one
    # finite group, whose per-dimension empirical variances differ by O(sqrt(2/G)) and so tilt the argmin by
    # O(sqrt(L/G)) -- with groups of 48-80 points the score sits 4-8 standard deviations above chance. Here
    # G >= 6000 and L = 20: a tilt of about 0.06 of the per-vote noise.
    dim, sizes, num_votes = 4, (3, 4, 5), 3000
    factors = grid_factors(sizes).repeat(500, 1)
    codes = torch.randn(factors.shape[0], dim, generator=gen(11))
    score = disentanglement_score(codes, factors, num_votes, 20, generator=gen(12))
    k = len(sizes)
    sims = torch.distributions.Multinomial(num_votes, torch.ones(dim * k)).sample((4000,)).view(-1, dim, k)
    sim_scores = sims.max(-1).values.sum(-1) / num_votes
    mean, sd = sim_scores.mean().item(), sim_scores.std().item()
    assert score >= 1 / k
    assert abs(score - mean) < 4 * sd
    # the leading-order mean: 1/K + E[max of K std normals] sqrt(D / (K M)); E[max of 3] = 3/(2 sqrt(pi))
    assert mean == pytest.approx(
        1 / k + 1.5 / math.sqrt(math.pi) * math.sqrt(dim / (k * num_votes)), abs=0.004
    )


def test_constant_codes_have_no_active_dimension():
    factors = grid_factors((3, 4))
    score, votes = disentanglement_score(
        torch.ones(12, 3), factors, 100, 10, generator=gen(0), return_votes=True
    )
    assert score == 0.0 and votes.sum() == 0
    # constant dimensions beside informative ones are never voted for
    codes = torch.cat([torch.ones(12, 1), factors.float()], -1)
    score, votes = disentanglement_score(codes, factors, 200, 10, generator=gen(0), return_votes=True)
    assert score == 1.0 and votes[0].sum() == 0


def test_duplicated_dimensions_still_score_one():
    # factor 0 is encoded twice with independent noise: its votes split between dimensions 0 and 3, each of
    # which is still assigned to factor 0 by the majority vote
    factors = grid_factors((3, 4, 5)).repeat(3, 1)
    codes = noisy_codes(factors, 0.02)
    dup = factors[:, :1].double() + 0.02 * torch.randn(
        factors.shape[0], 1, generator=gen(9), dtype=torch.float64
    )
    score, votes = disentanglement_score(
        torch.cat([codes, dup], -1), factors, 900, 40, generator=gen(3), return_votes=True
    )
    assert score == 1.0
    assert votes[0, 0] > 0 and votes[3, 0] > 0 and votes[3, 1:].sum() == 0


def test_disentanglement_transform_is_applied_first():
    factors = grid_factors((3, 4))
    codes = noisy_codes(factors, 0.6)
    a = disentanglement_score(
        codes, factors, 300, 20, generator=gen(1), transform=lambda z: z.flip(-1), return_votes=True
    )
    b = disentanglement_score(codes.flip(-1), factors, 300, 20, generator=gen(1), return_votes=True)
    assert torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(votes_size=1), "votes_size"),
        (dict(num_votes=0), "num_votes"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(prune_threshold=-1.0), "prune_threshold"),
    ],
)
def test_disentanglement_bad_arguments(kwargs, match):
    factors = grid_factors((2, 3))
    with pytest.raises(ValueError, match=match):
        disentanglement_score(factors.float(), factors, **kwargs)


def test_disentanglement_shape_errors():
    with pytest.raises(ValueError, match="same number of rows"):
        disentanglement_score(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        disentanglement_score(torch.zeros(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        disentanglement_score(torch.full((4, 2), float("nan")), grid_factors((2, 2)))


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


# ---------------------------------------------------------------------------------------------- Hoyer
def test_hoyer_hand_computed():
    one_hot = torch.eye(4) * torch.tensor([1.0, -3.0, 0.5, 2.0])[:, None]
    assert hoyer_sparsity(one_hot, normalise=False) == pytest.approx(1.0)
    equal = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-2.0, 2.0, 2.0, -2.0]])
    assert hoyer_sparsity(equal, normalise=False) == pytest.approx(0.0, abs=1e-12)
    # (3, 4, 0): l1 = 7, l2 = 5; (1, 1, 1): 0; (0, 0, 2): 1
    mixed = torch.tensor([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]])
    r3 = math.sqrt(3)
    assert hoyer_sparsity(mixed, normalise=False) == pytest.approx(((r3 - 7 / 5) / (r3 - 1) + 0 + 1) / 3)
    # a zero vector is left out of the average
    with_zero = torch.cat([mixed, torch.zeros(1, 3)])
    assert hoyer_sparsity(with_zero, normalise=False) == pytest.approx(hoyer_sparsity(mixed, normalise=False))


def test_hoyer_normalises_each_dimension_by_its_std():
    codes = torch.randn(100, 5, generator=gen(0), dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 5.0, 20.0, 2.0]
    )
    std = codes.std(0, correction=0)
    assert hoyer_sparsity(codes) == pytest.approx(hoyer_sparsity(codes / std, normalise=False), rel=1e-12)
    assert hoyer_sparsity(codes * 7.0) == pytest.approx(hoyer_sparsity(codes), rel=1e-12)


def test_hoyer_errors():
    with pytest.raises(ValueError, match="D >= 2"):
        hoyer_sparsity(torch.randn(5, 1))
    with pytest.raises(ValueError, match=r"dimensions \[1\] are constant"):
        hoyer_sparsity(torch.stack([torch.randn(5), torch.ones(5)], -1))


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


# ------------------------------------------------------------------------------------- adjusted Rand index
def brute_force_ari(a, b):
    """Hubert & Arabie's index by counting every pair of points once (a loop over the N(N-1)/2 pairs)."""
    both = same_a = same_b = 0
    pairs = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        sa, sb = a[i] == a[j], b[i] == b[j]
        both += sa and sb
        same_a += sa
        same_b += sb
        pairs += 1
    expected = same_a * same_b / pairs
    maximum = (same_a + same_b) / 2
    return 1.0 if maximum == expected else (both - expected) / (maximum - expected)


def test_ari_hand_examples():
    # [0,0,1,1] vs [0,0,1,2]: table n_ij = {2, 1, 1} -> Σ C(n_ij) = 1; rows (2, 2) -> 2;
    # columns (2, 1, 1) -> 1; C(4) = 6, E = 2·1/6 = 1/3, max = 3/2: ARI = (1 − 1/3) / (3/2 − 1/3) = 4/7
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])) == pytest.approx(4 / 7)
    # [0,0,0,1,1,1] vs [0,0,1,1,2,2]: Σ C(n_ij) = 2; rows 3 + 3 = 6; columns 1 + 1 + 1 = 3; C(6) = 15,
    # E = 6·3/15 = 1.2, max = 4.5: ARI = 0.8 / 3.3 = 8/33
    a, b = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, b) == pytest.approx(8 / 33)
    # perfectly anti-aligned pairs: [0,0,1,1] vs [0,1,0,1]: Σ C(n_ij) = 0, rows 2, columns 2, E = 4/6,
    # max = 2: ARI = (0 − 2/3) / (2 − 2/3) = −1/2
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(-0.5)


def test_ari_matches_pair_counting_and_invariances():
    gen = torch.Generator().manual_seed(0)
    for n, ka, kb in ((30, 3, 4), (41, 5, 2), (25, 1, 3), (20, 20, 4)):
        a = torch.randint(0, ka, (n,), generator=gen)
        b = torch.randint(0, kb, (n,), generator=gen)
        expected = brute_force_ari(a.tolist(), b.tolist())
        assert adjusted_rand_index(a, b) == pytest.approx(expected, abs=1e-12)
        # symmetric, and only the partitions matter: relabel both with arbitrary values
        assert adjusted_rand_index(b, a) == pytest.approx(expected, abs=1e-12)
        relabel = torch.randperm(ka, generator=gen) * 7 - 3
        assert adjusted_rand_index(relabel[a], b) == pytest.approx(expected, abs=1e-12)
    labels = torch.randint(0, 4, (50,), generator=gen)
    assert adjusted_rand_index(labels, (labels + 1) % 4) == 1.0
    assert adjusted_rand_index(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)) == 1.0


def test_ari_is_zero_in_expectation_under_permutation():
    # ARI is corrected for chance under the permutation model: E[ARI] = 0 exactly when b is a random
    # permutation of fixed labels. The mean of M = 400 permutations is within 4 standard errors (its spread
    # over those permutations / √M) of 0.
    gen = torch.Generator().manual_seed(1)
    a = torch.arange(4).repeat_interleave(50)
    b = torch.arange(5).repeat(40)
    values = torch.tensor([adjusted_rand_index(a, b[torch.randperm(200, generator=gen)]) for _ in range(400)])
    se = values.std() / math.sqrt(len(values))
    assert abs(float(values.mean())) < 4 * float(se)


def test_ari_errors():
    with pytest.raises(ValueError, match="same length"):
        adjusted_rand_index(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        adjusted_rand_index(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 2"):
        adjusted_rand_index(torch.tensor([0]), torch.tensor([0]))

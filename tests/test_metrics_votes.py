"""pyro_decomp.metrics.votes: Kim & Mnih (vectorised votes) and the β-VAE score."""

import math

import numpy as np
import pytest
import torch

from pyro_decomp.metrics import beta_vae_score, disentanglement_score
from pyro_decomp.metrics._common import _value_groups
from pyro_decomp.metrics.votes import _pair_features


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


# ---------------------------------------------------------------------------------------------- β-VAE
def test_beta_vae_identity_codes_score_about_one():
    pytest.importorskip("sklearn")
    # disentanglement_lib's beta_vae_test: identity observations of 10 independent factors of 10 values,
    # batches of 5 pairs, 2,000 train and 2,000 eval points; here drawn from 20,000 rows of that grid
    factors = torch.from_numpy(np.random.RandomState(0).randint(10, size=(20000, 10)))
    scores = beta_vae_score(factors.double(), factors, 5, 2000, 2000, generator=gen(0))
    assert 0.9 <= scores["train_accuracy"] <= 1.0 and 0.9 <= scores["eval_accuracy"] <= 1.0


def test_beta_vae_random_codes_score_chance():
    pytest.importorskip("sklearn")
    factors = grid_factors((3, 4, 5, 6))
    codes = torch.randn(factors.shape[0], 6, generator=gen(1), dtype=torch.float64)
    scores = beta_vae_score(codes, factors, 64, 2000, 2000, generator=gen(2))
    # chance is 1/4; a classifier of 2,000 eval labels has sd about 0.01 at chance: 0.25 +- 0.06
    assert abs(scores["eval_accuracy"] - 0.25) < 0.06


def test_beta_vae_pairs_share_the_labelled_factor():
    # with codes = factors, a pair that shares factor k differs by 0 in code k: in every batch's feature the
    # labelled coordinate is exactly 0, and the others are 0 only by chance (all B pairs coincide there)
    factors = grid_factors((3, 4, 5))
    indices = factors
    groups = [_value_groups(indices[:, k], int(indices[:, k].max()) + 1) for k in range(3)]
    features, labels = _pair_features(factors.double(), indices, groups, 500, 8, gen(3))
    assert np.all(features[np.arange(500), labels] == 0)
    others = np.ones_like(features, dtype=bool)
    others[np.arange(500), labels] = False
    assert (features[others] > 0).mean() > 0.99
    assert set(np.unique(labels)) == {0, 1, 2}


def test_beta_vae_is_reproducible_and_threads_do_not_matter():
    pytest.importorskip("sklearn")
    factors = grid_factors((3, 4, 5))
    codes = noisy_codes(factors, 1.0, extra=1, seed=4)
    threads = torch.get_num_threads()
    try:
        a = beta_vae_score(codes, factors, 16, 1500, 500, generator=gen(5))
        torch.set_num_threads(2)
        b = beta_vae_score(codes, factors, 16, 1500, 500, generator=gen(5))
    finally:
        torch.set_num_threads(threads)
    assert a == b and 0.3 < a["eval_accuracy"] < 1.0


def test_beta_vae_errors():
    factors = grid_factors((3, 4))
    with pytest.raises(ValueError, match="K >= 2"):
        beta_vae_score(torch.randn(12, 2), factors[:, :1])
    with pytest.raises(ValueError, match="batch_size"):
        beta_vae_score(torch.randn(12, 2), factors, batch_size=0)

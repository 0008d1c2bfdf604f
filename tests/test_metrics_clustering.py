"""pyro_decomp.metrics.clustering: The adjusted Rand index."""

import itertools
import math

import pytest
import torch

from pyro_decomp.metrics import (
    adjusted_rand_index,
)


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

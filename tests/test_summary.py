"""What the numbers of an evaluation mean: chance levels, the collapse warning, clusters for ARI."""

import itertools

import pytest
import torch

from pyro_decomp import metrics
from pyro_decomp.summary import (
    COLLAPSE_MUTUAL_INFORMATION,
    chance_levels,
    cluster_ari,
    collapse_warning,
    kmeans,
    summary_rows,
)


def _grid():
    """Every combination of 3 factors with 4, 3 and 5 values, 8 times over (480 points)."""
    rows = list(itertools.product(range(4), range(3), range(5))) * 8
    return torch.tensor(rows, dtype=torch.float32)


def test_random_codes_score_the_chance_level_and_a_perfect_code_beats_it():
    factors = _grid()
    chance = chance_levels(factors, 5, num_votes=800, votes_size=20, seed=0)
    # a "model" whose codes are random, independent of the data (another draw than chance_levels' own)
    random_codes = torch.randn(len(factors), 5, generator=torch.Generator().manual_seed(123))
    score = metrics.disentanglement_score(
        random_codes, factors, num_votes=800, votes_size=20, generator=torch.Generator().manual_seed(1)
    )
    # each vote picks a dimension at random: the majority classifier's accuracy has a binomial spread of
    # sd about sqrt(p(1-p)/800) <= 0.018 per score, so two independent ones differ by < 5 sd = 0.13
    assert abs(score - chance["disentanglement"]) < 0.13
    assert chance["disentanglement"] < 0.75
    perfect = torch.cat(
        [factors, torch.randn(len(factors), 2, generator=torch.Generator().manual_seed(2))], 1
    )
    good = metrics.disentanglement_score(
        perfect, factors, num_votes=800, votes_size=20, generator=torch.Generator().manual_seed(1)
    )
    assert good > chance["disentanglement"] + 0.2 and good == pytest.approx(1.0)
    assert 0 <= chance["mig"] < 0.1 < metrics.mig(perfect, factors)


def test_the_collapse_warning_fires_for_a_collapsed_encoder_only():
    collapsed = {"mutual_information": 0.008, "variance_ratio_per_dim": [0.999] * 10}
    line = collapse_warning(collapsed)
    assert line is not None and "collapsed" in line and "I(x; z) = 0.008" in line and "inactive" in line
    assert "\n" not in line
    half = {"mutual_information": COLLAPSE_MUTUAL_INFORMATION / 2, "variance_ratio_per_dim": [0.2, 0.999]}
    assert "I(x; z)" in collapse_warning(half)
    assert collapse_warning({"mutual_information": 2.3, "variance_ratio_per_dim": [0.1, 0.999]}) is None


def test_a_collapsed_encoder_is_caught_from_its_own_overlap():
    """An encoder that ignores x: q(z|x) = N(0, I) for every x gives Î(x; z) = 0 exactly."""

    class Collapsed(torch.nn.Module):
        def encoder(self, x):
            return torch.zeros(len(x), 3), torch.ones(len(x), 3)

    x = torch.randn(200, 2)
    overlap = metrics.overlap(Collapsed(), x, num_samples=200, generator=torch.Generator().manual_seed(0))
    overlap["variance_ratio_per_dim"] = overlap["variance_ratio_per_dim"].tolist()
    assert collapse_warning(overlap) is not None


def test_kmeans_recovers_separated_clusters_and_ari_compares_them_with_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(50)
    points = centres[labels] + 0.5 * torch.randn(150, 2, generator=g)
    assert metrics.adjusted_rand_index(labels, kmeans(points, 3)) == pytest.approx(1.0)
    out = cluster_ari(points, labels, prior=None)
    assert out["clusters"] == "k-means, k = 3" and out["value"] == pytest.approx(1.0) and out["chance"] == 0.0

    class Mixture:
        locs = centres

    assert cluster_ari(points, labels, Mixture())["clusters"] == "nearest prior component"
    shuffled = labels[torch.randperm(150, generator=g)]
    assert abs(cluster_ari(points, shuffled, Mixture())["value"]) < 0.05


def test_summary_rows_carry_unit_direction_and_chance():
    result = {
        "loss": 3.0,
        "iwae_log_likelihood": {"mean": -2.0},
        "disentanglement": 0.58,
        "mig": 0.1,
        "chance": {"disentanglement": 0.5, "mig": 0.02},
        "alignment": {"divergence": "mmd", "value": 0.1},
    }
    rows = {row["name"]: row for row in summary_rows(result)}
    assert rows["disentanglement"]["chance"] == 0.5 and rows["disentanglement"]["better"] == "higher"
    assert rows["loss"]["better"] == "lower" and rows["loss"]["unit"] == "nats / point"
    assert rows["alignment: mmd"]["value"] == 0.1 and "chance" not in rows["loss"]

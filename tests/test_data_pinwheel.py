import math

import torch

from pyro_decomp.data import pinwheel


def test_shapes_dtype_and_balance():
    x, y = pinwheel(num_classes=5, num_per_class=30)
    assert x.shape == (150, 2) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(torch.bincount(y), torch.full((5,), 30))


def test_seeds():
    a, _ = pinwheel(seed=1)
    b, _ = pinwheel(seed=1)
    c, _ = pinwheel(seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_spread_matches_generating_parameters():
    # invert the generator: |x|² = u² + v², and the angle of x minus atan2(v, u) is θ
    n = 20000
    x, y = pinwheel(num_classes=4, num_per_class=n, radial_std=0.1, tangential_std=0.3, rate=0.25)
    x = x.double()
    for k in range(4):
        pts = x[y == k]
        r2 = (pts**2).sum(-1)
        # E|x|² = E u² + E v² = 1 + 0.3² + 0.1²; sd of the sample mean from the 4th moments
        assert abs(r2.mean().item() - (1 + 0.09 + 0.01)) < 5 * r2.std().item() / math.sqrt(n)
        # rotate arm k back to angle 0: the mean direction of the arm is at 2πk/4 + rate·E[e^u] + small
        ang = torch.atan2(pts[:, 1], pts[:, 0]) - 2 * math.pi * k / 4
        ang = torch.remainder(ang + math.pi, 2 * math.pi) - math.pi
        # θ - atan2(v, u) with E[θ]=rate·exp(1+σ²/2) and E[atan2(v,u)] = 0 by symmetry in v
        expected = 0.25 * math.exp(1 + 0.09 / 2)
        assert abs(ang.mean().item() - expected) < 5 * ang.std().item() / math.sqrt(n)

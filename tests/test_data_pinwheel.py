import math

import numpy as np
import pytest
import torch

from pyro_decomp.data import PinwheelDataset, pinwheel


def test_shapes_dtype_and_balance():
    x, y = pinwheel(num_classes=5, num_per_class=30)
    assert x.shape == (150, 2) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and torch.equal(torch.bincount(y), torch.full((5,), 30))
    ds = PinwheelDataset(num_classes=5, num_per_class=30)
    assert len(ds) == 150 and torch.equal(ds[7][0], x[7]) and int(ds[7][1]) == int(y[7])


def test_seeds():
    a, _ = pinwheel(seed=1)
    b, _ = pinwheel(seed=1)
    c, _ = pinwheel(seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_per_class": 2.5}, {"radial_std": -0.1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        pinwheel(**kwargs)


def _angle_moments(tangential_std, radial_std, rate):
    """E[ψ] and Var[ψ] of ψ = atan2(v, u) − rate·e^u, u ~ N(1, σ_t²), v ~ N(0, σ_r²).

    E[atan2(v, u) | u] = 0 (odd in v), so E ψ = −rate·E e^u = −rate·exp(1 + σ_t²/2) and the cross term
    vanishes: Var ψ = rate²·Var e^u + E[atan2(v, u)²], with Var e^u = (e^{σ_t²} − 1)·e^{2 + σ_t²} and the last
    term by 2-D Gauss–Hermite quadrature (atan2² is smooth away from the origin, whose neighbourhood has
    probability ~e^{-1/(2σ_t²)}).
    """
    z, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    u = 1 + tangential_std * z[:, None]
    v = radial_std * z[None, :]
    e_atan2_sq = (w[:, None] * w[None, :] * np.arctan2(v, u) ** 2).sum()
    s2 = tangential_std**2
    mean = -rate * math.exp(1 + s2 / 2)
    var = rate**2 * (math.exp(s2) - 1) * math.exp(2 + s2) + e_atan2_sq
    return mean, var


@pytest.mark.parametrize("tangential_std,radial_std", [(0.3, 0.1), (0.2, 0.05)])
def test_spread_matches_generating_parameters(tangential_std, radial_std):
    # Invert the generator: |x|² = u² + v² and angle(x) = atan2(v, u) − θ = atan2(v, u) − 2πk/K − rate·e^u.
    # Every check compares a sample mean with its closed form within 5 standard errors (sample sd / √n):
    # 5 checks × 4 arms, so a false alarm has probability < 20 · 6e-7.
    n, rate = 20000, 0.25
    x, y = pinwheel(
        num_classes=4,
        num_per_class=n,
        radial_std=radial_std,
        tangential_std=tangential_std,
        rate=rate,
        seed=3,
    )
    x = x.double()
    st2, sr2 = tangential_std**2, radial_std**2
    # E(u² + v²) and E(u² + v²)² with E u² = 1 + σt², E u⁴ = 1 + 6σt² + 3σt⁴, E v² = σr², E v⁴ = 3σr⁴:
    # the second moment separates σt from σr (swapping them changes it by 4(σt² − σr²)(1 + ...)).
    r2_mean = 1 + st2 + sr2
    r4_mean = (1 + 6 * st2 + 3 * st2**2) + 2 * (1 + st2) * sr2 + 3 * sr2**2
    psi_mean, psi_var = _angle_moments(tangential_std, radial_std, rate)
    for k in range(4):
        pts = x[y == k]
        r2 = (pts**2).sum(-1)
        for stat, expected in ((r2, r2_mean), (r2**2, r4_mean)):
            assert abs(stat.mean().item() - expected) < 5 * stat.std().item() / math.sqrt(n)
        # angle of arm k about its expected mean direction; wrapping into (−π, π] only moves the points with
        # u < 0 (P = 4e-4 at σt = 0.3): a 1e7-draw simulation puts its effect on the variance at 2e-4, 0.15 SE
        psi = torch.atan2(pts[:, 1], pts[:, 0]) + 2 * math.pi * k / 4 - psi_mean
        psi = torch.remainder(psi + math.pi, 2 * math.pi) - math.pi
        assert abs(psi.mean().item()) < 5 * psi.std().item() / math.sqrt(n)
        sq = (psi - psi.mean()) ** 2
        assert abs(sq.mean().item() - psi_var) < 5 * sq.std().item() / math.sqrt(n)


def test_arm_directions_follow_adams_generator():
    # with no noise, u = 1 and v = 0: arm k is the single point at angle −(2πk/K + rate·e)
    x, y = pinwheel(num_classes=4, num_per_class=3, radial_std=0.0, tangential_std=0.0, rate=0.25)
    angle = torch.atan2(x[:, 1].double(), x[:, 0].double())
    expected = -(2 * math.pi * y.double() / 4 + 0.25 * math.e)
    diff = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-6 and torch.allclose(x.norm(dim=-1), torch.ones(12))


def test_dtype_follows_the_default_or_the_argument():
    x32, _ = pinwheel(seed=3)
    x64, _ = pinwheel(seed=3, dtype=torch.float64)
    assert x64.dtype == torch.float64 and torch.equal(x64.float(), x32)  # drawn in float64, then rounded
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(pinwheel(seed=3)[0], x64)
    finally:
        torch.set_default_dtype(old)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype.*torch.int64"):
        pinwheel(dtype=torch.int64)

"""Marginal CDFs of priors, and the map of codes to standard-normal scores through them.

The paper scores codes learnt with a Student-t prior after mapping each coordinate z_d through the prior's
marginal CDF F_d and the standard normal quantile Φ⁻¹, z_d ↦ Φ⁻¹(F_d(z_d)), so that every prior's codes are
compared on the same (Gaussian) scale. :func:`student_t_cdf` is the Student-t CDF through the regularised
incomplete beta function, F(t; ν) = 1 − ½ I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0, and :func:`prior_cdf_transform`
builds the map for any prior of the package (Gaussian, Student-t, mixture, spike-and-slab, independent
subspaces), working with both tails so that the far tails keep their precision.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.distributions as tdist

__all__ = ["prior_cdf_transform", "student_t_cdf"]


def _betainc(
    a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: Optional[torch.Tensor] = None, max_iter: int = 500
) -> torch.Tensor:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1, in float64.

    I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * cf(a, b, x), with cf the continued fraction
    1/(1+ d_1/(1+ d_2/(1+ ...))), d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),
    d_{2m} = m(b-m) x / ((a+2m-1)(a+2m)), evaluated by the modified Lentz method. The fraction converges
    fast for x < (a+1)/(a+b+2); elsewhere the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) is used. Pass
    ``y = 1 - x`` when it is known more precisely than ``1 - x`` rounds to.
    """
    a, b, x = torch.broadcast_tensors(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        torch.as_tensor(x, dtype=torch.float64),
    )
    y = 1 - x if y is None else torch.as_tensor(y, dtype=torch.float64).expand_as(x)
    swap = x > (a + 1) / (a + b + 2)
    aa_ = torch.where(swap, b, a)
    bb_ = torch.where(swap, a, b)
    xx = torch.where(swap, y, x)
    yy = torch.where(swap, x, y)
    tiny = 1e-300
    eps = 1e-15

    def clamp_tiny(t):
        return torch.where(t.abs() < tiny, torch.full_like(t, tiny), t)

    c = torch.ones_like(xx)
    d = 1 / clamp_tiny(1 - (aa_ + bb_) * xx / (aa_ + 1))
    h = d.clone()
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        num = m * (bb_ - m) * xx / ((aa_ + m2 - 1) * (aa_ + m2))
        d = 1 / clamp_tiny(1 + num * d)
        c = clamp_tiny(1 + num / c)
        h = h * d * c
        num = -(aa_ + m) * (aa_ + bb_ + m) * xx / ((aa_ + m2) * (aa_ + m2 + 1))
        d = 1 / clamp_tiny(1 + num * d)
        c = clamp_tiny(1 + num / c)
        delta = d * c
        h = h * delta
        if bool(((delta - 1).abs() < eps).all()):
            break
    log_front = (
        torch.xlogy(aa_, xx)
        + torch.xlogy(bb_, yy)
        - (torch.lgamma(aa_) + torch.lgamma(bb_) - torch.lgamma(aa_ + bb_))
        - torch.log(aa_)
    )
    value = torch.exp(log_front) * h
    value = torch.where(xx == 0, torch.zeros_like(value), value)
    return torch.where(swap, 1 - value, value)


def _student_t_lower_tail(t: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """P(T <= -|t|) for T ~ StudentT(df): ½ I_{df/(df+t²)}(df/2, ½), accurate far into the tail."""
    t = torch.as_tensor(t, dtype=torch.float64)
    df = torch.as_tensor(df, dtype=torch.float64)
    t2 = t * t
    return 0.5 * _betainc(df / 2, torch.full_like(df, 0.5), df / (df + t2), t2 / (df + t2))


def student_t_cdf(value, df, loc=0.0, scale=1.0) -> torch.Tensor:
    """The CDF of ``StudentT(df, loc, scale)`` at ``value`` (torch's ``StudentT`` has no ``cdf``).

    F(t) = ½ I_{ν/(ν+u²)}(ν/2, ½) for u = (t - loc)/scale <= 0 and 1 - F(-t) above, with I the regularised
    incomplete beta function (computed in float64 by a continued fraction). Arguments broadcast; the result
    has the broadcast shape and the dtype of ``value`` (float64 when ``value`` is not floating point).
    """
    value = torch.as_tensor(value)
    dtype = value.dtype if value.is_floating_point() else torch.float64
    u = (value.double() - torch.as_tensor(loc, dtype=torch.float64)) / torch.as_tensor(
        scale, dtype=torch.float64
    )
    tail = _student_t_lower_tail(u, torch.as_tensor(df, dtype=torch.float64))
    return torch.where(u <= 0, tail, 1 - tail).to(dtype)


def _symmetric_tail(base: tdist.Distribution, u: torch.Tensor) -> Optional[torch.Tensor]:
    """P(X <= loc - |u| scale) for the location-scale families symmetric about loc, in closed forms that keep
    their relative precision far into the tail (torch's ``Normal.cdf`` and ``Laplace.cdf`` compute the lower
    tail as a difference and lose it); ``None`` for other families."""
    a = -u.abs()
    if isinstance(base, tdist.Normal):
        return 0.5 * torch.special.erfc(-a / math.sqrt(2))
    if isinstance(base, tdist.Laplace):
        return 0.5 * torch.exp(a)
    if isinstance(base, tdist.Cauchy):
        return torch.where(a < 0, torch.atan(-1 / a) / math.pi, torch.full_like(a, 0.5))
    if isinstance(base, tdist.StudentT):
        return _student_t_lower_tail(a, base.df.double())
    return None


def _univariate_tails(base: tdist.Distribution, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F(z), 1 - F(z))`` of a univariate ``base`` (batch broadcastable to ``z``), in float64; both tails
    keep their relative precision for Normal, Laplace, Cauchy and Student-t marginals."""
    if isinstance(base, (tdist.Normal, tdist.Laplace, tdist.Cauchy, tdist.StudentT)):
        u = (z - base.loc.double()) / base.scale.double()
        tail = _symmetric_tail(base, u)
        return torch.where(u <= 0, tail, 1 - tail), torch.where(u >= 0, tail, 1 - tail)
    try:
        lower = base.cdf(z.to(base.mean.dtype)).double()
    except NotImplementedError:
        raise ValueError(
            f"prior_cdf_transform needs the marginal CDF of {type(base).__name__}, which has no cdf; "
            "give the prior a marginal_cdf(z) method returning per-coordinate CDFs of shape (..., D)"
        ) from None
    return lower, 1 - lower


def _tails_to_normal(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Φ^{-1}(F) from both tails, through whichever is smaller, so that Φ^{-1}(1 - p) = -Φ^{-1}(p) keeps
    the precision of a small p."""
    tiny = torch.finfo(torch.float64).tiny
    return torch.where(
        lower <= upper,
        torch.special.ndtri(lower.clamp(min=tiny, max=0.5)),
        -torch.special.ndtri(upper.clamp(min=tiny, max=0.5)),
    )


def _marginal_cdf_to_normal(prior: tdist.Distribution, z: torch.Tensor) -> torch.Tensor:
    if hasattr(prior, "marginal_cdf"):
        u = torch.as_tensor(prior.marginal_cdf(z)).double()
        return _tails_to_normal(u, 1 - u)
    if isinstance(prior, tdist.Independent) and prior.reinterpreted_batch_ndims == 1:
        base = prior.base_dist
        if len(base.event_shape) == 0:
            if isinstance(base, tdist.Normal):
                return (z - base.loc.double()) / base.scale.double()
            return _tails_to_normal(*_univariate_tails(base, z))
    if isinstance(prior, tdist.MixtureSameFamily):
        comp = prior.component_distribution
        if (
            isinstance(comp, tdist.Independent)
            and comp.reinterpreted_batch_ndims == 1
            and len(comp.base_dist.event_shape) == 0
        ):
            # marginal of coordinate d: Σ_k π_k F_{k,d}(z_d), and likewise for the upper tail
            weights = prior.mixture_distribution.probs.double().unsqueeze(-1)
            lower, upper = _univariate_tails(comp.base_dist, z.unsqueeze(-2))
            return _tails_to_normal((weights * lower).sum(-2), (weights * upper).sum(-2))
    raise ValueError(
        f"prior_cdf_transform cannot find the marginal CDFs of a {type(prior).__name__}; expected "
        "Independent(univariate, 1), a MixtureSameFamily of such components, or a distribution with a "
        "marginal_cdf(z) method returning per-coordinate CDFs of shape (..., D)"
    )


def prior_cdf_transform(prior: tdist.Distribution) -> Callable[[torch.Tensor], torch.Tensor]:
    """A map ``z (..., D) -> Φ^{-1}(F_d(z_d))`` through the prior's marginal CDFs F_d and the standard
    normal quantile Φ^{-1}, coordinate by coordinate.

    Under the prior each transformed coordinate is N(0, 1). Mathieu et al. (2019, §5) apply this to codes
    learnt with a Student-t prior before the disentanglement metric, whose variance-based votes are
    otherwise dominated by the heavy tails. Supported: ``Independent`` priors over univariate
    distributions (the Student-t CDF is computed here, as torch has none), mixtures
    (``MixtureSameFamily``) of such components, and any distribution with a ``marginal_cdf(z)`` method.

    :param prior: a distribution with ``event_shape == (D,)``.
    :returns: a callable; its output has the shape of its input and dtype float64 (Normal marginals are
        standardised exactly, symmetric marginals are mapped through their lower tail so that neither tail
        saturates).
    """
    if len(prior.event_shape) != 1:
        raise ValueError(f"the prior must have event_shape (D,), got {tuple(prior.event_shape)}")
    dim = int(prior.event_shape[0])

    def transform(z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z)
        if z.dim() < 1 or z.shape[-1] != dim:
            raise ValueError(f"expected codes of shape (..., {dim}), got {tuple(z.shape)}")
        with torch.no_grad():
            return _marginal_cdf_to_normal(prior, z.double())

    return transform

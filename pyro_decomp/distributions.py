"""Pyro distributions for the priors of decomposition VAEs (Mathieu et al., 2019, §3 and §5).

* :class:`SpikeAndSlab` -- the elementwise sparse prior γ N(0, s²) + (1 − γ) N(μ, σ²) that the paper uses on
  Fashion-MNIST (γ = 0.8, s = 0.05). Use ``.to_event(1)`` for a vector of independent coordinates.
* :class:`IndependentSubspaces` -- the product p(z) = Π_i p_i(z_{B_i}) of distributions over consecutive
  blocks of coordinates, a prior that expresses independence *between* subspaces only.
* :func:`gaussian_mixture` and :class:`SharedScaleGaussianMixture` -- a Gaussian mixture with a shared
  diagonal scale, built on Pyro's :class:`~pyro.distributions.MixtureOfDiagNormalsSharedCovariance` (which has
  pathwise ``rsample``) and, in one dimension where that class does not apply, on
  :class:`~pyro.distributions.MixtureSameFamily`.

Importing this module also registers closed-form KL divergences with
:func:`torch.distributions.kl.register_kl`:

* KL(Independent(Normal) ‖ IndependentSubspaces) = Σ_i KL(N(μ_{B_i}, σ_{B_i}²) ‖ p_i), which exists whenever
  every block has a closed form against a diagonal Normal (e.g. Gaussian blocks of any variances);
* KL(IndependentSubspaces ‖ IndependentSubspaces) = Σ_i KL(p_i ‖ q_i) for equal block sizes.

When a block has no closed form, :func:`~torch.distributions.kl.kl_divergence` raises
``NotImplementedError``, which is the signal for an ELBO to fall back to a Monte Carlo estimate.
"""

from __future__ import annotations

import math
from numbers import Number
from typing import Optional, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import MixtureOfDiagNormalsSharedCovariance, TorchDistribution
from torch.distributions import Independent, Normal, constraints, kl_divergence, register_kl
from torch.distributions.utils import broadcast_all

from pyro_decomp._pyro_compat import broadcast_shape

__all__ = [
    "SpikeAndSlab",
    "IndependentSubspaces",
    "SharedScaleGaussianMixture",
    "gaussian_mixture",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(value, loc, scale):
    return -0.5 * ((value - loc) / scale) ** 2 - scale.log() - _LOG_SQRT_2PI


def _normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


class SpikeAndSlab(TorchDistribution):
    r"""Elementwise spike-and-slab mixture of two Normals,

    .. math::

        p(z) = \gamma\, \mathcal{N}(z; 0, s^2) + (1 - \gamma)\, \mathcal{N}(z; \mu, \sigma^2),

    the sparse prior of Mathieu et al. (2019, §5.3): most of the mass (γ = 0.8 there) sits in a narrow
    spike of scale s = 0.05 at zero, so a typical draw has few active coordinates. The event shape is
    ``()``; use ``SpikeAndSlab(...).to_event(1)`` for a vector of independent coordinates.

    Moments: E[z] = (1 − γ) μ and Var[z] = γ s² + (1 − γ) σ² + γ (1 − γ) μ²; CDF: F(z) = γ Φ(z / s) +
    (1 − γ) Φ((z − μ) / σ).

    There is no ``rsample`` (``has_rsample = False``): which component a draw comes from is a discrete choice,
    so a draw is not a differentiable function of (γ, μ, σ) and noise independent of them. ``log_prob`` is
    differentiable in every parameter.

    :param gamma: spike weight γ in [0, 1].
    :param loc: slab location μ.
    :param scale: slab standard deviation σ > 0.
    :param spike_scale: spike standard deviation s > 0 (default 0.05).

    All parameters broadcast together to the batch shape.

    >>> import torch
    >>> p = SpikeAndSlab(0.8, 0.0, 1.0).expand([3]).to_event(1)  # three independent coordinates
    >>> p.event_shape
    torch.Size([3])
    >>> round(float(p.base_dist.variance[0]), 4)  # γ s² + (1 − γ) σ² = 0.8 · 0.05² + 0.2
    0.202
    >>> _ = torch.manual_seed(0)
    >>> bool((p.sample((100000,)).var(0) - 0.202).abs().max() < 0.01)
    True
    """

    arg_constraints = {
        "gamma": constraints.unit_interval,
        "loc": constraints.real,
        "scale": constraints.positive,
        "spike_scale": constraints.positive,
    }
    support = constraints.real
    has_rsample = False

    def __init__(self, gamma, loc, scale, spike_scale=0.05, validate_args=None):
        self.gamma, self.loc, self.scale, self.spike_scale = broadcast_all(gamma, loc, scale, spike_scale)
        if all(isinstance(v, Number) for v in (gamma, loc, scale, spike_scale)):
            batch_shape = torch.Size()
        else:
            batch_shape = self.gamma.shape
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SpikeAndSlab, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("gamma", "loc", "scale", "spike_scale"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(SpikeAndSlab, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        zero = torch.zeros((), dtype=self.loc.dtype, device=self.loc.device)
        spike = self.gamma.log() + _normal_log_prob(value, zero, self.spike_scale)
        slab = (-self.gamma).log1p() + _normal_log_prob(value, self.loc, self.scale)
        return torch.logsumexp(torch.stack(torch.broadcast_tensors(spike, slab)), dim=0)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            in_spike = torch.bernoulli(self.gamma.expand(shape)).bool()
            noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return torch.where(in_spike, self.spike_scale * noise, self.loc + self.scale * noise)

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        spike = _normal_cdf(value / self.spike_scale)
        slab = _normal_cdf((value - self.loc) / self.scale)
        return self.gamma * spike + (1 - self.gamma) * slab

    @property
    def mean(self):
        return (1 - self.gamma) * self.loc

    @property
    def variance(self):
        g = self.gamma
        return g * self.spike_scale**2 + (1 - g) * self.scale**2 + g * (1 - g) * self.loc**2


class _BlockSupport(constraints.Constraint):
    """The support of :class:`IndependentSubspaces`: each block of the last dim lies in its part's support."""

    event_dim = 1

    def __init__(self, supports: Sequence[constraints.Constraint], sizes: Sequence[int]):
        self.supports = tuple(supports)
        self.sizes = tuple(sizes)
        super().__init__()

    @property
    def is_discrete(self):
        return any(c.is_discrete for c in self.supports)

    def check(self, value):
        ok = None
        for c, block in zip(self.supports, value.split(self.sizes, dim=-1)):
            res = c.check(block)
            if c.event_dim == 0:
                res = res.all(-1)
            ok = res if ok is None else ok & res
        return ok


_MixtureConstraint = getattr(constraints, "MixtureSameFamilyConstraint", ())


def _is_real_vector(c: constraints.Constraint) -> bool:
    while isinstance(c, _MixtureConstraint):
        c = c.base_constraint
    return c is constraints.real_vector or (
        isinstance(c, constraints.independent)
        and c.base_constraint is constraints.real
        and c.reinterpreted_batch_ndims == 1
    )


class IndependentSubspaces(TorchDistribution):
    r"""A product of distributions over consecutive blocks of coordinates,

    .. math::

        p(z) = \prod_{i=1}^{M} p_i(z_{B_i}),\qquad z = (z_{B_1}, \dots, z_{B_M}),\ |B_i| = D_i,

    so the blocks are independent of each other while each block may have any internal structure
    (clusters, correlations, sparsity). This expresses the "independent subspaces" decomposition that
    Mathieu et al. (2019, §3) list among the structures a prior can impose.

    Shapes: every part has ``event_shape == (D_i,)``; the result has ``event_shape == (ΣD_i,)`` and
    ``batch_shape`` the broadcast of the parts' batch shapes (each part is expanded to it, so the blocks of
    different batch elements are independent draws). ``log_prob(value)`` splits the last dim of ``value`` into
    the blocks and sums the parts' log-densities.

    ``rsample`` exists iff every part has one; ``entropy`` is Σ_i H[p_i] when every part has one; ``mean`` and
    ``variance`` concatenate the parts' when every part has them.

    :param parts: a non-empty sequence of distributions, each with one event dimension.

    >>> import pyro.distributions as dist, torch
    >>> normal = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> laplace = dist.Laplace(torch.zeros(1), 1.0).to_event(1)
    >>> p = IndependentSubspaces([normal, laplace])
    >>> p.event_shape, p.sample((5,)).shape
    (torch.Size([3]), torch.Size([5, 3]))
    >>> z = torch.tensor([0.5, -1.0, 2.0])
    >>> bool(torch.isclose(p.log_prob(z), normal.log_prob(z[:2]) + laplace.log_prob(z[2:])))
    True
    """

    arg_constraints = {}

    def __init__(self, parts: Sequence[dist.Distribution], validate_args=None):
        parts = list(parts)
        if not parts:
            raise ValueError("IndependentSubspaces needs at least one part, got an empty sequence")
        for i, p in enumerate(parts):
            if not isinstance(p, torch.distributions.Distribution):
                raise ValueError(f"part {i} must be a distribution, got {type(p).__name__}")
            if len(p.event_shape) != 1:
                raise ValueError(
                    f"part {i} must have event_shape (D_{i},), got event_shape {tuple(p.event_shape)}; "
                    "use .to_event(1) on a batch of univariate distributions"
                )
        batch_shape = torch.Size(broadcast_shape(*(p.batch_shape for p in parts)))
        self.parts = tuple(p if p.batch_shape == batch_shape else p.expand(batch_shape) for p in parts)
        self.sizes = tuple(int(p.event_shape[0]) for p in parts)
        super().__init__(batch_shape, torch.Size((sum(self.sizes),)), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentSubspaces, _instance)
        batch_shape = torch.Size(batch_shape)
        new.parts = tuple(p.expand(batch_shape) for p in self.parts)
        new.sizes = self.sizes
        super(IndependentSubspaces, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        supports = [p.support for p in self.parts]
        if all(_is_real_vector(c) for c in supports):
            return constraints.real_vector
        return _BlockSupport(supports, self.sizes)

    @property
    def has_rsample(self):
        return all(p.has_rsample for p in self.parts)

    def split(self, value: torch.Tensor):
        """Split ``value`` of shape ``(..., ΣD_i)`` into the blocks ``(..., D_i)``."""
        return value.split(self.sizes, dim=-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        result = 0
        for p, block in zip(self.parts, self.split(value)):
            result = result + p.log_prob(block)
        return result

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return torch.cat([p.sample(sample_shape) for p in self.parts], dim=-1)

    def rsample(self, sample_shape=()):
        if not self.has_rsample:
            raise NotImplementedError(
                "rsample needs every part to have rsample; parts without one: "
                + ", ".join(type(p).__name__ for p in self.parts if not p.has_rsample)
            )
        return torch.cat([p.rsample(sample_shape) for p in self.parts], dim=-1)

    def entropy(self):
        result = 0
        for p in self.parts:
            result = result + p.entropy()
        return result

    @property
    def mean(self):
        return torch.cat([p.mean for p in self.parts], dim=-1)

    @property
    def variance(self):
        return torch.cat([p.variance for p in self.parts], dim=-1)


class SharedScaleGaussianMixture(MixtureOfDiagNormalsSharedCovariance):
    r"""Pyro's :class:`~pyro.distributions.MixtureOfDiagNormalsSharedCovariance` with its moments,

    .. math::

        p(z) = \sum_k \pi_k \mathcal{N}(z; \mu_k, \operatorname{diag}\sigma^2),\quad
        E[z] = \sum_k \pi_k \mu_k,\quad
        \operatorname{Var}[z_d] = \sigma_d^2 + \sum_k \pi_k \mu_{kd}^2 - E[z_d]^2.

    ``rsample`` is pathwise in the locations, the shared scale and the logits (Jankowiak & Karaletsos, 2018).
    That derivative divides by ‖μ_a − μ_b‖, so the component locations must be distinct. Needs D ≥ 2; build it
    with :func:`gaussian_mixture`, which also covers D = 1.
    """

    def rsample(self, sample_shape=()):
        # The parent's sampler gathers component locations correctly only for an empty sample shape (or a
        # 1-dim one without batch dims), so draw from the expansion to ``sample_shape + batch_shape``; the
        # expansion is differentiable, so gradients still reach the parameters.
        sample_shape = torch.Size(sample_shape)
        if sample_shape:
            return self.expand(sample_shape + self.batch_shape).rsample()
        return super().rsample()

    def marginal_cdf(self, value):
        """Per-coordinate marginal CDFs F_d(z_d) = Σ_k π_k Φ((z_d − μ_kd) / σ_d), shape ``(..., D)``."""
        u = _normal_cdf((value.unsqueeze(-2) - self.locs) / self.coord_scale.unsqueeze(-2))
        return (self.probs.unsqueeze(-1) * u).sum(-2)

    @property
    def mean(self):
        return (self.probs.unsqueeze(-1) * self.locs).sum(-2)

    @property
    def variance(self):
        second = (self.probs.unsqueeze(-1) * self.locs**2).sum(-2)
        return self.coord_scale**2 + second - self.mean**2


def gaussian_mixture(
    locs: torch.Tensor,
    scale,
    weights: Optional[torch.Tensor] = None,
    logits: Optional[torch.Tensor] = None,
) -> dist.Distribution:
    r"""A K-component Gaussian mixture with a shared diagonal scale,
    p(z) = Σ_k π_k N(z; μ_k, diag σ²), with ``event_shape == (D,)`` and ``batch_shape == locs.shape[:-2]``
    (broadcast with the other parameters' batch dims).

    For D ≥ 2 it is a :class:`SharedScaleGaussianMixture` (Pyro's ``MixtureOfDiagNormalsSharedCovariance``),
    which has a pathwise ``rsample``. For D = 1, where that class does not apply, it is a
    ``MixtureSameFamily(Categorical, Normal(locs, scale).to_event(1))``, which has ``log_prob``, ``sample``,
    ``mean`` and ``variance`` but no ``rsample``.

    :param locs: component locations μ, shape ``(*batch, K, D)``.
    :param scale: shared standard deviation σ > 0 (not a variance): a number (isotropic), or a tensor of
        shape ``(*batch, D)`` (one per coordinate) or ``(*batch, 1)`` (a batch of isotropic scales).
    :param weights: mixture weights π ≥ 0 of shape ``(*batch, K)``, normalised here; uniform when both
        ``weights`` and ``logits`` are omitted.
    :param logits: unnormalised log-weights instead of ``weights``.
    """
    locs = torch.as_tensor(locs)
    if not locs.is_floating_point():
        locs = locs.to(torch.get_default_dtype())
    if locs.dim() < 2:
        raise ValueError(f"locs must have shape (..., K, D), got shape {tuple(locs.shape)}")
    k, d = locs.shape[-2:]
    if weights is not None and logits is not None:
        raise ValueError("give either weights or logits, not both")
    if logits is None:
        if weights is None:
            logits = locs.new_zeros(k)
        else:
            weights = torch.as_tensor(weights, dtype=locs.dtype, device=locs.device)
            if weights.shape[-1:] != (k,):
                raise ValueError(f"weights must have shape (..., {k}) for {k} components, got {weights}")
            if (weights < 0).any() or not (weights.sum(-1) > 0).all():
                raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
            logits = weights.log()
    logits = torch.as_tensor(logits, dtype=locs.dtype, device=locs.device)
    logits = logits - logits.logsumexp(-1, keepdim=True)
    scale = torch.as_tensor(scale, dtype=locs.dtype, device=locs.device)
    if not (scale > 0).all():
        raise ValueError(f"scale must be > 0, got {scale}")
    if scale.dim() == 0:
        scale = scale.unsqueeze(-1)
    elif scale.shape[-1] not in (1, d):
        raise ValueError(
            f"scale must be a number or have shape (..., {d}) (one per coordinate), got shape "
            f"{tuple(scale.shape)}; for a batch of isotropic scales use scale[..., None]"
        )
    batch_shape = broadcast_shape(locs.shape[:-2], logits.shape[:-1], scale.shape[:-1])
    locs = locs.expand(batch_shape + (k, d))
    logits = logits.expand(batch_shape + (k,))
    scale = scale.expand(batch_shape + (d,))
    if d == 1:
        components = dist.Normal(locs, scale.unsqueeze(-2)).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
    return SharedScaleGaussianMixture(locs, scale, logits)


# ---------------------------------------------------------------------------------------- closed-form KLs
def _diag_normal_blocks(p: Independent, sizes: Sequence[int]):
    base = p.base_dist
    locs = base.loc.split(sizes, dim=-1)
    scales = base.scale.split(sizes, dim=-1)
    return [dist.Normal(m, s).to_event(1) for m, s in zip(locs, scales)]


@register_kl(Independent, IndependentSubspaces)
def _kl_diag_normal_subspaces(p, q):
    # KL(N(μ, diag σ²) ‖ Π_i q_i) = Σ_i KL(N(μ_{B_i}, diag σ_{B_i}²) ‖ q_i): the guide factorises over
    # coordinates, hence over the blocks, and the KL of product measures is the sum of the KLs.
    if p.reinterpreted_batch_ndims != 1 or not isinstance(p.base_dist, Normal):
        raise NotImplementedError
    if p.event_shape != q.event_shape:
        raise ValueError(f"event shapes differ: {tuple(p.event_shape)} and {tuple(q.event_shape)}")
    result = 0
    for block, part in zip(_diag_normal_blocks(p, q.sizes), q.parts):
        result = result + kl_divergence(block, part)
    return result


@register_kl(IndependentSubspaces, IndependentSubspaces)
def _kl_subspaces_subspaces(p, q):
    if p.sizes != q.sizes:
        raise NotImplementedError
    result = 0
    for p_part, q_part in zip(p.parts, q.parts):
        result = result + kl_divergence(p_part, q_part)
    return result

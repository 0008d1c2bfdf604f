"""Minibatch estimators of a divergence D(q(z), p(z)) between the aggregate encoding and the prior.

The aggregate encoding of a data set is the mixture q(z) = (1/N) sum_n q(z|x_n). On a minibatch of B points
it is represented by the batch's encoder samples z_1..z_B (one per point, treated as draws from q(z)) and by
the batch's encoder distributions q(.|x_b). The decomposition objective (Mathieu et al., 2019, eq. 7) adds
``alpha * D(q(z), p(z))`` per data point; :class:`~pyro_decomp.elbo.DecompositionELBO` calls the estimators
here with ``est(z, q, prior)``:

* ``z``: encoder samples, shape ``(..., B, D)``; leading dims (e.g. vectorised particles) index independent
  copies, the estimate is made per copy and averaged;
* ``q``: the batched encoder distribution, ``batch_shape == (..., B)`` (or any shape that broadcasts to it,
  such as ``(B,)``), ``event_shape == (D,)``;
* ``prior``: p(z) with ``event_shape == (D,)`` and a batch shape that broadcasts to ``(..., B)``, e.g. the
  batch-shaped distribution that Pyro records at a sample site inside ``pyro.plate``.

Estimators:

* :class:`MMD`, the unbiased U-statistic of the squared maximum mean discrepancy against B fresh prior draws
  z'_1..z'_B (Gretton et al., 2012)::

      MMD^2 = 1/(B(B-1)) sum_{i != j} [k(z_i, z_j) + k(z'_i, z'_j)] - 2/B^2 sum_{i,j} k(z_i, z'_j)

  with the paper's per-dimension inverse multiquadric kernel
  :class:`~pyro_decomp.kernels.IMQKernel` by default;
* :class:`InclusiveKL`, KL(p(z) || q(z)) ~= 1/B sum_i [log p(z'_i) - log (1/B) sum_b q(z'_i | x_b)];
* :class:`ExclusiveKL`, KL(q(z) || p(z)) ~= 1/B sum_i [logsumexp_b log q(z_i | x_b) - log B - log p(z_i)].

Prior draws are reparameterised (``rsample``) when the prior has learnable parameters (a tensor that
requires grad, or a parameter of a transform module such as a normalising flow's) and supports ``rsample``;
otherwise they are plain ``sample`` draws. Priors without a pathwise sample (``MixtureSameFamily``,
spike-and-slab) therefore contribute no gradient through their draws: MMD then gives their parameters no
gradient at all (:class:`~pyro_decomp.elbo.DecompositionELBO` refuses that pairing when it trains), while
the KL estimators differentiate ``log p``. Each estimator says so in two flags: ``needs_encoder_density``
(it evaluates q(z|x_b)) and ``differentiates_log_prior`` (it differentiates log p(z)).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, Independent, Transform

from pyro_decomp.kernels import IMQKernel, Kernel, RBFKernel, wide_dtype

__all__ = [
    "Kernel",
    "IMQKernel",
    "RBFKernel",
    "Divergence",
    "MMD",
    "InclusiveKL",
    "ExclusiveKL",
    "DIVERGENCES",
    "DIVERGENCE_NAMES",
    "build_divergence",
    "has_learnable_params",
    "prior_draws",
]

DIVERGENCES = ("mmd", "inclusive-kl", "exclusive-kl")


# ------------------------------------------------------------------------------------------ estimators
def has_learnable_params(d: Distribution) -> bool:
    """Whether any tensor held by ``d`` (or by a distribution or transform nested in it, a transform module's
    parameters included) requires grad."""
    stack, seen = [d], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            if any(p.requires_grad for p in obj.parameters()):
                return True
            continue
        for value in vars(obj).values():
            items = value if isinstance(value, (list, tuple)) else (value,)
            for v in items:
                if torch.is_tensor(v):
                    if v.requires_grad:
                        return True
                elif isinstance(v, (Distribution, Transform)):
                    stack.append(v)
    return False


def prior_draws(prior: Distribution) -> torch.Tensor:
    """One draw per batch element of ``prior``: ``rsample()`` if it has learnable parameters and a pathwise
    sample, else ``sample()``. Shape ``batch_shape + event_shape``."""
    if prior.has_rsample and has_learnable_params(prior):
        return prior.rsample()
    return prior.sample()


def _check_inputs(who: str, z, q, prior, need_q: bool) -> Distribution:
    """Validate shapes; return ``prior`` with batch shape ``z.shape[:-1]``."""
    if not torch.is_tensor(z) or z.dim() < 2:
        shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(f"{who}: z must be a tensor of shape (..., B, D) with B >= 2, got {shape}")
    batch, D = z.shape[:-1], z.shape[-1]
    if z.shape[-2] < 2:
        raise ValueError(f"{who} needs a batch of at least 2 samples, got z of shape {tuple(z.shape)}")
    if not isinstance(prior, Distribution) or tuple(prior.event_shape) != (D,):
        got = tuple(prior.event_shape) if isinstance(prior, Distribution) else type(prior).__name__
        raise ValueError(f"{who}: the prior must be a distribution with event_shape ({D},), got {got}")
    if need_q:
        if not isinstance(q, Distribution) or tuple(q.event_shape) != (D,):
            got = tuple(q.event_shape) if isinstance(q, Distribution) else type(q).__name__
            raise ValueError(f"{who}: q must be a distribution with event_shape ({D},), got {got}")
        qb = tuple(q.batch_shape)
        if not qb or qb[-1] != batch[-1]:
            raise ValueError(
                f"{who}: q must be the batch's encoder distribution with batch_shape (..., {batch[-1]}), "
                f"got batch_shape {qb}"
            )
    if prior.batch_shape != batch:
        try:
            prior = prior.expand(batch)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"{who}: the prior's batch_shape {tuple(prior.batch_shape)} does not broadcast to the "
                f"batch {tuple(batch)} of z"
            ) from e
    return prior


def _logsumexp(t: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim. Terms more than 80 nats below the maximum (relative weight < 1e-34) are
    clamped there: exp of large negative numbers takes a slow path, and q(z_i | x_b) of far-apart encodings
    is tiny."""
    m = t.detach().amax(dim=-1, keepdim=True)
    return (t - m).clamp_min(-80.0).exp().sum(dim=-1).log() + m.squeeze(-1)


def _diagonal_normal(q: Distribution):
    """``(loc, scale)`` of q if it is a diagonal Normal with event shape (D,), else ``None``."""
    if (
        isinstance(q, Independent)
        and q.reinterpreted_batch_ndims == 1
        and type(q.base_dist) in (dist.Normal, torch.distributions.Normal)
    ):
        return q.base_dist.loc, q.base_dist.scale
    return None


def _log_aggregate(q: Distribution, v: torch.Tensor) -> torch.Tensor:
    """log q_hat(v_i) = logsumexp_b log q(v_i | x_b) - log B, shape ``(..., B)``, for v ``(..., B, D)``.

    For a diagonal Normal q(.|x_b) = N(m_b, diag s_b^2) the ``(..., B_i, B_b)`` table of log q(v_i | x_b) is
    one matrix product: with a_b = 1 / s_b^2 and c_b = -sum_d (m_bd^2 a_bd / 2 + log s_bd) - D/2 log 2 pi,

        log q(v_i | x_b) = [v_i^2, v_i] . [-a_b / 2, m_b a_b] + c_b

    formed in float64 (where the device has it) because its terms are large and cancel when the encoder
    scales are small, then rounded to v's dtype. For any other q it is ``q.log_prob`` on values of shape
    ``(B_i, ..., 1, D)``, so that q's batch shape ``(..., B)`` (or ``(B,)``) broadcasts against them.
    """
    B, D = v.shape[-2], v.shape[-1]
    params = _diagonal_normal(q)
    if params is not None:
        wide = wide_dtype(v)
        loc, scale = (t.to(wide) for t in params)
        prec = scale.square().reciprocal()
        lhs = torch.cat([v.to(wide).square(), v.to(wide)], dim=-1)
        rhs = torch.cat([-0.5 * prec, loc * prec], dim=-1).transpose(-1, -2)
        const = -(0.5 * loc.square() * prec + scale.log()).sum(-1) - 0.5 * D * math.log(2 * math.pi)
        if lhs.dim() == 2 and rhs.dim() == 2:
            table = torch.addmm(const.unsqueeze(-2), lhs, rhs)
        else:
            table = torch.matmul(lhs, rhs) + const.unsqueeze(-2)
        table = table.to(v.dtype)
    else:
        table = q.log_prob(v.movedim(-2, 0).unsqueeze(-2)).movedim(0, -2)
    return _logsumexp(table) - math.log(B)


class Divergence:
    """A minibatch estimator ``est(z, q, prior) -> scalar`` of a divergence between q(z) and p(z)."""

    name = "divergence"
    #: whether the estimator evaluates the encoder density q(z|x_b) (``None``: not stated)
    needs_encoder_density: Optional[bool] = None
    #: whether its gradient reaches a learnable prior through log p(z) (``None``: not stated)
    differentiates_log_prior: Optional[bool] = None

    def __call__(self, z: torch.Tensor, q: Optional[Distribution], prior: Distribution) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MMD(Divergence):
    """Unbiased estimate of the squared maximum mean discrepancy between q(z) and p(z).

    ``MMD(kernel)(z, q, prior)`` draws z'_1..z'_B from the prior (one per batch element of ``prior``
    expanded to ``z.shape[:-1]``) and returns::

        1/(B(B-1)) sum_{i != j} [k(z_i, z_j) + k(z'_i, z'_j)] - 2/B^2 sum_{i,j} k(z_i, z'_j)

    averaged over the leading dims of ``z``. Its expectation is MMD^2(q, p) >= 0, zero iff q = p for a
    characteristic kernel; a single estimate can be negative. ``q`` is not used.

    :param kernel: a :class:`~pyro_decomp.kernels.Kernel` or any callable ``k(a, b) -> gram``; default
        :class:`~pyro_decomp.kernels.IMQKernel` ``()``.

    Samples of the prior itself score about 0; shifted ones do not:

    >>> import pyro.distributions as dist, torch
    >>> g = torch.Generator().manual_seed(0)
    >>> prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    >>> _ = torch.manual_seed(0)
    >>> same = MMD()(torch.randn(500, 2, generator=g), None, prior)
    >>> shifted = MMD()(torch.randn(500, 2, generator=g) + 2.0, None, prior)
    >>> bool(abs(same) < 0.05 < shifted)
    True
    """

    name = "mmd"
    needs_encoder_density = False
    differentiates_log_prior = False

    def __init__(self, kernel: Optional[Callable] = None):
        kernel = IMQKernel() if kernel is None else kernel
        if not callable(kernel):
            raise ValueError(f"MMD kernel must be callable k(a, b) -> gram, got {type(kernel).__name__}")
        self.kernel = kernel

    def __repr__(self) -> str:
        return f"MMD(kernel={self.kernel!r})"

    def __call__(self, z, q, prior):
        prior = _check_inputs("MMD", z, q, prior, need_q=False)
        zp = prior_draws(prior).to(z.dtype)
        B = z.shape[-2]
        copies = z.shape[:-2].numel()
        if isinstance(self.kernel, Kernel):
            sums = self.kernel.pair_sums(z, zp)
        else:
            sums = Kernel.pair_sums(self.kernel, z, zp)
        # combine in the wide dtype: the three terms nearly cancel when q(z) is close to p(z)
        sxx, syy, sxy = (s.to(wide_dtype(z)) for s in sums)
        return (((sxx + syy) / (B * (B - 1)) - sxy * (2.0 / B**2)) / copies).to(z.dtype)


class InclusiveKL(Divergence):
    """KL(p(z) || q(z)) on a minibatch, the divergence of the paper's pinwheel experiment::

        1/B sum_i [log p(z'_i) - log (1/B) sum_b q(z'_i | x_b)],    z'_i ~ p(z)

    averaged over the leading dims. ``z`` only fixes the shapes: the draws come from the prior, so the
    gradient reaches the encoder through q's parameters and a learnable prior through ``log p(z')`` (and its
    draws, when reparameterisable). The log of a B-term average makes the estimate biased upwards (Jensen);
    the bias shrinks as B grows.
    """

    name = "inclusive-kl"
    needs_encoder_density = True
    differentiates_log_prior = True

    def __call__(self, z, q, prior):
        prior = _check_inputs("InclusiveKL", z, q, prior, need_q=True)
        zp = prior_draws(prior).to(z.dtype)
        return (prior.log_prob(zp) - _log_aggregate(q, zp)).mean()


class ExclusiveKL(Divergence):
    """KL(q(z) || p(z)) on a minibatch, with the encoder samples as draws from q(z)::

        1/B sum_i [logsumexp_b log q(z_i | x_b) - log B - log p(z_i)]

    averaged over the leading dims. Not in the paper's code; it is the marginal term of the decomposition
    E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)) (Hoffman & Johnson, 2016). Like the inclusive
    estimate it is biased for finite B, and the bias shrinks as B grows.
    """

    name = "exclusive-kl"
    needs_encoder_density = True
    differentiates_log_prior = True

    def __call__(self, z, q, prior):
        prior = _check_inputs("ExclusiveKL", z, q, prior, need_q=True)
        return (_log_aggregate(q, z) - prior.log_prob(z)).mean()


_BUILDERS = {
    "mmd": lambda: MMD(IMQKernel()),
    "mmd-imq": lambda: MMD(IMQKernel()),
    "mmd-imq-full": lambda: MMD(IMQKernel(per_dim=False)),
    "mmd-rbf": lambda: MMD(RBFKernel()),
    "inclusive-kl": InclusiveKL,
    "exclusive-kl": ExclusiveKL,
}
DIVERGENCE_NAMES = tuple(_BUILDERS)  # every name that build_divergence accepts


def build_divergence(divergence: Union[str, Callable]) -> Callable:
    """An estimator from a name or an estimator object (returned unchanged).

    Names: ``"mmd"`` (= ``"mmd-imq"``, per-dimension IMQ kernel), ``"mmd-imq-full"`` (full-vector IMQ),
    ``"mmd-rbf"`` (Gaussian kernel, median bandwidth), ``"inclusive-kl"``, ``"exclusive-kl"``; case and
    ``_``/``-`` are not significant.

    >>> type(build_divergence("Inclusive_KL")).__name__
    'InclusiveKL'
    >>> build_divergence("mmd-imq").kernel.per_dim
    True
    """
    if isinstance(divergence, str):
        key = divergence.strip().lower().replace("_", "-")
        if key not in _BUILDERS:
            raise ValueError(f"unknown divergence {divergence!r}; expected one of {tuple(_BUILDERS)}")
        return _BUILDERS[key]()
    if callable(divergence):
        return divergence
    raise ValueError(
        f"divergence must be a name in {tuple(_BUILDERS)} or an estimator est(z, q, prior), "
        f"got {type(divergence).__name__}"
    )

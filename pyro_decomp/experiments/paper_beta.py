"""The β term as the paper's code computes it: the KL against p(z)², for the clustering experiment.

The paper's Monte Carlo KL (``kl_divergence`` in ``src/utils.py`` of iffsid/disentangling-disentanglement)
sums ``log q(z|x) − log p(z)`` over the latent dimensions after broadcasting the mixture prior's
log-density, of shape ``(1, B, 1)``, against the per-dimension log q(z|x), of shape ``(1, B, D)``. With
D = 2 it estimates::

    KL_paper(x) = E_{q(z|x)}[log q(z|x)] − 2 E_{q(z|x)}[log p(z)] = 2 KL(q(z|x) ‖ p(z)) + H[q(z|x)],

the KL against the unnormalised density p(z)². For the pinwheel mixture that density is a mixture of
components of half the variance (weighted by their overlaps), so the β term pulls each encoding onto the
prior's modes twice as hard.

This module reproduces that term without touching the library's ELBO, whose KL stays correct: the prior's
distribution is wrapped in :class:`PaperBetaTerm`, which is p(z) in every respect (``log_prob``, samples,
support, shapes) except the KL registered against it with :func:`torch.distributions.kl.register_kl`.
:class:`~pyro_decomp.elbo.DecompositionELBO` takes its β term from ``kl_divergence(q, p)`` when
``analytic_kl`` is on (the default) and one is registered, so only the β term changes; the divergence
D(q(z), p(z)) and every metric read ``log_prob`` and draws of p(z) itself. The registered KL is

* ``2 KL(q ‖ p) + H[q]`` exactly when torch/Pyro has both in closed form for the pair (q, p);
* otherwise the one-draw Monte Carlo estimate ``log q(z̃|x) − 2 log p(z̃)`` on a fresh reparameterised draw
  z̃ ~ q(z|x) (the paper's own estimator, on a draw of its own instead of the reconstruction's; the same
  expectation and gradient in expectation). The pinwheel mixture takes this path, as the paper's code does.

:class:`PaperBetaTermMixture` is the pinwheel prior module that returns the wrapped distribution; it has the
same parameters and buffers as the :class:`~pyro_decomp.priors.MixturePrior` it copies, so a run's
checkpoint loads into either.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import Distribution, kl_divergence, register_kl

from pyro_decomp.priors import MixturePrior

__all__ = ["PaperBetaTerm", "PaperBetaTermMixture", "paper_beta_term_prior"]


class PaperBetaTerm(TorchDistribution):
    """p(z) whose registered KL is the paper's β term, E_q[log q(z|x)] − 2 E_q[log p(z)].

    ``log_prob``, ``sample``, ``rsample``, ``support``, ``mean`` and ``variance`` are those of ``base``, and
    ``expand`` keeps the wrapper, so a ``pyro.plate`` that broadcasts the prior keeps it too.

    :param base: p(z), any distribution (event shape ``(D,)`` for a prior).
    """

    arg_constraints = {}

    def __init__(self, base: Distribution, validate_args=None):
        if not isinstance(base, Distribution):
            raise ValueError(f"base must be a torch Distribution, got {type(base).__name__}")
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance

    def expand(self, batch_shape, _instance=None) -> PaperBetaTerm:
        return PaperBetaTerm(self.base.expand(torch.Size(batch_shape)))

    def sample(self, sample_shape=()) -> torch.Tensor:
        return self.base.sample(torch.Size(sample_shape))

    def rsample(self, sample_shape=()) -> torch.Tensor:
        return self.base.rsample(torch.Size(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def __repr__(self) -> str:
        return f"PaperBetaTerm({self.base!r})"


@register_kl(Distribution, PaperBetaTerm)
def _kl_paper_beta_term(q: Distribution, p: PaperBetaTerm) -> torch.Tensor:
    """E_q[log q] − 2 E_q[log p], shape ``broadcast(q.batch_shape, p.batch_shape)``: 2 KL(q ‖ p) + H[q] in
    closed form when both exist, else ``log q(z̃) − 2 log p(z̃)`` on one reparameterised draw z̃ ~ q."""
    try:
        return 2.0 * kl_divergence(q, p.base) + q.entropy()
    except NotImplementedError:
        pass
    if not q.has_rsample:
        raise ValueError(
            f"the paper's β term needs a reparameterised q(z|x) for its Monte Carlo estimate, got "
            f"{type(q).__name__}"
        )
    z = q.rsample()
    return q.log_prob(z) - 2.0 * p.base.log_prob(z)


class PaperBetaTermMixture(MixturePrior):
    """A :class:`~pyro_decomp.priors.MixturePrior` whose distribution is wrapped in :class:`PaperBetaTerm`:
    the same prior, with the paper's β term (the KL against p(z)²)."""

    def forward(self) -> dist.Distribution:
        return PaperBetaTerm(super().forward())


def paper_beta_term_prior(prior) -> PaperBetaTermMixture:
    """The :class:`PaperBetaTermMixture` with the locations, scale and weights of the mixture prior module
    ``prior`` (its learnt ones learnt as well), its tensors copied.

    :raises ValueError: for a prior that is not a :class:`~pyro_decomp.priors.MixturePrior`.
    """
    if not isinstance(prior, MixturePrior):
        raise ValueError(
            "the paper's β term is set up for the mixture prior of the clustering experiment (MixturePrior), "
            f"got {type(prior).__name__}"
        )
    parameters = dict(prior.named_parameters(recurse=False))
    learn = {
        key
        for key, name in (("locs", "locs"), ("scale", "log_scale"), ("weights", "logits"))
        if name in parameters
    }
    wrapped = PaperBetaTermMixture(
        prior.locs.detach().clone(), float(prior.scale), prior.weights.detach().clone(), learn=learn
    )
    wrapped.load_state_dict(prior.state_dict())
    return wrapped.to(prior.locs.device)

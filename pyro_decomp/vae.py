"""The decomposition VAE: a Pyro ``model``/``guide`` pair with a swappable prior.

Generative model (Mathieu et al., 2019, §2), for a minibatch of B points out of N::

    z_n ~ p(z)                  (any distribution with event shape (D,))
    x_n ~ p(x | z_n) = Lik(decoder(z_n))

Inference model: q(z_n | x_n) = N(loc(x_n), diag scale(x_n)^2) from the encoder.

The decoder returns the likelihood's parameters in one of two forms, and :meth:`DecompVAE.likelihood` takes
either, so ``vae.likelihood(vae.decoder(z), obs_dims)`` is the one way to get p(x|z) everywhere:

* a tensor μ(z) of shape ``(*batch, *obs)``: logits for ``"bernoulli"``; a location for ``"laplace"``, with
  the fixed scale b = ``likelihood_scale``; a location for ``"normal"``, with a learnt global scale σ, one
  per observed coordinate (the parameter ``log_obs_scale``)::

      log p(x|z) = Σ_i log N(x_i; μ_i(z), σ_i)        (or Σ_i log Laplace(x_i; μ_i(z), b))

* a pair ``(μ(z), σ(z))`` of tensors of that shape, when the decoder predicts the scale per data point, as
  the paper's pinwheel decoder does (``decoder_scale=True``; then there is no ``log_obs_scale``)::

      log p(x|z) = Σ_i log N(x_i; μ_i(z), σ_i(z))     (or Σ_i log Laplace(x_i; μ_i(z), σ_i(z)))

  A Bernoulli has no scale, so it takes the tensor form only.

Both live inside ``pyro.plate("data", N, subsample=arange(B), dim=-1)``, so Pyro scales every
log-probability of the batch by N / B and the ELBO estimates the sum over the whole data set.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import nn

from pyro_decomp.distribution_prior import DistributionPrior
from pyro_decomp.priors import GaussianPrior, MixturePrior, SparsePrior, StudentTPrior
from pyro_decomp.util import seeded

__all__ = ["DecompVAE", "LIKELIHOODS"]

LIKELIHOODS = ("bernoulli", "laplace", "normal")

PriorLike = Union[dist.Distribution, Callable[[], dist.Distribution]]
Params = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _event_size(d: dist.Distribution, what: str) -> int:
    if len(d.event_shape) != 1:
        raise ValueError(
            f"{what} must have event_shape (D,), got event_shape {tuple(d.event_shape)}; "
            "use .to_event(1) on a batch of univariate distributions"
        )
    return int(d.event_shape[0])


class DecompVAE(PyroModule):
    """A VAE whose prior p(z) is any Pyro distribution with ``event_shape == (D,)``.

    :param encoder: ``nn.Module``, ``x (B, *obs) -> (loc, scale)`` each ``(B, D)``.
    :param decoder: ``nn.Module``, ``z (..., D) -> params``: a tensor ``(..., *obs)`` (logits for
        ``"bernoulli"``, a location for ``"laplace"`` and ``"normal"``), or, with ``decoder_scale``, a pair
        ``(loc, scale)`` of such tensors for ``"laplace"`` and ``"normal"`` (see the module docstring).
    :param prior: a distribution with ``event_shape == (D,)`` and ``batch_shape == ()``, or a module (or any
        callable) that returns one when called. A distribution is held in a
        :class:`~pyro_decomp.distribution_prior.DistributionPrior` (the ``prior`` submodule): whatever in it
        requires grad (``nn.Parameter`` objects, the ``TransformModule`` layers of a flow) trains with
        the model under this model's prefix in the parameter store, and its tensors follow ``.to()`` and
        ``.double()``.
    :param likelihood: ``"bernoulli"``, ``"laplace"`` (fixed scale ``likelihood_scale``), ``"normal"`` (a
        learnt scale, initialised at ``likelihood_scale``), or a callable ``params -> Distribution`` over one
        observation (batch dims are those of ``params`` minus the observation dims); a callable receives
        whatever the decoder returns, pair or tensor.
    :param likelihood_scale: the Laplace scale (default 0.1) or the Normal scale's initial value; unused
        when the decoder predicts the scale.
    :param latent_dim: D; inferred from the prior when omitted. A mismatch with the prior is an error.
    :param obs_shape: shape of one observation; with ``"normal"`` the learnt scale has this shape (one scale
        per observed coordinate), otherwise a single scale is shared.
    :param decoder_scale: whether the decoder returns ``(loc, scale)`` rather than a tensor. ``None``
        (default) reads the decoder's ``predicts_scale`` attribute (``False`` when it has none), which
        :class:`~pyro_decomp.nets.MLPDecoder` sets for ``scale="decoder"``. When ``True``, ``"normal"``
        creates no ``log_obs_scale`` (it would get no gradient), and ``"bernoulli"`` is an error. The
        likelihood checks every decoder output against it, so a mismatch is a clear error rather than a
        parameter left silently unused. Models saved with a tensor decoder load as before.
    :param name: the prefix of this model's parameters in Pyro's parameter store (default: ``DecompVAE<k>``
        for the k-th model made in the process). Each model's own prefix is what lets several models be
        built and trained one after the other in one process, a notebook re-running a cell included,
        without ``pyro.clear_param_store()``: a parameter store entry of one model is never taken for
        another's. ``state_dict`` keys carry no prefix, so checkpoints move freely between models.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: PriorLike,
        likelihood: Union[str, Callable[[torch.Tensor], dist.Distribution]] = "normal",
        likelihood_scale: float = 0.1,
        latent_dim: Optional[int] = None,
        obs_shape=None,
        decoder_scale: Optional[bool] = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=f"DecompVAE{next(_INSTANCES)}" if name is None else name)
        self.encoder = encoder
        self.decoder = decoder
        if isinstance(prior, torch.distributions.Distribution):
            prior = DistributionPrior(prior)
        if callable(prior):
            self.prior = prior
        else:
            raise TypeError(
                f"prior must be a pyro Distribution or a module returning one, got {type(prior).__name__}"
            )
        prior_dim = _event_size(self.prior_distribution(), "the prior")
        if self.prior_distribution().batch_shape != torch.Size():
            raise ValueError(
                f"the prior must have batch_shape (), got {tuple(self.prior_distribution().batch_shape)}"
            )
        enc_dim = getattr(encoder, "latent_dim", None)
        if enc_dim is not None and enc_dim != prior_dim:
            raise ValueError(
                f"the encoder has latent_dim {enc_dim} but the prior has event_shape ({prior_dim},)"
            )
        if latent_dim is not None and latent_dim != prior_dim:
            raise ValueError(f"latent_dim={latent_dim} but the prior has event_shape ({prior_dim},)")
        self.latent_dim = prior_dim

        if not (isinstance(likelihood_scale, (int, float)) and likelihood_scale > 0):
            raise ValueError(f"likelihood_scale must be a positive number, got {likelihood_scale!r}")
        self.likelihood_scale = float(likelihood_scale)
        if isinstance(likelihood, str):
            if likelihood not in LIKELIHOODS:
                raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
            self.likelihood_name = likelihood
            self._likelihood_fn = None
        elif callable(likelihood):
            self.likelihood_name = "custom"
            self._likelihood_fn = likelihood
        else:
            raise TypeError(f"likelihood must be a name or a callable, got {type(likelihood).__name__}")
        if decoder_scale is None:
            decoder_scale = bool(getattr(decoder, "predicts_scale", False))
        elif not isinstance(decoder_scale, bool):
            raise ValueError(f"decoder_scale must be True, False or None, got {decoder_scale!r}")
        if decoder_scale and self.likelihood_name == "bernoulli":
            raise ValueError(
                "the likelihood 'bernoulli' has no scale, but the decoder predicts one (decoder_scale=True); "
                "use a decoder that returns logits, or a 'normal' or 'laplace' likelihood"
            )
        self.decoder_scale = decoder_scale
        if self.likelihood_name == "normal" and not decoder_scale:
            shape = () if obs_shape is None else tuple(obs_shape)
            init = torch.full(shape, self.likelihood_scale).log()
            self.log_obs_scale = nn.Parameter(init)

    def __getstate__(self):
        # the caches of prior_distribution and _subsample are rebuilt on demand; keep them out of pickles
        # and deep copies
        state = dict(super().__getstate__())
        state.pop("_prior_cache", None)
        state.pop("_arange_cache", None)
        return state

    # ------------------------------------------------------------------ distributions
    def prior_distribution(self) -> dist.Distribution:
        """The prior p(z) as a distribution with ``event_shape == (D,)``.

        A fixed prior module of this library (none of its tensors requires grad) builds the same
        distribution on every call; it is built again only when one of its tensors has changed (in place,
        replaced, or moved) or distribution validation was switched, so a training step does not pay for it.
        """
        key = self._prior_key()
        cache = self.__dict__.get("_prior_cache")
        if key is not None and cache is not None and cache[0] == key:
            return cache[1]
        prior = self.prior()
        self.__dict__["_prior_cache"] = None if key is None else (key, prior)
        return prior

    def _prior_key(self) -> Optional[tuple]:
        """Identity of the prior module's tensors if the module is a fixed, deterministic prior of this
        library (see :meth:`prior_distribution`), else ``None``."""
        module = self.__dict__["_modules"].get("prior")
        if type(module) not in _fixed_prior_types():
            return None
        key = [torch.distributions.Distribution._validate_args]  # built under the validation setting of now
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.requires_grad or t.is_inference():  # inference tensors have no version counter
                return None
            key.append((id(t), t._version, t.data_ptr()))
        return tuple(key)

    def likelihood(self, params: Params, obs_dims: int) -> dist.Distribution:
        """p(x|z) given the decoder's output ``params``, with ``obs_dims`` observation dims.

        ``params`` is a tensor ``(*batch, *obs)`` or, when the decoder predicts the scale, a pair
        ``(loc, scale)`` of them (see the module docstring); the result has batch shape ``batch`` and event
        shape ``obs``.
        """
        name = self.likelihood_name
        if name == "custom":
            d = self._likelihood_fn(params)
        else:
            loc, scale = self._split(params)
            if name == "bernoulli":
                d = dist.Bernoulli(logits=loc, validate_args=False)
            elif name == "laplace":
                if scale is None:
                    scale = torch.as_tensor(self.likelihood_scale, dtype=loc.dtype, device=loc.device)
                d = dist.Laplace(loc, scale)
            else:
                d = dist.Normal(loc, self.log_obs_scale.exp() if scale is None else scale)
        missing = obs_dims - d.event_dim
        if missing < 0:
            raise ValueError(
                f"the likelihood has event_dim {d.event_dim}, more than the {obs_dims} observation dims"
            )
        return d.to_event(missing) if missing else d

    def _split(self, params: Params) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(loc, scale)`` of a named likelihood from the decoder's output; ``scale`` is ``None`` for a
        tensor (the global or fixed scale applies). Checks the form against ``decoder_scale``."""
        pair = isinstance(params, (tuple, list))
        if pair == self.decoder_scale:
            if not pair:
                return params, None
            if len(params) == 2:
                return params[0], params[1]
            raise ValueError(
                f"a decoder that predicts the scale must return (loc, scale), got {len(params)} values"
            )
        name = self.likelihood_name
        if name == "bernoulli":
            raise ValueError(
                "the likelihood 'bernoulli' has no scale: its decoder must return logits (a tensor), "
                "got a (loc, scale) pair"
            )
        if pair:
            raise ValueError(
                f"the decoder returned (loc, scale) but this DecompVAE's {name!r} likelihood uses a "
                "global scale; build it with decoder_scale=True (or give the decoder predicts_scale = True)"
            )
        raise ValueError(
            f"decoder_scale=True but the decoder returned a tensor of shape {tuple(params.shape)}; "
            "expected a (loc, scale) pair"
        )

    def encoder_distribution(self, x: torch.Tensor) -> dist.Distribution:
        """q(z|x): a diagonal Normal with batch shape ``(B,)`` and event shape ``(D,)``."""
        loc, scale = self.encoder(x)
        if loc.shape != (x.shape[0], self.latent_dim) or scale.shape != loc.shape:
            raise ValueError(
                f"the encoder must return (loc, scale) of shape ({x.shape[0]}, {self.latent_dim}), "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        return dist.Normal(loc, scale).to_event(1)

    # ------------------------------------------------------------------ model and guide
    def _check_batch(self, x: torch.Tensor, dataset_size: Optional[int]) -> int:
        if not torch.is_tensor(x) or x.dim() < 2:
            raise ValueError(
                "x must be a tensor of shape (batch, *obs_shape) with at least 2 dims, got "
                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
            )
        batch = x.shape[0]
        if dataset_size is None:
            return batch
        if int(dataset_size) != dataset_size or dataset_size < batch:
            raise ValueError(
                f"dataset_size must be an integer >= the batch size {batch}, got {dataset_size!r}"
            )
        return int(dataset_size)

    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        """``arange(B)`` on x's device, the data plate's subsample indices (made once per size and device)."""
        cache = self.__dict__.setdefault("_arange_cache", {})
        key = (x.shape[0], x.device)
        index = cache.get(key)
        if index is None:
            index = cache[key] = torch.arange(x.shape[0], device=x.device)
        return index

    @pyro_method
    def model(self, x: torch.Tensor, dataset_size: Optional[int] = None) -> torch.Tensor:
        """p(x, z) on a minibatch; site ``"z"`` (latent) and ``"x"`` (observed) in plate ``"data"``."""
        n = self._check_batch(x, dataset_size)
        prior = self.prior_distribution()
        decoder = self.decoder  # registers the decoder's parameters, outside the plate (fewer handlers)
        with pyro.plate("data", n, subsample=self._subsample(x), dim=-1):
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(decoder(z), x.dim() - 1), obs=x)
        return z

    @pyro_method
    def guide(self, x: torch.Tensor, dataset_size: Optional[int] = None) -> torch.Tensor:
        """q(z|x) on a minibatch; site ``"z"`` in plate ``"data"``."""
        n = self._check_batch(x, dataset_size)
        q = self.encoder_distribution(x)  # batch shape (B,) already: the plate scales (and broadcasts) it
        with pyro.plate("data", n, subsample=self._subsample(x), dim=-1):
            return pyro.sample("z", q)

    # ------------------------------------------------------------------ conveniences
    def _mean(self, params: Params) -> torch.Tensor:
        """E[x|z] from the decoder's output: probabilities for Bernoulli, the location for Laplace and
        Normal (of either form), the distribution's mean for a custom likelihood."""
        if self.likelihood_name == "custom":
            first = params[0] if isinstance(params, (tuple, list)) else params
            return self.likelihood(params, first.dim()).mean
        loc, _ = self._split(params)
        return torch.sigmoid(loc) if self.likelihood_name == "bernoulli" else loc

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple:
        """``(loc, scale)`` of q(z|x), each ``(B, D)``."""
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) for latents ``(..., D)``, shape ``(..., *obs)``: probabilities for Bernoulli,
        locations otherwise (also when the decoder predicts the scale)."""
        return self._mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the encoder's mean: ``decode(encode(x)[0])``, same shape as ``x``."""
        return self.decode(self.encoder(x)[0])

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` draws of the decoded mean E[x|z], z ~ p(z); shape ``(n, *obs)``."""
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if generator is not None:
            with seeded(generator):
                z = self.prior_distribution().sample((int(n),))
        else:
            z = self.prior_distribution().sample((int(n),))
        return self.decode(z)


_INSTANCES = itertools.count()


def _fixed_prior_types() -> tuple:
    """The prior modules of :mod:`pyro_decomp.priors` whose ``forward`` is a deterministic function of their
    tensors (no Pyro effects, no randomness, no user code)."""
    return (GaussianPrior, MixturePrior, SparsePrior, StudentTPrior)

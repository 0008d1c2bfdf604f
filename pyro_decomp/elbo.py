"""The decomposition objective of Mathieu, Rainforth, Siddharth & Teh (2019), as a Pyro ELBO.

Per data point (paper, eq. 7)::

    L_{alpha,beta}(x) = E_{q(z|x)}[log p(x|z)] - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z))

where q(z) = (1/N) sum_n q(z|x_n) is the aggregate encoding. beta controls the *overlap* of the encodings
and alpha the *alignment* of q(z) with the prior. Over a data set of N points, in Pyro's sum convention::

    L = sum_n (E_q[log p(x_n|z)] - beta KL_n) - alpha N D(q(z), p(z))

estimated on a minibatch of B points as (N/B) sum_b (...) - alpha N D_hat, with D_hat from
:mod:`pyro_decomp.divergences`. alpha therefore weighs D per data point, as in the paper's code.
:class:`DecompositionELBO` minimises -L.

N has one source: the latent site's scale s (which Pyro multiplies into every log-probability of the site)
times the size B of its data plate, N = s B. Each minibatch idiom of Pyro sets s = N/B:

* a subsampled plate, ``pyro.plate("data", N, subsample=idx)`` (``DecompVAE``'s ``dataset_size``): s = N/B;
* ``poutine.scale(model, N/B)`` and ``poutine.scale(guide, N/B)`` around a plate of size B: s = N/B.

The model's and the guide's latent site must carry the same scale (otherwise N is not defined and the
loss is refused), and a non-scalar scale is refused.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Dict, Iterable, Union

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from torch.distributions import kl_divergence

from pyro_decomp._pyro_compat import (
    Messenger,
    check_if_enumerated,
    check_model_guide_match,
    check_site_shape,
    is_validation_enabled,
    scale_and_mask,
    site_is_subsample,
    torch_item,
    unwrap,
    warn_if_nan,
)
from pyro_decomp.divergences import build_divergence, has_learnable_params

__all__ = ["DecompositionELBO", "LATENT_FLAG"]

_PARTICLE_PLATE = "num_particles_vectorized"

#: The key of a sample site's ``infer`` dict that marks it as a latent site of the decomposition:
#: ``pyro.sample("latent", dist.Normal(loc, scale).to_event(1), infer={"decomposition": True})``.
LATENT_FLAG = "decomposition"
_DEFAULT_SITE = "z"


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _log_prob_sum(site) -> torch.Tensor:
    """The site's log-probability with its plate scale and mask applied, summed (as Pyro's traces do)."""
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"], site["mask"]).sum()


def _scale(site) -> float:
    scale = site["scale"]
    if torch.is_tensor(scale):
        if scale.numel() != 1:
            raise ValueError(
                f"latent site {site['name']!r} has a scale of shape {tuple(scale.shape)}; the data-set "
                "size N that weighs alpha * D is read from a scalar scale (a subsampled plate or "
                "poutine.scale)"
            )
        scale = scale.item()
    return float(scale)


def _data_size(model_site, guide_site) -> float:
    """N = s B: the latent site's scale s times the size B of its data plate (the plate at ``dim=-1``).

    With a subsampled plate and no other scale, s = full_size / B and N is ``full_size`` exactly."""
    name = guide_site["name"]
    frame = next(
        (f for f in guide_site["cond_indep_stack"] if f.dim == -1 and f.name != _PARTICLE_PLATE), None
    )
    if frame is None:
        raise ValueError(
            f"latent site {name!r} must be sampled inside a pyro.plate over the data points at dim=-1, so "
            "that its value has shape (..., B, D); found plates "
            f"{[(f.name, f.dim) for f in guide_site['cond_indep_stack']]}"
        )
    s_model, s_guide = _scale(model_site), _scale(guide_site)
    if s_model != s_guide:
        raise ValueError(
            f"latent site {name!r} is scaled by {s_model:g} in the model but {s_guide:g} in the guide, so "
            "the data-set size N that weighs alpha * D is not defined; scale both alike "
            "(poutine.scale(model, N/B) and poutine.scale(guide, N/B)) or use a subsampled "
            "pyro.plate('data', N, subsample=...)"
        )
    full = frame.full_size if frame.full_size is not None else frame.size
    if s_guide == full / frame.size:
        return int(full)
    return s_guide * frame.size


def _innermost(d):
    """The distribution under any ``Independent``, ``Expanded`` or ``Masked`` wrappers of ``d``."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        d = d.base_dist
    return d


def _estimator_flag(divergence, flag: str):
    """``divergence.<flag>`` (looking through wrappers that keep the estimator as ``inner``), or ``None``."""
    while divergence is not None:
        if hasattr(divergence, flag):
            return getattr(divergence, flag)
        divergence = getattr(divergence, "inner", None)
    return None


class _Marks(Messenger):
    """Records the model's sample sites whose own ``infer`` dict marks them for the decomposition, before
    ``poutine.replay`` replaces that dict with the guide's."""

    def __init__(self):
        super().__init__()
        self.names = []

    def _pyro_sample(self, msg) -> None:
        if (msg.get("infer") or {}).get(LATENT_FLAG):
            self.names.append(msg["name"])


def _cuda_devices(trace) -> list:
    """The CUDA devices of a trace's sample values, whose generators a forked random state must cover."""
    return sorted(
        {
            site["value"].device.index or 0
            for site in trace.nodes.values()
            if site["type"] == "sample" and torch.is_tensor(site["value"]) and site["value"].is_cuda
        }
    )


def _divergence_name(divergence) -> str:
    """The estimator's name (``"mmd"``, ``"inclusive-kl"``, ...) for messages, else its repr."""
    name = _estimator_flag(divergence, "name")
    return repr(name if isinstance(name, str) else divergence)


def _check_site_shapes(trace, max_plate_nesting) -> None:
    """Pyro's ``check_site_shape`` at every sample site, as ``Trace_ELBO`` makes it under validation, on the
    shape that ``log_prob`` would have (the value's batch dims broadcast against the batch shape), without
    computing log-probabilities that the loss does not need."""
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        fn, value = site["fn"], site["value"]
        event_dim = len(fn.event_shape)
        value_batch = value.shape[: value.dim() - event_dim] if torch.is_tensor(value) else ()
        shape = torch.broadcast_shapes(value_batch, fn.batch_shape)
        check_site_shape(dict(site, log_prob=torch.zeros(()).expand(shape)), max_plate_nesting)


class DecompositionELBO(Trace_ELBO):
    """Loss ``-[sum_n (E_q log p(x_n|z) - beta KL(q(z|x_n) || p(z))) - alpha N D_hat(q(z), p(z))]``.

    A :class:`~pyro.infer.Trace_ELBO` for ``pyro.infer.SVI``; ``loss``, ``loss_and_grads`` and
    ``differentiable_loss`` share :meth:`_differentiable_loss_particle`. At each latent site of the
    decomposition (named in ``latent_sites``, or marked in the model or guide with
    ``infer={"decomposition": True}``; model and guide must both sample it, reparameterised, inside the
    data plate):

    * the KL term is ``kl_divergence(q, p)`` when ``analytic_kl`` is true and torch/Pyro registers a closed
      form for the (guide, prior) pair, and otherwise the Monte Carlo estimate ``log q(z|x) - log p(z)`` on
      the guide's sample; either way scaled by the plate (N/B) and weighted by ``beta``. beta KL =
      -beta H[q(z|x)] - beta E_q[log p(z)]: a beta-scaled entropy plus a beta-scaled cross-entropy;
    * the divergence ``D_hat = divergence(z, q, p)`` is computed on the guide's samples ``z``
      (``(..., B, D)``, with a leading particle dim under ``vectorize_particles``), the guide distribution
      ``q`` and the model site's prior ``p`` (batch shape ``(..., B)``, from which the estimators draw B
      fresh samples), and enters as ``alpha * N * D_hat`` with N = s B, the site's scale times the size of
      its data plate (the module docstring lists the minibatch idioms).

    Observed sites contribute their full (plate-scaled) log-likelihood, unweighted; other latent sites the
    plain ELBO terms ``log p - log q``. With ``beta=1, alpha=0`` the loss and its gradients equal
    :class:`~pyro.infer.TraceMeanField_ELBO`'s (closed-form KL) or, with ``analytic_kl=False``,
    :class:`~pyro.infer.Trace_ELBO`'s.

    The inclusive and exclusive KL estimators need the guide site's distribution to be the encoder density
    q(z|x_b) (an amortised guide such as :class:`~pyro_decomp.vae.DecompVAE`'s); with auto-guides, whose
    sites are ``Delta`` distributions, only MMD (which uses the samples alone) is meaningful. Masks are
    applied to the KL and likelihood terms, not to the divergence.

    :param float beta: weight of the KL term (overlap); ``beta=1`` is the ELBO.
    :param float alpha: weight of the divergence per data point (alignment). With ``alpha=0`` the divergence
        is not computed in the loss.
    :param divergence: ``"mmd"``, ``"inclusive-kl"``, ``"exclusive-kl"`` (and the variants accepted by
        :func:`~pyro_decomp.divergences.build_divergence`) or an estimator ``est(z, q, prior) -> scalar``.
    :param latent_sites: name or names of the latent sites that the beta and alpha terms act on, in
        addition to any site marked ``infer={"decomposition": True}``. ``None`` (default): the marked
        sites, or ``"z"`` when no site is marked.
    :param bool analytic_kl: use a registered closed-form KL when there is one.
    :param trace_elbo_options: keyword arguments of :class:`~pyro.infer.Trace_ELBO` (``num_particles``,
        ``vectorize_particles``, ``max_plate_nesting``, ...).

    With ``beta=1, alpha=0`` on the same random draws the loss is Pyro's own:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer import TraceMeanField_ELBO
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.7).to_event(1))
    >>> x = torch.linspace(-1, 1, 16).reshape(8, 2)
    >>> pyro.set_rng_seed(0); ours = DecompositionELBO(beta=1.0, alpha=0.0).loss(model, guide, x)
    >>> pyro.set_rng_seed(0); pyros = TraceMeanField_ELBO().loss(model, guide, x)
    >>> abs(ours - pyros) < 1e-4 * abs(pyros)
    True
    >>> elbo = DecompositionELBO(beta=0.0, alpha=1.0, divergence="inclusive-kl")
    >>> parts = elbo.loss_components(model, guide, x)  # per point: reconstruction, kl, divergence, loss
    >>> {"reconstruction", "kl", "divergence", "loss"} <= set(parts)
    True

    Reference: E. Mathieu, T. Rainforth, N. Siddharth, Y. W. Teh, "Disentangling Disentanglement in
    Variational Autoencoders", ICML 2019.
    """

    def __init__(
        self,
        beta: float = 1.0,
        alpha: float = 0.0,
        divergence: Union[str, Callable] = "mmd",
        latent_sites: Union[None, str, Iterable[str]] = None,
        analytic_kl: bool = True,
        **trace_elbo_options,
    ):
        super().__init__(**trace_elbo_options)
        self.beta = beta
        self.alpha = alpha
        self.divergence = build_divergence(divergence)
        if isinstance(latent_sites, str):
            latent_sites = (latent_sites,)
        if latent_sites is not None:
            latent_sites = tuple(latent_sites)
            if not latent_sites or not all(isinstance(s, str) and s for s in latent_sites):
                raise ValueError(
                    "latent_sites must be None, a site name or a non-empty sequence of them, got "
                    f"{latent_sites!r}"
                )
        self.latent_sites = latent_sites
        self.analytic_kl = bool(analytic_kl)
        self.last_components: Dict[str, float] = {}  # of the last loss_and_grads call
        self._step_components = None

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _check_weight("beta", value)

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = _check_weight("alpha", value)

    def __repr__(self) -> str:
        return (
            f"DecompositionELBO(beta={self.beta}, alpha={self.alpha}, divergence={self.divergence!r}, "
            f"latent_sites={self.latent_sites}, analytic_kl={self.analytic_kl}, "
            f"num_particles={self.num_particles}, vectorize_particles={self.vectorize_particles})"
        )

    # ------------------------------------------------------------------------------------------ traces
    def _get_trace(self, model, guide, args, kwargs):
        """Run the guide and the model against it, with the checks of ``Trace_ELBO`` under validation.
        Log-probabilities are left to the loss, which computes only the terms it needs (none at sites whose
        KL has a closed form)."""
        unwrapped = unwrap(guide)
        if isinstance(unwrapped, Messenger):
            # a GuideMessenger (e.g. AutoNormalMessenger) runs the model itself
            guide(*args, **kwargs)
            model_trace, guide_trace = unwrapped.get_traces()
        else:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            marks = _Marks()
            model_trace = poutine.trace(poutine.replay(marks(model), trace=guide_trace)).get_trace(
                *args, **kwargs
            )
            for name in marks.names:  # replay hands the model's sites the guide's infer dicts
                site = model_trace.nodes[name]
                site["infer"] = {**site["infer"], LATENT_FLAG: True}
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            _check_site_shapes(model_trace, self.max_plate_nesting)
            _check_site_shapes(guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        self._latent_names(model_trace, guide_trace)
        return model_trace, guide_trace

    def _latent_names(self, model_trace, guide_trace) -> tuple:
        """The latent sites of the decomposition: ``latent_sites`` and the sites marked with
        ``infer={"decomposition": True}`` in the model or the guide (``"z"`` when there are neither)."""
        marked = [
            name
            for tr in (model_trace, guide_trace)
            for name, site in tr.nodes.items()
            if site["type"] == "sample" and (site.get("infer") or {}).get(LATENT_FLAG)
        ]
        names = tuple(self.latent_sites or ()) + tuple(dict.fromkeys(n for n in marked))
        names = tuple(dict.fromkeys(names)) or (_DEFAULT_SITE,)
        for name in names:
            for role, tr in (("model", model_trace), ("guide", guide_trace)):
                site = tr.nodes.get(name)
                if site is None or site["type"] != "sample" or site["is_observed"]:
                    latents = [
                        n
                        for n, s in tr.nodes.items()
                        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
                    ]
                    how = "" if self.latent_sites else " (the default when no site is named or marked)"
                    raise ValueError(
                        f"latent site {name!r}{how} is not a latent sample site of the {role}; its latent "
                        f"sites are {latents}: name yours with DecompositionELBO(latent_sites=...) or mark "
                        f"it with pyro.sample(name, fn, infer={{{LATENT_FLAG!r}: True}})"
                    )
        return names

    def _check_divergence_inputs(self, name, model_site, guide_site) -> None:
        """Refuse, by name, a guide site without a density under an estimator that needs one, and a
        learnable prior without ``rsample`` under an estimator that uses the prior's samples only."""
        q = _innermost(guide_site["fn"])
        divergence = _divergence_name(self.divergence)
        if isinstance(q, dist.Delta) and _estimator_flag(self.divergence, "needs_encoder_density"):
            raise ValueError(
                f"the guide samples latent site {name!r} from a Delta distribution (as AutoDelta, "
                "AutoNormal, AutoDiagonalNormal and other auto-guides do), which has no density q(z|x) for "
                f"the divergence {divergence}; use divergence='mmd' (or 'mmd-imq-full', 'mmd-rbf'), which "
                "needs samples only, or a guide that samples the site from its encoder distribution"
            )
        prior = model_site["fn"]
        if (
            self.alpha != 0.0
            and torch.is_grad_enabled()
            and _estimator_flag(self.divergence, "differentiates_log_prior") is False
            and not prior.has_rsample
            and has_learnable_params(prior)
        ):
            raise ValueError(
                f"the prior of latent site {name!r}, {type(_innermost(prior)).__name__}, has learnable "
                f"parameters but no rsample, so the divergence {divergence}, which uses prior samples only, "
                "cannot train them; use divergence='inclusive-kl' or 'exclusive-kl' (they differentiate "
                "log p(z)), or a prior with a pathwise sample (for Gaussian mixtures "
                "pyro_decomp.gaussian_mixture or MixturePrior)"
            )

    @property
    def _particles_per_trace(self) -> int:
        return self.num_particles if self.vectorize_particles else 1

    def _kl_sum(self, model_site, guide_site) -> torch.Tensor:
        """Plate-scaled sum of KL(q(z|x) || p(z)) over the site's batch: closed form or Monte Carlo."""
        q, p = guide_site["fn"], model_site["fn"]
        if self.analytic_kl:
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                kl = None
            if kl is not None:
                kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
                if not torch.is_tensor(kl):
                    return kl * q.batch_shape.numel()
                if kl.shape != q.batch_shape:
                    kl = kl.expand(q.batch_shape)
                return kl.sum()
        return _log_prob_sum(guide_site) - _log_prob_sum(model_site)

    def _terms(
        self, model_trace, guide_trace, with_divergence: bool, with_kl: bool = True
    ) -> Dict[str, object]:
        """The loss's parts for one trace pair (each summed over the particles it holds):

        ``reconstruction`` (observed log-likelihood), ``kl`` (latent sites' KL), ``other_kl`` (log q - log p
        at other latent and auxiliary sites), ``weighted_divergence`` (sum over latent sites of
        particles * N * D_hat), ``divergence`` (sum over latent sites of D_hat averaged over particles),
        ``n`` (the data size of the first latent site). Without ``with_kl`` (beta = 0) the KL is left at 0.
        """
        reconstruction, kl, other_kl = 0.0, 0.0, 0.0
        weighted_divergence, divergence, n_data = 0.0, 0.0, None
        latent_names = self._latent_names(model_trace, guide_trace)
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                reconstruction = reconstruction + _log_prob_sum(site)
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None:
                raise ValueError(f"model latent site {name!r} has no guide site")
            if not guide_site["fn"].has_rsample:
                raise ValueError(
                    f"DecompositionELBO needs reparameterised guide sites, but {name!r} has "
                    f"{type(guide_site['fn']).__name__}, which has no rsample"
                )
            if name not in latent_names:
                other_kl = other_kl + _log_prob_sum(guide_site) - _log_prob_sum(site)
                continue
            if with_kl:
                kl = kl + self._kl_sum(site, guide_site)
            if with_divergence:
                n = _data_size(site, guide_site)
                n_data = n if n_data is None else n_data
                if len(guide_site["fn"].event_shape) != 1:
                    raise ValueError(
                        f"latent site {name!r} must have event_shape (D,) for the divergence, got "
                        f"{tuple(guide_site['fn'].event_shape)}"
                    )
                self._check_divergence_inputs(name, site, guide_site)
                d_hat = self.divergence(guide_site["value"], guide_site["fn"], site["fn"])
                weighted_divergence = weighted_divergence + (self._particles_per_trace * n) * d_hat
                divergence = divergence + d_hat
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if not site_is_subsample(guide_site):
                    other_kl = other_kl + _log_prob_sum(guide_site)
        return {
            "reconstruction": reconstruction,
            "kl": kl,
            "other_kl": other_kl,
            "weighted_divergence": weighted_divergence,
            "divergence": divergence,
            "n": n_data,
        }

    def _loss_from_terms(self, terms):
        elbo = terms["reconstruction"] - self.beta * terms["kl"] - terms["other_kl"]
        loss = -elbo
        if self.alpha != 0.0:
            loss = loss + self.alpha * terms["weighted_divergence"]
        return loss

    def _components_of(self, terms) -> Dict[str, float]:
        """The per-point loss components of one trace pair's ``terms`` (see :meth:`loss_components`)."""
        n = terms["n"]
        elbo = terms["reconstruction"] - self.beta * terms["kl"] - terms["other_kl"]
        return {
            "reconstruction": torch_item(terms["reconstruction"]) / n,
            "kl": torch_item(terms["kl"]) / n,
            "other_kl": torch_item(terms["other_kl"]) / n,
            "divergence": torch_item(terms["divergence"]) * self._particles_per_trace,
            "loss": (torch_item(-elbo) + self.alpha * torch_item(terms["weighted_divergence"])) / n,
        }

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        terms = self._terms(
            model_trace, guide_trace, with_divergence=self.alpha != 0.0, with_kl=self.beta != 0.0
        )
        surrogate_loss = self._loss_from_terms(terms)
        if self._step_components is not None:
            self._record_components(model_trace, guide_trace, terms)
        return torch_item(surrogate_loss), surrogate_loss

    def _record_components(self, model_trace, guide_trace, terms) -> None:
        """Add one trace pair's loss components to those of the step in progress, from the traces that the
        step differentiates: no network is run again. A term that the loss leaves out (the divergence at
        alpha = 0, the KL at beta = 0) is computed without gradients, its draws from a forked generator so
        that the training run is the same with or without the record."""
        with torch.no_grad():
            terms = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in terms.items()}
            if self.alpha == 0.0 or self.beta == 0.0:
                # the divergence draws from the prior, and a KL registered for the pair (q, p) may draw
                # too (a Monte Carlo one): what loss_components would draw next, on a forked generator
                with torch.random.fork_rng(devices=_cuda_devices(guide_trace)):
                    full = self._terms(model_trace, guide_trace, with_divergence=self.alpha == 0.0)
                if self.alpha == 0.0:
                    terms = full
                else:
                    terms.update(kl=full["kl"])
            for key, value in self._components_of(terms).items():
                self._step_components[key] = self._step_components.get(key, 0.0) + value / self.num_particles

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """As :meth:`pyro.infer.Trace_ELBO.loss_and_grads`; also keeps the step's per-point loss components
        (averaged over ``num_particles``, the keys of :meth:`loss_components`) in :attr:`last_components`,
        computed from the traces that the step differentiates."""
        self._step_components = {}
        try:
            loss = super().loss_and_grads(model, guide, *args, **kwargs)
            self.last_components = self._step_components
        finally:
            self._step_components = None
        return loss

    # ------------------------------------------------------------------------------------------ API
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss -L as a float, averaged over ``num_particles``, computed without gradients."""
        loss = 0.0
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                loss_particle, _ = self._differentiable_loss_particle(model_trace, guide_trace)
                loss += loss_particle / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss_components(self, model, guide, *args, **kwargs) -> Dict[str, float]:
        """Per-data-point averages of the loss's parts, for logging (no gradients; the divergence is
        estimated even when ``alpha == 0``):

        * ``reconstruction``: E_q[log p(x|z)] per point (the plate-scaled log-likelihood divided by N);
        * ``kl``: KL(q(z|x) || p(z)) per point at the latent sites (not weighted by beta);
        * ``other_kl``: log q - log p per point at any other latent or auxiliary sites (0 for a DecompVAE);
        * ``divergence``: D_hat(q(z), p(z)) (summed over latent sites);
        * ``loss``: the loss divided by N, ``-(reconstruction - beta kl - other_kl) + alpha divergence``.

        N is the first latent site's data-set size (its scale times its data plate's size, see the module
        docstring), the same N that weighs alpha * D in the loss; all values average over ``num_particles``.
        """
        totals = dict.fromkeys(("reconstruction", "kl", "other_kl", "divergence", "loss"), 0.0)
        with torch.no_grad():
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                terms = self._terms(model_trace, guide_trace, with_divergence=True)
                for key, value in self._components_of(terms).items():
                    totals[key] += value
        return {key: value / self.num_particles for key, value in totals.items()}

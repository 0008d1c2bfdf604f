"""Prior modules for decomposition VAEs and a registry by name (Mathieu et al., 2019, §3 and §5).

The prior is where a decomposition VAE states the structure it wants the aggregate encoding q(z) to have.
Each class here is a :class:`~pyro.nn.PyroModule`; calling one returns a Pyro distribution with
``event_shape == (D,)`` and ``batch_shape == ()``, built from the module's current parameters, so a learnable
prior trains with the VAE when it is the VAE's ``prior`` (a submodule of :class:`~pyro_decomp.DecompVAE`).
Fixed tensors are buffers, so ``.to(device)`` moves them and ``state_dict()`` saves them.

========================  =======================================================  ===========================
prior                     p(z)                                                     ``scale`` is
========================  =======================================================  ===========================
:class:`GaussianPrior`    N(0, diag σ²), σ_d² = s·D·softmax(ℓ)_d                   s, the mean *variance*
:class:`StudentTPrior`    Π_d StudentT(z_d; ν, 0, σ)                               σ, the Student-t scale
:class:`MixturePrior`     Σ_k π_k N(z; μ_k, σ² I)                                  σ, a standard deviation
:class:`SparsePrior`      Π_d [γ N(z_d; 0, s²) + (1 − γ) N(z_d; 0, σ²)]            σ, the slab's std. dev.
:class:`SubspacePrior`    Π_i p_i(z_{B_i}) over consecutive blocks of coordinates  set per block
========================  =======================================================  ===========================

:func:`build_prior` builds any of them by name (the names are in :data:`PRIORS`); :func:`pinwheel_mixture`
is the paper's pinwheel prior, four components at (±1, 0), (0, ±1) with σ = √0.03.
"""

from __future__ import annotations

import inspect
import math
from numbers import Number
from typing import Iterable, Optional, Sequence, Union

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_decomp.distribution_prior import DistributionPrior
from pyro_decomp.distributions import IndependentSubspaces, SpikeAndSlab, gaussian_mixture

__all__ = [
    "PRIORS",
    "GaussianPrior",
    "StudentTPrior",
    "MixturePrior",
    "SparsePrior",
    "SubspacePrior",
    "build_prior",
    "pinwheel_mixture",
]

#: Names accepted by :func:`build_prior` (the CLI's ``--prior`` choices).
PRIORS = ("gaussian", "student-t", "mixture", "sparse", "subspaces", "pinwheel")

PINWHEEL_SCALE = math.sqrt(0.03)

TensorLike = Union[Number, torch.Tensor, Sequence[float]]


# ------------------------------------------------------------------------------------------ validation
def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, float)) or int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def _as_float_tensor(value, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a number or a tensor, got {value!r}") from e
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.detach().clone()


def _per_dim(value, name: str, dim: int) -> torch.Tensor:
    """A number or a tensor broadcastable to ``(dim,)``, as a float tensor of that shape (a copy)."""
    t = _as_float_tensor(value, name)
    try:
        return torch.broadcast_to(t, (dim,)).clone()
    except RuntimeError as e:
        raise ValueError(
            f"{name} must be a number or have shape ({dim},) for dim={dim}, got shape {tuple(t.shape)}"
        ) from e


def _check_positive(t: torch.Tensor, name: str, value) -> None:
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def _check_unit_interval(t: torch.Tensor, name: str, value) -> None:
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _principal_variances(data, dim: int) -> torch.Tensor:
    """The ``dim`` largest eigenvalues of the sample covariance of ``data`` (N, F), largest first."""
    x = torch.as_tensor(data)
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(
            "data for variance='pca' must be a tensor of shape (N, F) with N >= 2, "
            f"got shape {tuple(x.shape)}"
        )
    n, f = x.shape
    if f < dim:
        raise ValueError(f"variance='pca' needs data with at least dim={dim} features, got {f}")
    x = x.double()
    x = x - x.mean(0)
    if f <= n:
        variances = torch.linalg.eigvalsh(x.T @ x / (n - 1)).flip(0)
    else:
        variances = torch.linalg.svdvals(x) ** 2 / (n - 1)
    top = variances[:dim]
    # eigenvalues of a rank-deficient covariance come out as round-off around 0, not exactly 0
    if not bool((top > 1e-10 * variances[0]).all()):
        raise ValueError(
            f"variance='pca' needs {dim} positive principal variances, got {top.tolist()}; "
            "the data span fewer dimensions than dim"
        )
    return top.to(torch.get_default_dtype())


def _store(module: nn.Module, name: str, value: torch.Tensor, learn: bool) -> None:
    if learn:
        setattr(module, name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


# ------------------------------------------------------------------------------------------ prior modules
class GaussianPrior(PyroModule):
    r"""A zero-mean diagonal Gaussian prior N(0, diag σ²) with

    .. math:: \sigma_d^2 = s \cdot D \cdot \operatorname{softmax}(\ell)_d,

    so Σ_d σ_d² = D·s whatever ℓ. ℓ = 0 is the isotropic prior σ² = s; an anisotropic ℓ is what
    Mathieu et al. (2019, §5.1) use on dSprites to break the rotation invariance of the isotropic prior and
    favour axis-aligned factors.

    Calling the module returns ``Normal(0, σ).to_event(1)``, for which torch's closed-form
    KL(Normal ‖ Normal) applies against a diagonal-Normal encoder.

    :param dim: D, the latent dimension.
    :param variance: ``"iso"`` (ℓ = 0); ``"pca"`` (ℓ = log of the D largest principal variances of ``data``,
        largest first, so σ² is proportional to them); or a tensor of D positive variances v (ℓ = log v).
    :param scale: s, the mean per-dimension *variance* (not a standard deviation). Defaults to 1 for
        ``"iso"``/``"pca"`` and to mean(v) for a tensor, in which case σ² = v exactly; with an explicit
        ``scale`` a tensor v is rescaled to σ² = s·D·v / Σv.
    :param learn_variance: make ℓ a parameter (s stays fixed).
    :param data: ``(N, F)`` tensor with F ≥ D, required for ``"pca"``.
    """

    def __init__(
        self,
        dim: int,
        variance: Union[str, TensorLike] = "iso",
        scale: Optional[float] = None,
        learn_variance: bool = False,
        data: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        dim = _check_dim(dim)
        if isinstance(variance, str):
            if variance == "iso":
                logits = torch.zeros(dim)
            elif variance == "pca":
                if data is None:
                    raise ValueError("variance='pca' needs data: a tensor of shape (N, F) with F >= dim")
                logits = _principal_variances(data, dim).log()
            else:
                raise ValueError(
                    f"variance must be 'iso', 'pca' or a tensor of {dim} variances, got {variance!r}"
                )
            default_scale = 1.0
        else:
            v = _as_float_tensor(variance, "variance")
            if v.shape != (dim,):
                raise ValueError(
                    f"a variance tensor must have shape ({dim},) for dim={dim}, got {variance!r}"
                )
            _check_positive(v, "variance", variance)
            logits = v.log()
            default_scale = float(v.mean())
        s = _as_float_tensor(default_scale if scale is None else scale, "scale")
        if s.dim() != 0:
            raise ValueError(f"scale must be a number, got {scale!r}")
        _check_positive(s, "scale", scale)
        self.dim = dim
        self.register_buffer("mean_variance", s)
        _store(self, "logits", logits, learn_variance)

    @property
    def variance(self) -> torch.Tensor:
        """σ², shape ``(D,)``."""
        return self.mean_variance * self.dim * torch.softmax(self.logits, -1)

    def forward(self) -> dist.Distribution:
        var = self.variance
        return dist.Normal(torch.zeros_like(var), var.sqrt()).to_event(1)


class StudentTPrior(PyroModule):
    r"""A product of Student-t distributions, p(z) = Π_d StudentT(z_d; ν, 0, σ_d), heavy-tailed and
    axis-aligned (Mathieu et al., 2019, §5.1 use ν = 9 on dSprites).

    :param dim: D.
    :param df: degrees of freedom ν > 0 (a number or ``(D,)``); the variance σ²ν/(ν − 2) is finite for ν > 2.
    :param scale: the Student-t scale σ > 0 (a number or ``(D,)``).
    """

    def __init__(self, dim: int, df: TensorLike = 9.0, scale: TensorLike = 1.0):
        super().__init__()
        dim = _check_dim(dim)
        df_t, scale_t = _per_dim(df, "df", dim), _per_dim(scale, "scale", dim)
        _check_positive(df_t, "df", df)
        _check_positive(scale_t, "scale", scale)
        self.dim = dim
        self.register_buffer("df", df_t)
        self.register_buffer("scale", scale_t)

    def forward(self) -> dist.Distribution:
        return dist.StudentT(self.df, torch.zeros_like(self.scale), self.scale).to_event(1)


class MixturePrior(PyroModule):
    r"""A Gaussian mixture with a shared isotropic scale,

    .. math:: p(z) = \sum_{k=1}^K \pi_k\, \mathcal{N}(z; \mu_k, \sigma^2 I),

    the clustered prior of Mathieu et al. (2019, §5.2) (pinwheel: :func:`pinwheel_mixture`). The paper's
    table writes the shared scale as √s; here ``scale`` is that standard deviation σ = √s.

    For D ≥ 2 the distribution has a pathwise ``rsample``
    (:class:`~pyro_decomp.distributions.SharedScaleGaussianMixture`), so learnt locations, scale and weights
    receive gradients through prior samples as well as through ``log_prob``; that derivative needs distinct
    locations. For D = 1 it is a ``MixtureSameFamily``, which has no ``rsample``.

    :param locs: μ, shape ``(K, D)``.
    :param scale: σ > 0, the shared standard deviation.
    :param weights: π, shape ``(K,)``, non-negative, normalised here (uniform by default).
    :param learn: ``True`` to learn locations, scale and weights; ``False``; or a subset of
        ``{"locs", "scale", "weights"}``. Learnt weights must be positive.
    """

    LEARNABLE = ("locs", "scale", "weights")

    def __init__(
        self,
        locs: TensorLike,
        scale: float = PINWHEEL_SCALE,
        weights: Optional[TensorLike] = None,
        learn: Union[bool, Iterable[str]] = False,
    ):
        super().__init__()
        locs_t = _as_float_tensor(locs, "locs")
        if locs_t.dim() != 2 or locs_t.shape[0] < 1 or locs_t.shape[1] < 1:
            raise ValueError(f"locs must have shape (K, D) with K, D >= 1, got shape {tuple(locs_t.shape)}")
        if not bool(torch.isfinite(locs_t).all()):
            raise ValueError(f"locs must be finite, got {locs!r}")
        k, d = locs_t.shape
        scale_t = _as_float_tensor(scale, "scale")
        if scale_t.dim() != 0:
            raise ValueError(f"scale must be a number (one standard deviation shared by all), got {scale!r}")
        _check_positive(scale_t, "scale", scale)
        if weights is None:
            weights_t = torch.full((k,), 1.0 / k)
        else:
            weights_t = _as_float_tensor(weights, "weights")
            if weights_t.shape != (k,):
                raise ValueError(f"weights must have shape ({k},) for {k} components, got {weights!r}")
            if (
                not bool(torch.isfinite(weights_t).all())
                or bool((weights_t < 0).any())
                or weights_t.sum() <= 0
            ):
                raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights!r}")
            weights_t = weights_t / weights_t.sum()
        if learn is True:
            learn = set(self.LEARNABLE)
        elif learn is False:
            learn = set()
        else:
            learn = {learn} if isinstance(learn, str) else set(learn)
            unknown = learn - set(self.LEARNABLE)
            if unknown:
                raise ValueError(
                    f"learn must be a bool or a subset of {self.LEARNABLE}, got {sorted(unknown)}"
                )
        if "weights" in learn and bool((weights_t == 0).any()):
            raise ValueError(f"learnt weights must be > 0 (their logits are the parameters), got {weights!r}")
        self.dim, self.num_components = d, k
        _store(self, "locs", locs_t, "locs" in learn)
        _store(self, "log_scale", scale_t.log(), "scale" in learn)
        _store(self, "logits", weights_t.log(), "weights" in learn)

    @property
    def scale(self) -> torch.Tensor:
        """σ, the shared standard deviation (a 0-dim tensor)."""
        return self.log_scale.exp()

    @property
    def weights(self) -> torch.Tensor:
        """π, shape ``(K,)``."""
        return torch.softmax(self.logits, -1)

    def forward(self) -> dist.Distribution:
        return gaussian_mixture(self.locs, self.log_scale.exp(), logits=self.logits)


class SparsePrior(PyroModule):
    r"""The sparse spike-and-slab prior of Mathieu et al. (2019, §5.3),

    .. math::

        p(z) = \prod_d \left[\gamma\, \mathcal{N}(z_d; 0, s^2)
               + (1 - \gamma)\, \mathcal{N}(z_d; 0, \sigma^2)\right],

    with γ = 0.8 and s = 0.05 in the paper's Fashion-MNIST experiment.

    :param dim: D.
    :param gamma: spike weight γ in [0, 1] (a number or ``(D,)``).
    :param spike_scale: s > 0, the spike's standard deviation.
    :param scale: σ > 0, the slab's standard deviation (a number or ``(D,)``).
    """

    def __init__(
        self, dim: int, gamma: TensorLike = 0.8, spike_scale: TensorLike = 0.05, scale: TensorLike = 1.0
    ):
        super().__init__()
        dim = _check_dim(dim)
        gamma_t = _per_dim(gamma, "gamma", dim)
        _check_unit_interval(gamma_t, "gamma", gamma)
        spike_t, scale_t = _per_dim(spike_scale, "spike_scale", dim), _per_dim(scale, "scale", dim)
        _check_positive(spike_t, "spike_scale", spike_scale)
        _check_positive(scale_t, "scale", scale)
        self.dim = dim
        self.register_buffer("gamma", gamma_t)
        self.register_buffer("spike_scale", spike_t)
        self.register_buffer("scale", scale_t)

    def forward(self) -> dist.Distribution:
        zero = torch.zeros_like(self.scale)
        return SpikeAndSlab(self.gamma, zero, self.scale, self.spike_scale).to_event(1)


class SubspacePrior(PyroModule):
    r"""Independent subspaces: p(z) = Π_i p_i(z_{B_i}) over consecutive blocks B_1, B_2, ... of coordinates,
    each block with its own prior (see :class:`~pyro_decomp.distributions.IndependentSubspaces`).

    :param blocks: a non-empty sequence of prior modules (modules that return a distribution with
        ``event_shape == (D_i,)`` and ``batch_shape == ()``) or such distributions. Modules are kept in
        an ``nn.ModuleList`` (``block_modules``), so ``.to(device)`` and ``state_dict()`` reach them and,
        inside a ``PyroModule`` such as :class:`~pyro_decomp.DecompVAE`, their parameters are registered with
        ``pyro.module`` (names such as ``prior.block_modules$$$0.locs``) and train with the model. A
        distribution is kept there too, held in a
        :class:`~pyro_decomp.distribution_prior.DistributionPrior`: it follows ``.to(device)``, and what in it
        requires grad trains.

    A ``PyroModule`` block is evaluated through its ``forward``, not its own ``PyroModule`` context, so its
    parameters are recorded once, under this module's name, and a prior may be called on its own before it
    joins a model.
    """

    def __init__(self, blocks: Sequence[Union[nn.Module, dist.Distribution]]):
        super().__init__()
        blocks = list(blocks)
        if not blocks:
            raise ValueError("SubspacePrior needs at least one block, got an empty sequence")
        modules, entries = [], []
        for i, block in enumerate(blocks):
            if isinstance(block, torch.distributions.Distribution):
                block = DistributionPrior(block)
            if isinstance(block, nn.Module):
                entries.append(len(modules))
                modules.append(block)
            else:
                raise ValueError(
                    f"block {i} must be a prior module or a distribution, got {type(block).__name__}"
                )
        self.block_modules = nn.ModuleList(modules)
        self._entries = entries
        parts = self._parts()
        for i, d in enumerate(parts):
            if not isinstance(d, torch.distributions.Distribution):
                raise ValueError(f"block {i} must return a distribution, got {type(d).__name__}")
            if len(d.event_shape) != 1 or d.batch_shape != ():
                raise ValueError(
                    f"block {i} must give a distribution with event_shape (D_{i},) and batch_shape (), got "
                    f"event_shape {tuple(d.event_shape)} and batch_shape {tuple(d.batch_shape)}"
                )
        self.sizes = tuple(int(d.event_shape[0]) for d in parts)
        self.dim = sum(self.sizes)

    def _parts(self):
        parts = []
        for e in self._entries:
            if isinstance(e, torch.distributions.Distribution):
                parts.append(e)
            else:
                block = self.block_modules[e]
                parts.append(block.forward() if isinstance(block, PyroModule) else block())
        return parts

    def forward(self) -> dist.Distribution:
        return IndependentSubspaces(self._parts())


# ------------------------------------------------------------------------------------------ registry
def _signed_axes(dim: int) -> torch.Tensor:
    """The 2·dim points ±e_d: rows e_1, ..., e_D, −e_1, ..., −e_D."""
    eye = torch.eye(dim)
    return torch.cat([eye, -eye])


def pinwheel_mixture(learn: Union[bool, Iterable[str]] = False) -> MixturePrior:
    """The pinwheel prior of Mathieu et al. (2019, §5.2): four equally weighted components at (1, 0),
    (0, 1), (−1, 0), (0, −1) with standard deviation σ = √0.03. Same as ``build_prior("pinwheel", 2)``
    and ``build_prior("mixture", 2)``.

    >>> prior = pinwheel_mixture()  # a module; calling it gives the distribution
    >>> p = prior()
    >>> tuple(p.event_shape), tuple(p.sample((5,)).shape)
    ((2,), (5, 2))
    >>> bool(p.log_prob(torch.tensor([1.0, 0.0])) > p.log_prob(torch.tensor([0.5, 0.5])))  # on a mode
    True
    """
    return MixturePrior(_signed_axes(2), PINWHEEL_SCALE, learn=learn)


def _build_gaussian(dim, variance="iso", scale=None, learn_variance=False, data=None):
    return GaussianPrior(dim, variance=variance, scale=scale, learn_variance=learn_variance, data=data)


def _build_student_t(dim, df=9.0, scale=1.0):
    return StudentTPrior(dim, df=df, scale=scale)


def _build_mixture(dim, locs=None, scale=PINWHEEL_SCALE, weights=None, learn=False):
    if locs is None:
        locs = _signed_axes(dim)
    else:
        locs_t = _as_float_tensor(locs, "locs")
        if locs_t.dim() != 2 or locs_t.shape[-1] != dim:
            raise ValueError(
                f"mixture locs must have shape (K, {dim}) for dim={dim}, got shape {tuple(locs_t.shape)}"
            )
    return MixturePrior(locs, scale=scale, weights=weights, learn=learn)


def _build_pinwheel(dim, learn=False):
    if dim != 2:
        raise ValueError(f"the pinwheel prior is 2-dimensional, got dim={dim}")
    return pinwheel_mixture(learn=learn)


def _build_sparse(dim, gamma=0.8, spike_scale=0.05, scale=1.0):
    return SparsePrior(dim, gamma=gamma, spike_scale=spike_scale, scale=scale)


def _parse_block(entry, i):
    if isinstance(entry, (nn.Module, torch.distributions.Distribution)):
        return entry
    if isinstance(entry, str):
        name, sep, size = entry.partition(":")
        if not sep:
            raise ValueError(f"block {i}: expected 'name:dim' such as 'gaussian:2', got {entry!r}")
        try:
            size = int(size)
        except ValueError:
            raise ValueError(f"block {i}: the dim in {entry!r} must be an integer") from None
        return build_prior(name.strip(), size)
    if isinstance(entry, dict):
        options = dict(entry)
        if "name" not in options or "dim" not in options:
            raise ValueError(f"block {i}: a dict block needs 'name' and 'dim' keys, got {sorted(options)}")
        return build_prior(options.pop("name"), options.pop("dim"), **options)
    if isinstance(entry, (tuple, list)) and len(entry) in (2, 3):
        options = dict(entry[2]) if len(entry) == 3 else {}
        return build_prior(entry[0], entry[1], **options)
    raise ValueError(
        f"block {i} must be a prior module, a distribution, 'name:dim', (name, dim[, options]) or a dict "
        f"with 'name' and 'dim', got {entry!r}"
    )


def _default_blocks(dim):
    blocks = [pinwheel_mixture() for _ in range(dim // 2)]
    if dim % 2:
        blocks.append(MixturePrior(_signed_axes(1), PINWHEEL_SCALE))
    return blocks


def _build_subspaces(dim, blocks=None):
    if blocks is None:
        blocks = _default_blocks(dim)
    elif isinstance(blocks, str):
        blocks = [b for b in blocks.split(",") if b.strip()]
    blocks = [_parse_block(b, i) for i, b in enumerate(blocks)]
    prior = SubspacePrior(blocks)
    if prior.dim != dim:
        raise ValueError(f"the blocks' dims {list(prior.sizes)} sum to {prior.dim}, not dim={dim}")
    return prior


_BUILDERS = {
    "gaussian": _build_gaussian,
    "student-t": _build_student_t,
    "mixture": _build_mixture,
    "sparse": _build_sparse,
    "subspaces": _build_subspaces,
    "pinwheel": _build_pinwheel,
}


def build_prior(name: str, dim: int, **options) -> PyroModule:
    """Build a prior module by name.

    ================  ==================================================================================
    name              options (defaults)
    ================  ==================================================================================
    ``gaussian``      ``variance="iso"`` (or ``"pca"`` with ``data``, or D variances), ``scale=None``,
                      ``learn_variance=False``, ``data=None`` -- see :class:`GaussianPrior`
    ``student-t``     ``df=9.0``, ``scale=1.0`` -- see :class:`StudentTPrior`
    ``mixture``       ``locs=None``, ``scale=√0.03``, ``weights=None``, ``learn=False``; without ``locs``,
                      2·D equally weighted components at ±e_d (for D = 2 the pinwheel prior)
    ``sparse``        ``gamma=0.8``, ``spike_scale=0.05``, ``scale=1.0`` -- see :class:`SparsePrior`
    ``subspaces``     ``blocks``: a sequence of prior modules, distributions, ``"name:dim"`` strings,
                      ``(name, dim[, options])`` tuples or ``{"name", "dim", **options}`` dicts, or one
                      string ``"gaussian:2,mixture:2"``; the block dims must sum to ``dim``. Without
                      ``blocks``: pinwheel mixtures on the coordinate pairs (1, 2), (3, 4), ... and,
                      for odd D, a two-component mixture at ±1 on the last coordinate
    ``pinwheel``      ``learn=False``; ``dim`` must be 2 -- :func:`pinwheel_mixture`
    ================  ==================================================================================

    :raises ValueError: for an unknown name (listing :data:`PRIORS`), an unknown option, or an invalid value.

    >>> build_prior("student-t", 4, df=5.0)().event_shape
    torch.Size([4])
    >>> build_prior("subspaces", 3, blocks="pinwheel:2,gaussian:1")().event_shape
    torch.Size([3])
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown prior {name!r}; expected one of {PRIORS}")
    dim = _check_dim(dim)
    builder = _BUILDERS[name]
    accepted = tuple(inspect.signature(builder).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for prior {name!r}; expected some of {accepted}")
    return builder(dim, **options)

"""From a :class:`~pyro_decomp.config.RunConfig` to the objects of a run: data, networks, prior and ELBO.

The objects are those of Mathieu et al. (2019): a :class:`~pyro_decomp.vae.DecompVAE` with the data set's
networks and likelihood, its prior p(z), and the :class:`~pyro_decomp.elbo.DecompositionELBO`

    L_{α,β} = Σ_n ( E_{q(z|x_n)}[log p(x_n|z)] − β KL(q(z|x_n) ‖ p(z)) ) − α N D(q(z), p(z)).

pinwheel → MLP with 100 hidden units and a Normal likelihood, 2-D latents, the 4-component mixture prior;
shapes/dsprites → 64×64 convolutional nets and a Bernoulli likelihood, 10-D latents; fashion-mnist → DCGAN
32×32 nets and a Laplace likelihood (scale 0.1), 50-D latents. For ground-truth data (shapes, dSprites) the
test set is the training set, on which the disentanglement metrics are defined; pinwheel's is an independent
draw; Fashion-MNIST's its test split.

One's own data (:mod:`pyro_decomp.data.sources`) are read from the recorded source, and what the config
leaves open is chosen from them (:func:`choose_from_data`): an MLP for vectors, the conv pair
(:class:`~pyro_decomp.nets.ConvEncoder`) for ``C x H x W`` images it takes; a Bernoulli likelihood for data
in [0, 1], a Normal one otherwise; D = 10 for images and min(10, max(2, P // 2)) for P-vectors (at most P).
:func:`build` records these choices and the data's source in the config (``presets``, ``data_source``), so
that ``config.json`` holds the final values and a reload reads the same data or refuses.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, TensorDataset

from pyro_decomp import nets
from pyro_decomp.config import DATASETS, RunConfig, check_network_options
from pyro_decomp.data import DSPRITES_FILENAME, DSprites, Shapes, fashion_mnist, pinwheel
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.data.sources import check_source, load_source, record_source
from pyro_decomp.distributed import GatheredDivergence
from pyro_decomp.divergences import build_divergence
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.priors import build_prior
from pyro_decomp.vae import DecompVAE

__all__ = ["build", "build_data", "build_networks", "build_prior_of", "build_elbo", "choose_from_data"]

PCA_POINTS = 10000  # training points whose principal variances set a "pca" prior


def build_data(config: RunConfig) -> Tuple[Dataset, Dataset]:
    """``(train_set, test_set)`` of ``config.dataset`` with ``config.data_options`` (one's own data from
    the recorded ``config.data_source`` when there is one)."""
    opts = dict(config.data_options)
    if config.dataset not in DATASETS:
        return load_source(config.dataset, opts, config.data_source)
    try:
        if config.dataset == "pinwheel":
            test_seed = opts.pop("test_seed", None)
            seed = opts.pop("seed", 0)
            x, y = pinwheel(seed=seed, **opts)
            xt, yt = pinwheel(seed=seed + 1 if test_seed is None else test_seed, **opts)
            return TensorDataset(x, y), TensorDataset(xt, yt)
        if config.dataset == "shapes":
            data = Shapes(root=config.data_root, **opts)
            return data, data
        if config.dataset == "dsprites":
            if config.data_root is None:
                raise ValueError(
                    f"the dsprites data set needs --data-root: the directory of {DSPRITES_FILENAME} "
                    "(add --data-options download=true to fetch it)"
                )
            data = DSprites(config.data_root, **opts)
            return data, data
        if config.data_root is None:
            raise ValueError(
                "the fashion-mnist data set needs --data-root: the directory that holds FashionMNIST/raw/ "
                "(add --data-options download=true to fetch it)"
            )
        return (
            fashion_mnist(config.data_root, train=True, **opts),
            fashion_mnist(config.data_root, train=False, **opts),
        )
    except TypeError as e:  # an option the data set does not take
        raise ValueError(f"bad data option for the {config.dataset} data set {sorted(opts)}: {e}") from None


def build_networks(config: RunConfig, obs_shape: Tuple[int, ...]):
    """``(encoder, decoder)`` of ``config.network`` for inputs of shape ``obs_shape``."""
    opts = dict(config.network_options)
    d = config.latent_dim
    if config.network == "mlp":
        hidden = tuple(opts.pop("hidden", (100,)))
        return nets.MLPEncoder(obs_shape, d, hidden=hidden), nets.MLPDecoder(
            d, obs_shape, hidden=hidden, **opts
        )
    check_network_options(config.network, opts)
    if config.network == "conv":
        if len(obs_shape) != 3:
            raise ValueError(f"network 'conv' takes images (C, H, W), but the data have shape {obs_shape}")
        try:
            return nets.ConvEncoder(obs_shape, d, **opts), nets.ConvDecoder(d, obs_shape, **opts)
        except TypeError as e:
            raise ValueError(f"bad network option for network 'conv' {sorted(opts)}: {e}") from None
    if config.network == "conv64":
        enc, dec = nets.ConvEncoder64(d, **opts), nets.ConvDecoder64(d, **opts)
    else:
        output = "logits" if config.likelihood == "bernoulli" else "sigmoid"
        enc, dec = nets.DCGANEncoder32(d, **opts), nets.DCGANDecoder32(d, output=output, **opts)
    if tuple(enc.in_shape) != tuple(obs_shape):
        raise ValueError(
            f"network {config.network!r} takes inputs of shape {tuple(enc.in_shape)}, but the "
            f"{config.dataset} data have shape {tuple(obs_shape)}"
        )
    return enc, dec


def build_prior_of(config: RunConfig, train_set: Dataset):
    """The prior module of ``config``; a ``variance="pca"`` Gaussian gets the training inputs' principal
    variances (of at most :data:`PCA_POINTS` points, a subset seeded by ``config.seed``)."""
    opts = dict(config.prior_options)
    if config.prior == "gaussian" and opts.get("variance") == "pca":
        index = subset_index(len(train_set), PCA_POINTS, torch.Generator().manual_seed(config.seed))
        x = take(train_set, index)[0]
        opts["data"] = x.reshape(len(x), -1).float()
    try:
        return build_prior(config.prior, config.latent_dim, **opts)
    except TypeError as e:
        raise ValueError(f"bad prior option for the {config.prior} prior {sorted(opts)}: {e}") from None


def build_elbo(config: RunConfig) -> DecompositionELBO:
    """The run's :class:`~pyro_decomp.elbo.DecompositionELBO` (its divergence gathered over processes when
    ``config.global_divergence``)."""
    divergence = build_divergence(config.divergence)
    if config.global_divergence:
        divergence = GatheredDivergence(divergence)
    return DecompositionELBO(
        beta=config.beta,
        alpha=config.alpha,
        divergence=divergence,
        analytic_kl=config.analytic_kl,
        num_particles=config.num_particles,
        vectorize_particles=config.num_particles > 1,
        max_plate_nesting=1,
    )


def _data_range(dataset: Dataset, chunk: int = 4096) -> Tuple[float, float]:
    """The smallest and largest input value over a data set, read ``chunk`` points at a time."""
    if isinstance(dataset, TensorDataset):
        x = dataset.tensors[0]
        return float(x.min()), float(x.max())
    lo, hi = float("inf"), float("-inf")
    for start in range(0, len(dataset), chunk):
        x = take(dataset, torch.arange(start, min(start + chunk, len(dataset))))[0]
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


def choose_from_data(
    config: RunConfig, train_set: Dataset, obs_shape: Tuple[int, ...], test_set: Optional[Dataset] = None
) -> None:
    """Fill the settings that one's own data leave open (``network``, ``likelihood``, ``latent_dim``)
    from their shape and range (over the training and test points), in place, recording each in
    ``config.presets`` as ``"data"``; and refuse a Bernoulli likelihood for data outside [0, 1]. Built-in
    data sets have all three set already."""
    own = config.dataset not in DATASETS or (config.data_source or {}).get("kind") == "memory"
    need_range = config.likelihood is None or (own and config.likelihood == "bernoulli")
    lo, hi = 0.0, 1.0
    if need_range:
        ranges = [_data_range(d) for d in (train_set, test_set) if d is not None and len(d)]
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    chosen = {}
    if config.network is None:
        fits = len(obs_shape) == 3
        if fits:
            try:
                nets.conv_halvings(obs_shape[1], obs_shape[2])
            except ValueError:
                fits = False
        chosen["network"] = "conv" if fits else "mlp"
    if config.likelihood is None:
        chosen["likelihood"] = "bernoulli" if 0.0 <= lo and hi <= 1.0 else "normal"
    if config.latent_dim is None:
        size = int(torch.tensor(obs_shape).prod())
        chosen["latent_dim"] = 10 if len(obs_shape) == 3 else min(size, 10, max(2, size // 2))
    for key, value in chosen.items():
        setattr(config, key, value)
        config.presets = {**(config.presets or {}), key: "data"}
    if config.likelihood == "bernoulli" and not (0.0 <= lo and hi <= 1.0):
        raise ValueError(
            f"the bernoulli likelihood needs data in [0, 1], but the {config.dataset} data range over "
            f"[{lo:.4g}, {hi:.4g}]; use likelihood normal or laplace"
        )


def build(config: RunConfig, data: Optional[Tuple[Dataset, Dataset]] = None):
    """Build ``(vae, elbo, train_set, test_set)`` for a run, as the paper sets up each data set.

    ``data``: a ``(train_set, test_set)`` pair to use instead of loading ``config.dataset`` (data held in
    memory, or a stand-in for a built-in data set); networks, prior and ELBO are still chosen by ``config``.
    Network initialisation draws from torch's global generator: seed it first for a reproducible build.

    The config is completed in place, so that the run records it: ``config.data_source`` gets the data's
    source (:func:`~pyro_decomp.data.sources.record_source`; ``"memory"`` when ``data`` is given) the first
    time, and later builds check the data against it
    (:func:`~pyro_decomp.data.sources.check_source`: a changed or vanished file, or in-memory data not
    passed again, is refused in one line); settings left open are chosen by :func:`choose_from_data`.
    """
    if config.data_source is None:
        config.data_source = record_source(config.dataset, data)
    else:
        check_source(config.dataset, config.data_source, data)
    train_set, test_set = build_data(config) if data is None else data
    if len(train_set) < 2:
        raise ValueError(f"the training set has {len(train_set)} points; at least 2 are needed")
    obs_shape = tuple(take(train_set, [0])[0].shape[1:])
    if len(test_set) and tuple(take(test_set, [0])[0].shape[1:]) != obs_shape:
        raise ValueError(
            f"the test points have shape {tuple(take(test_set, [0])[0].shape[1:])}, the training points "
            f"{obs_shape}"
        )
    choose_from_data(config, train_set, obs_shape, None if test_set is train_set else test_set)
    encoder, decoder = build_networks(config, obs_shape)
    prior = build_prior_of(config, train_set)
    vae = DecompVAE(
        encoder,
        decoder,
        prior,
        likelihood=config.likelihood,
        likelihood_scale=config.likelihood_scale,
        latent_dim=config.latent_dim,
        obs_shape=obs_shape,
    )
    return vae, build_elbo(config), train_set, test_set

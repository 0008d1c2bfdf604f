"""From a :class:`~pyro_decomp.config.RunConfig` to the objects of a run: data, networks, prior and ELBO.

The objects are those of Mathieu et al. (2019): a :class:`~pyro_decomp.vae.DecompVAE` with the data set's
networks and likelihood, its prior p(z), and the :class:`~pyro_decomp.elbo.DecompositionELBO`

    L_{α,β} = Σ_n ( E_{q(z|x_n)}[log p(x_n|z)] − β KL(q(z|x_n) ‖ p(z)) ) − α N D(q(z), p(z)).

pinwheel → MLP with 100 hidden units and a Normal likelihood, 2-D latents, the 4-component mixture prior;
shapes/dsprites → 64×64 convolutional nets and a Bernoulli likelihood, 10-D latents; fashion-mnist → DCGAN
32×32 nets and a Laplace likelihood (scale 0.1), 50-D latents. For ground-truth data (shapes, dSprites) the
test set is the training set, on which the disentanglement metrics are defined; pinwheel's is an independent
draw; Fashion-MNIST's its test split.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, TensorDataset

from pyro_decomp import nets
from pyro_decomp.config import RunConfig
from pyro_decomp.data import DSPRITES_FILENAME, DSprites, Shapes, fashion_mnist, pinwheel
from pyro_decomp.data.indexing import subset_index, take
from pyro_decomp.distributed import GatheredDivergence
from pyro_decomp.divergences import build_divergence
from pyro_decomp.elbo import DecompositionELBO
from pyro_decomp.priors import build_prior
from pyro_decomp.vae import DecompVAE

__all__ = ["build", "build_data", "build_networks", "build_prior_of", "build_elbo"]

PCA_POINTS = 10000  # training points whose principal variances set a "pca" prior


def build_data(config: RunConfig) -> Tuple[Dataset, Dataset]:
    """``(train_set, test_set)`` of ``config.dataset`` with ``config.data_options``."""
    opts = dict(config.data_options)
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


def build(config: RunConfig, data: Optional[Tuple[Dataset, Dataset]] = None):
    """Build ``(vae, elbo, train_set, test_set)`` for a run, as the paper sets up each data set.

    ``data``: a ``(train_set, test_set)`` pair to use instead of loading ``config.dataset`` (for data sets the
    builder does not know, such as a stand-in); networks, prior and ELBO are still chosen by ``config``.
    Network initialisation draws from torch's global generator: seed it first for a reproducible build.
    """
    train_set, test_set = build_data(config) if data is None else data
    if len(train_set) < 2:
        raise ValueError(f"the training set has {len(train_set)} points; at least 2 are needed")
    obs_shape = tuple(take(train_set, [0])[0].shape[1:])
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

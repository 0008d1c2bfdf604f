"""build: data, networks, prior and ELBO from a RunConfig, as the paper sets up each data set."""

import pyro
import pytest
import torch

from pyro_decomp import nets
from pyro_decomp.build import build, build_networks
from pyro_decomp.config import RunConfig


def test_build_follows_the_paper_per_data_set():
    pyro.set_rng_seed(0)
    vae, elbo, train_set, test_set = build(RunConfig(data_options={"num_per_class": 10}))
    assert isinstance(vae.encoder, nets.MLPEncoder) and vae.latent_dim == 2
    assert vae.likelihood_name == "normal" and len(train_set) == 40 and len(test_set) == 40
    assert not torch.equal(train_set.tensors[0], test_set.tensors[0])  # an independent held-out draw
    prior = vae.prior_distribution()
    assert prior.event_shape == (2,)
    # the pinwheel mixture: density maxima at (±1, 0), (0, ±1), equal by symmetry
    peaks = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    lp = prior.log_prob(peaks)
    assert torch.allclose(lp, lp[0].expand(4)) and bool((lp > prior.log_prob(torch.zeros(2))).all())
    assert (elbo.beta, elbo.alpha) == (0.0, 1.0)

    cfg = RunConfig(dataset="fashion-mnist")
    enc, dec = build_networks(cfg, (1, 32, 32))
    assert isinstance(enc, nets.DCGANEncoder32) and isinstance(dec, nets.DCGANDecoder32)
    assert (cfg.likelihood, cfg.likelihood_scale) == ("laplace", 0.1)
    with pytest.raises(ValueError, match="--data-root"):
        build(RunConfig(dataset="fashion-mnist"))
    with pytest.raises(ValueError, match="conv64"):
        build_networks(RunConfig(dataset="shapes"), (1, 32, 32))


def test_build_shapes_uses_conv_nets_and_bernoulli():
    cfg = RunConfig(
        dataset="shapes",
        data_options={
            "subsample": {"scale": 6, "orientation": 40, "position_x": 16, "position_y": 16},
            "cache": False,
        },
    )
    vae, _, train_set, test_set = build(cfg)
    assert isinstance(vae.encoder, nets.ConvEncoder64) and vae.latent_dim == 10
    assert vae.likelihood_name == "bernoulli" and test_set is train_set and len(train_set) == 12

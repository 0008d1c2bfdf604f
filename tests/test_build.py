"""build: data, networks, prior and ELBO from a RunConfig, as the paper sets up each data set."""

import numpy as np
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


def _own(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays) if name.endswith(".npz") else np.save(path, arrays["x"])
    return str(path)


def test_tabular_real_data_choose_an_mlp_and_a_normal_likelihood(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 7)).astype(np.float32)
    cfg = RunConfig(dataset=_own(tmp_path, "tab.npy", x=x), device="cpu")
    vae, _, train_set, test_set = build(cfg)
    assert (cfg.network, cfg.likelihood, cfg.latent_dim) == ("mlp", "normal", 3)
    assert {k: cfg.presets[k] for k in ("network", "likelihood", "latent_dim")} == dict.fromkeys(
        ("network", "likelihood", "latent_dim"), "data"
    )
    assert vae.likelihood_name == "normal" and isinstance(vae.encoder, nets.MLPEncoder)
    assert (len(train_set), len(test_set)) == (24, 6) and cfg.data_source["kind"] == "array"


def test_images_choose_a_conv_net_and_bernoulli(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 28, 28), dtype=np.uint8)
    cfg = RunConfig(dataset=_own(tmp_path, "rgb.npz", x=x))
    vae, *_ = build(cfg)
    assert isinstance(vae.encoder, nets.ConvEncoder) and vae.encoder.in_shape == (3, 28, 28)
    assert (cfg.network, cfg.likelihood, cfg.latent_dim) == ("conv", "bernoulli", 10)
    odd = _own(tmp_path, "odd.npz", x=x[:, :, :27, :27])
    assert build(RunConfig(dataset=odd))[0].encoder.__class__ is nets.MLPEncoder  # conv cannot take 27x27
    with pytest.raises(ValueError, match="multiples of 4 .* got 27x27"):
        build(RunConfig(dataset=odd, network="conv"))


def test_bernoulli_on_data_outside_the_unit_interval_is_one_line(tmp_path):
    x = np.linspace(-1, 1, 20, dtype=np.float32).reshape(10, 2)
    with pytest.raises(ValueError, match="bernoulli likelihood needs data in \\[0, 1\\].*\\[-1, 1\\]") as e:
        build(RunConfig(dataset=_own(tmp_path, "pm.npz", x=x), likelihood="bernoulli"))
    assert "\n" not in str(e.value)


def test_memory_data_are_recorded_and_needed():
    from torch.utils.data import TensorDataset

    data = (TensorDataset(torch.randn(10, 3)), TensorDataset(torch.randn(4, 3)))
    cfg = RunConfig(dataset="memory")
    build(cfg, data=data)
    assert cfg.data_source == {"kind": "memory", "train_points": 10, "test_points": 4}
    with pytest.raises(ValueError, match="held in memory"):
        build(cfg)
    with pytest.raises(ValueError, match="dataset 'memory' needs the data"):
        build(RunConfig(dataset="memory"))

"""RunConfig: defaults per data set, validation once, JSON round trip."""

import json

import pytest
import torch
from tiny import tiny

from pyro_decomp import config as config_module
from pyro_decomp.config import RunConfig
from pyro_decomp.version import __version__


def test_config_json_round_trip_and_defaults():
    config = tiny(prior="gaussian", prior_options={"variance": "pca"}, seed=3, global_divergence=True)
    again = RunConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["pyro_decomp_version"] == __version__
    # no arguments: the paper's pinwheel clustering setting (Mathieu et al., 2019, §5.2)
    paper = RunConfig()
    assert (paper.dataset, paper.prior, paper.latent_dim, paper.network, paper.likelihood) == (
        "pinwheel",
        "pinwheel",
        2,
        "mlp",
        "normal",
    )
    assert (paper.beta, paper.alpha, paper.divergence) == (0.0, 1.0, "inclusive-kl")
    assert (paper.batch_size, paper.lr, paper.epochs) == (400, 1e-3, 500)
    assert RunConfig(dataset="fashion-mnist").latent_dim == 50
    assert RunConfig(dataset="dsprites").likelihood == "bernoulli"


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"beta": -1.0}, "beta"),
        ({"alpha": -0.5}, "alpha"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"dataset": "mnist"}, "dataset"),
        ({"device": "tpu"}, "device"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"prior_options": {"data": object()}}, "prior_options"),
    ],
)
def test_config_rejects_bad_values_by_name(changes, name):
    with pytest.raises(ValueError, match=name):
        tiny(**changes)


def test_config_rejects_unknown_keys():
    values = tiny().to_dict()
    values["betta"] = 1.0
    with pytest.raises(ValueError, match="betta"):
        RunConfig.from_dict(values)


def test_resolve_device():
    assert config_module.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config_module.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            config_module.resolve_device("cuda")
    with pytest.raises(ValueError, match="tpu"):
        config_module.resolve_device("tpu")

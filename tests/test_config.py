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


def test_presets_apply_only_to_unset_fields_of_their_own_data_set():
    # pinwheel's decoder-scale preset is not merged into options the user gave
    assert RunConfig(network_options={"hidden": [16]}).network_options == {"hidden": [16]}
    assert RunConfig().network_options == {"scale": "decoder"}
    fashion = RunConfig(dataset="fashion-mnist", prior="gaussian")
    assert "prior" not in fashion.presets and fashion.presets["network"] == "fashion-mnist"
    # a change of data set takes none of the old one's presets
    own = fashion.replace(dataset="rings.npz")
    assert own.prior == "gaussian"  # chosen, so kept
    assert (own.network, own.likelihood, own.latent_dim) == (None, None, None)  # chosen from the data later
    assert (own.alpha, own.network_options, own.batch_size) == (0.0, {}, 64)
    assert set(own.presets.values()) == {"own data"}
    assert fashion.given_settings()["prior"] == "gaussian" and "network" not in fashion.given_settings()


def test_records_survive_json_and_take_no_part_in_equality():
    config = RunConfig(dataset="rings.npz", data_source={"kind": "array", "path": "/r.npz", "sha256": "0"})
    again = RunConfig.from_json(config.to_json())
    assert again.data_source == config.data_source and again.presets == config.presets
    assert again == config.replace(data_source=None)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; expected one of .*'memory'"):
        RunConfig(dataset="mnist")
    with pytest.raises(ValueError, match="unknown network options \\['width'\\] for network 'conv'"):
        RunConfig(dataset="rings.npz", network="conv", network_options={"width": 3})

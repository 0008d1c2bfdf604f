"""Each private Pyro name in pyro_decomp._pyro_compat does what this package relies on.

A Pyro release that renames, moves or changes one of them fails here, by name."""

import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoNormalMessenger
from pyro.nn import PyroModule

from pyro_decomp import _pyro_compat as compat


def _model(x):
    with pyro.plate("data", 10, subsample=torch.arange(len(x))):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_every_listed_name_is_exported_and_documented():
    for name in compat.__all__:
        assert hasattr(compat, name), name
    for dotted in ("torch_item", "is_validation_enabled", "zero_grads", "site_is_subsample", "scale_and_mask",
                   "broadcast_shape", "check_model_guide_match", "check_site_shape", "check_if_enumerated",
                   "warn_if_nan", "unwrap", "Messenger", "_pyro_name"):  # fmt: skip
        assert dotted in compat.__doc__, dotted


def test_torch_item_and_validation_flag():
    assert compat.torch_item(2.5) == 2.5 and compat.torch_item(torch.tensor(1.5)) == 1.5
    pyro.enable_validation(False)
    assert compat.is_validation_enabled() is False
    pyro.enable_validation(True)
    assert compat.is_validation_enabled() is True


def test_zero_grads():
    t = torch.ones(3, requires_grad=True)
    t.sum().backward()
    compat.zero_grads([t])
    assert torch.equal(t.grad, torch.zeros(3))


def test_site_is_subsample_and_scale_and_mask():
    trace = poutine.trace(_model).get_trace(torch.zeros(4, 2))
    subsample = [name for name, site in trace.nodes.items() if compat.site_is_subsample(site)]
    assert subsample == ["data"]
    t = torch.tensor([1.0, 2.0, 3.0])
    out = compat.scale_and_mask(t, 2.0, torch.tensor([True, False, True]))
    assert torch.equal(out, torch.tensor([2.0, 0.0, 6.0]))
    assert compat.broadcast_shape((3, 1), (1, 4)) == (3, 4)
    with pytest.raises(ValueError):
        compat.broadcast_shape((3,), (4,))


def test_shape_and_match_checks_raise():
    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))  # a site the model lacks
        with pyro.plate("data", 10, subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    x = torch.zeros(4, 2)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(_model, trace=guide_trace)).get_trace(x)
    with pytest.warns(UserWarning, match="guide but not model"):
        compat.check_model_guide_match(model_trace, guide_trace)

    def wide_guide(x):
        with pyro.plate("data", 10, subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    wide = poutine.trace(wide_guide).get_trace(x)
    with pytest.raises(ValueError, match="shapes disagree at site 'z'"):
        compat.check_model_guide_match(model_trace, wide)
    site = dict(model_trace.nodes["z"], log_prob=torch.zeros(5))  # 5 is not the plate's 4
    with pytest.raises(ValueError, match="invalid log_prob shape"):
        compat.check_site_shape(site, float("inf"))
    compat.check_site_shape(dict(model_trace.nodes["z"], log_prob=torch.zeros(4)), float("inf"))

    @poutine.infer_config(config_fn=lambda site: {"enumerate": "parallel"})
    def enumerated(x):
        pyro.sample("c", dist.Categorical(torch.ones(3)))

    with pytest.warns(UserWarning, match="TraceEnum_ELBO"):
        compat.check_if_enumerated(
            poutine.trace(poutine.enum(enumerated, first_available_dim=-1)).get_trace(x)
        )


def test_warn_if_nan():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.warn_if_nan(float("nan"), "loss")
    assert any("nan" in str(w.message).lower() for w in caught)


def test_guide_messenger_unwraps_to_a_messenger_with_its_traces():
    guide = AutoNormalMessenger(_model)
    assert isinstance(compat.unwrap(guide), compat.Messenger)
    x = torch.zeros(4, 2)
    guide(x)
    model_trace, guide_trace = compat.unwrap(guide).get_traces()
    assert "z" in model_trace.nodes and "z" in guide_trace.nodes


def test_a_messenger_sees_the_model_infer_dict_before_replay():
    class Seen(compat.Messenger):
        def __init__(self):
            super().__init__()
            self.infer = {}

        def _pyro_sample(self, msg):
            self.infer[msg["name"]] = dict(msg["infer"])

    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0), infer={"decomposition": True})

    def guide():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    guide_trace = poutine.trace(guide).get_trace()
    seen = Seen()
    model_trace = poutine.trace(poutine.replay(seen(model), trace=guide_trace)).get_trace()
    assert seen.infer["a"] == {"decomposition": True}
    assert "decomposition" not in model_trace.nodes["a"]["infer"]  # replay hands over the guide's dict


def test_pyro_module_name():
    assert compat.pyro_name(PyroModule(name="mine")) == "mine"
    assert compat.pyro_name(torch.nn.Linear(1, 1)) == ""

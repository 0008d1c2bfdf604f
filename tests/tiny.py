"""Small pinwheel runs shared by the tests of a run's life: config, build, runs, training, evaluation."""

import torch

from pyro_decomp.config import RunConfig


def tiny(**changes) -> RunConfig:
    """Pinwheel with 40 points in batches of 8 (5 steps an epoch), β and α both active."""
    values = dict(
        dataset="pinwheel",
        data_options={"num_per_class": 10},
        network_options={"hidden": [16]},
        beta=0.5,
        alpha=1.0,
        divergence="inclusive-kl",
        epochs=4,
        batch_size=8,
        checkpoint_every=1,
        device="cpu",
    )
    values.update(changes)
    return RunConfig(**values)


def params(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

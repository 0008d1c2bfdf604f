"""The training loop: configuration, builder, checkpoints, exact resume, failure handling."""

import json
import os
import pickle
import random
import signal

import numpy as np
import pyro
import pytest
import torch
from torch.utils.data import DistributedSampler

from pyro_decomp import training
from pyro_decomp.training import (
    CheckpointError,
    NonFiniteLossError,
    RunConfig,
    Trainer,
    TrainingInterrupted,
    build,
    load_checkpoint,
    read_metrics,
    resume,
    save_checkpoint,
    train,
)


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


# ---------------------------------------------------------------------------------------------- configuration
def test_config_json_round_trip_and_defaults():
    config = tiny(prior="gaussian", prior_options={"variance": "pca"}, seed=3, global_divergence=True)
    again = RunConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["pyro_decomp_version"] == pyro_version()
    # no arguments: the paper's pinwheel clustering setting (Mathieu et al., 2019, §5.2)
    paper = RunConfig().resolved()
    assert (paper.dataset, paper.prior, paper.latent_dim, paper.network, paper.likelihood) == (
        "pinwheel",
        "pinwheel",
        2,
        "mlp",
        "normal",
    )
    assert (paper.beta, paper.alpha, paper.divergence) == (0.0, 1.0, "inclusive-kl")
    assert (paper.batch_size, paper.lr, paper.epochs) == (400, 1e-3, 500)
    assert RunConfig(dataset="fashion-mnist").resolved().latent_dim == 50
    assert RunConfig(dataset="dsprites").resolved().likelihood == "bernoulli"


def pyro_version():
    import pyro_decomp

    return pyro_decomp.__version__


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


def test_build_follows_the_paper_per_data_set():
    from pyro_decomp import nets

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

    cfg = RunConfig(dataset="fashion-mnist").resolved()
    enc, dec = training._build_networks(cfg, (1, 32, 32))
    assert isinstance(enc, nets.DCGANEncoder32) and isinstance(dec, nets.DCGANDecoder32)
    assert (cfg.likelihood, cfg.likelihood_scale) == ("laplace", 0.1)
    with pytest.raises(ValueError, match="--data-root"):
        build(RunConfig(dataset="fashion-mnist"))
    with pytest.raises(ValueError, match="conv64"):
        training._build_networks(RunConfig(dataset="shapes").resolved(), (1, 32, 32))


def test_build_shapes_uses_conv_nets_and_bernoulli():
    from pyro_decomp import nets

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


def test_resolve_device():
    assert training.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert training.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            training.resolve_device("cuda")
    with pytest.raises(ValueError, match="tpu"):
        training.resolve_device("tpu")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    state = training._rng_state()
    save_checkpoint(state, str(tmp_path / "rng.pt"))
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    first = (torch.rand(3), random.random(), np.random.rand())
    training._set_rng_state(loaded)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_checkpoint_write_is_atomic(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"format": training.CHECKPOINT_FORMAT, "x": torch.ones(3)}, path)
    before = open(path, "rb").read()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"x": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert open(path, "rb").read() == before  # the old file survives a write that fails half-way
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # and no temporary file is left behind


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run") / "run")
    pyro.clear_param_store()
    torch.set_num_threads(1)
    trainer = train(tiny(epochs=2), run_dir, progress=False)
    return run_dir, params(trainer.vae)


def test_run_files_are_plain_and_complete(short_run):
    run_dir, final = short_run
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["epochs"] == 2 and config["pyro_decomp_version"] == pyro_version()
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"loss", "reconstruction", "kl", "divergence"} <= set(r) and np.isfinite(r["loss"])
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0 and state["global_step"] == 10
    assert_bitwise_equal(state["model"], final)
    assert state["optimizer"] and all("state" in s for s in state["optimizer"].values())
    assert {"torch", "python", "numpy"} <= set(state["rng"])


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_checkpoint_gives_a_clear_error(short_run, tmp_path, keep):
    data = open(os.path.join(short_run[0], "checkpoint.pt"), "rb").read()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value)


class _WritesMarker:
    """Unpickling this calls os.mkdir(marker): harmless, but proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    marker = str(tmp_path / "code-ran")
    path = str(tmp_path / "checkpoint.pt")
    torch.save(
        {"format": training.CHECKPOINT_FORMAT, "format_version": 1, "model": _WritesMarker(marker)}, path
    )
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        load_checkpoint(path)
    assert path in str(info.value)
    assert not os.path.exists(marker)
    # the payload is live: an unrestricted unpickler would have run it
    pickle.loads(pickle.dumps(_WritesMarker(marker)))
    assert os.path.isdir(marker)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "weights.pt")
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a pyro_decomp checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))


# ---------------------------------------------------------------------------------------------- resume
LEARNT_PRIOR = {
    "prior": "gaussian",
    "prior_options": {"variance": "pca", "learn_variance": True},
    "divergence": "mmd",
}


@pytest.mark.parametrize("changes", [{}, LEARNT_PRIOR], ids=["mixture-prior", "learnt-gaussian-prior"])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, changes):
    """2k epochs in one go == k epochs, a resume from the checkpoint, k more (CPU, one thread)."""
    whole = train(tiny(epochs=4, **changes), str(tmp_path / "whole"), progress=False)
    train(tiny(epochs=2, **changes), str(tmp_path / "split"), progress=False)
    resumed = resume(str(tmp_path / "split"), epochs=4, progress=False)
    assert resumed.epoch == 4 and resumed.global_step == whole.global_step == 20
    assert_bitwise_equal(params(resumed.vae), params(whole.vae))
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for name in a["optimizer"]:
        for key, value in a["optimizer"][name]["state"][0].items():
            assert torch.equal(value, b["optimizer"][name]["state"][0][key]), (name, key)
    losses = [[r["loss"] for r in read_metrics(str(tmp_path / d))] for d in ("whole", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert json.load(open(tmp_path / "split" / "config.json"))["epochs"] == 4


class _InterruptAt:
    """An ELBO wrapper that delivers SIGINT to this process during global step ``at`` (like a Ctrl-C)."""

    def __init__(self, elbo, at):
        self.elbo, self.at, self.calls = elbo, at, 0

    def loss_and_grads(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.elbo.loss_and_grads(*args, **kwargs)

    def loss_components(self, *args, **kwargs):
        return self.elbo.loss_components(*args, **kwargs)


def _trainer(config, run_dir):
    pyro.set_rng_seed(config.resolved().seed)
    vae, elbo, train_set, _ = build(config)
    return Trainer(vae, elbo, train_set, config, run_dir, progress=False)


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    whole = _trainer(tiny(), None)
    whole.fit()
    trainer = _trainer(tiny(), str(tmp_path))
    trainer.elbo = _InterruptAt(trainer.elbo, at=7)  # epoch 2, step 2
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert (info.value.epoch, info.value.step) == (2, 2)
    state = load_checkpoint(info.value.checkpoint)
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 2, 7)
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is restored
    again = _trainer(tiny(), str(tmp_path))
    again.restore()
    again.fit()
    assert_bitwise_equal(params(again.vae), params(whole.vae))
    assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- failures
@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("validation", [True, False], ids=["validation", "no-validation"])
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, validation):
    # with validation on, the NaN reaches the encoder's Normal and fails as an invalid parameter; without it
    # the loss itself is NaN; both must stop the run the same way
    pyro.enable_validation(validation)
    trainer = _trainer(tiny(), str(tmp_path))
    trainer.fit(2)
    checkpoint = open(tmp_path / "checkpoint.pt", "rb").read()
    bad = 13
    trainer.train_set.tensors[0][bad] = float("nan")
    # the step of epoch 3 whose batch holds the bad point: the data order is a function of (seed, epoch)
    sampler = DistributedSampler(trainer.train_set, num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(3)
    step = list(sampler).index(bad) // 8 + 1
    before = None
    original = trainer.step

    def spy(x, epoch=0, step=0):
        nonlocal before
        before = params(trainer.vae)
        return original(x, epoch, step)

    trainer.step = spy
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(4)
    message = str(info.value)
    assert f"epoch 3, step {step}" in message and (info.value.epoch, info.value.step) == (3, step)
    assert "reconstruction=nan" in message and "kl=" in message and "divergence=" in message
    assert str(tmp_path / "checkpoint.pt") in message
    assert open(tmp_path / "checkpoint.pt", "rb").read() == checkpoint  # the last good checkpoint, intact
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["epoch"] == 2
    assert_bitwise_equal(params(trainer.vae), before)  # the bad step updated nothing
    assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_fit_rejects_a_total_below_the_epochs_done(short_run):
    trainer = _trainer(tiny(epochs=2), short_run[0])
    trainer.restore()
    with pytest.raises(ValueError, match="already trained 2 epochs"):
        trainer.fit(1)

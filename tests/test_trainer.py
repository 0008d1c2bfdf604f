"""The Trainer: Ctrl-C mid-epoch, non-finite losses, held-out numbers, callbacks that stop a run."""

import os
import signal

import pyro
import pytest
from tiny import assert_bitwise_equal, params, tiny
from torch.utils.data import DistributedSampler

from pyro_decomp.build import build
from pyro_decomp.runs import load_checkpoint, read_metrics
from pyro_decomp.trainer import NonFiniteLossError, Trainer, TrainingInterrupted
from pyro_decomp.training import resume, train


# ---------------------------------------------------------------------------------------------- signals
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

    @property
    def last_components(self):
        return self.elbo.last_components


def _trainer(config, run_dir):
    pyro.set_rng_seed(config.seed)
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


# ------------------------------------------------------------------------------------------ held-out numbers
def test_heldout_components_every_epoch_and_best_checkpoint(tmp_path):
    run = train(tiny(epochs=5, eval_every=1), str(tmp_path), progress=False)
    records = read_metrics(str(tmp_path))
    keys = {"heldout_loss", "heldout_reconstruction", "heldout_kl", "heldout_divergence"}
    assert all(keys <= set(r) for r in records)
    losses = [r["heldout_loss"] for r in records]
    best_epoch = 1 + min(range(len(losses)), key=losses.__getitem__)
    best = load_checkpoint(str(tmp_path / "best.pt"))
    assert best["epoch"] == best_epoch and best["best_heldout"] == min(losses)
    assert run.test_set is not None and len(run.test_set) == 40
    # evaluating them changes nothing in training: the same run without held-out numbers is bitwise equal
    plain = train(tiny(epochs=5, eval_every=0), str(tmp_path / "plain"), progress=False)
    assert_bitwise_equal(params(plain.vae), params(run.vae))
    assert all(not (keys & set(r)) for r in plain.metrics)


def test_heldout_every_k_epochs_and_at_the_end(tmp_path):
    run = train(tiny(epochs=5, eval_every=2), str(tmp_path), progress=False)
    assert [r["epoch"] for r in run.metrics if "heldout_loss" in r] == [2, 4, 5]


class _StopAfter:
    def __init__(self, epoch):
        self.epoch, self.ended = epoch, False

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            trainer.should_stop = True

    def on_train_end(self, trainer):
        self.ended = True


def test_a_callback_stops_training_with_a_checkpoint_that_resumes(tmp_path):
    callback = _StopAfter(3)
    run = train(tiny(epochs=6, checkpoint_every=5), str(tmp_path), progress=False, callbacks=[callback])
    assert run.epoch == 3 and callback.ended
    assert load_checkpoint(str(tmp_path / "checkpoint.pt"))["epoch"] == 3
    resumed = resume(str(tmp_path), progress=False)
    assert resumed.epoch == 6 and resumed.trained_epochs == 3
    assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]
    whole = train(tiny(epochs=6, checkpoint_every=5), str(tmp_path / "whole"), progress=False)
    assert_bitwise_equal(params(resumed.vae), params(whole.vae))


# ------------------------------------------------------------------ best.pt and checkpoint.pt after a kill
class _Killed(BaseException):
    """A kill -9 stand-in: nothing in the trainer catches it, so nothing runs after it."""


def _best_epochs(run_dir):
    return [r["epoch"] for r in read_metrics(run_dir) if r.get("best")]


def test_best_checkpoint_agrees_with_the_metrics_after_a_kill_between_the_two_writes(tmp_path, monkeypatch):
    import pyro_decomp.trainer as trainer_module

    config = tiny(epochs=6, eval_every=1, lr=1e-2)
    whole = str(tmp_path / "whole")
    train(config, whole, progress=False)
    best = _best_epochs(whole)
    kill_at = best[-1]  # the last epoch that sets a new lowest held-out loss
    assert kill_at >= 2, best
    assert load_checkpoint(os.path.join(whole, "best.pt"))["epoch"] == kill_at

    write = trainer_module.save_checkpoint
    written = []

    def killed_after_the_first_file_of_that_epoch(state, path):
        write(state, path)
        written.append(state["epoch"])
        if state["epoch"] == kill_at and written.count(kill_at) == 1:
            raise _Killed

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_after_the_first_file_of_that_epoch)
    run = str(tmp_path / "run")
    with pytest.raises(_Killed):
        train(config, run, progress=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", write)
    resume(run, progress=False)
    assert _best_epochs(run) == best
    assert load_checkpoint(os.path.join(run, "best.pt"))["epoch"] == kill_at


def test_sighup_is_handled_as_sigterm(tmp_path):
    pyro.set_rng_seed(0)
    config = tiny(epochs=3)
    vae, elbo, train_set, _ = build(config)
    run = str(tmp_path / "run")

    class Hangup:
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGHUP)  # a closed terminal, mid-run

    trainer = Trainer(vae, elbo, train_set, config, run, progress=False, callbacks=[Hangup()])
    before = signal.getsignal(signal.SIGHUP)
    with pytest.raises(TrainingInterrupted, match="SIGHUP") as info:
        trainer.fit()
    assert info.value.signal == signal.SIGHUP and 128 + info.value.signal == 129
    assert load_checkpoint(info.value.checkpoint)["epoch"] >= 1
    assert signal.getsignal(signal.SIGHUP) == before  # the handler is put back


# ------------------------------------------------------------------------------------------ epoch records
def test_every_loss_component_of_a_record_is_the_mean_over_the_epochs_steps(tmp_path):
    """Recomputed here: before each step, the parameters, the random state and the batch are kept; each
    step's components are then evaluated again from them with the ELBO, and averaged."""
    import torch

    trainer = _trainer(tiny(epochs=1), str(tmp_path))
    seen, original = [], trainer.step

    def spy(x, epoch=0, step=0):
        seen.append((params(trainer.vae), torch.get_rng_state(), x.clone()))
        return original(x, epoch, step)

    trainer.step = spy
    (record,) = trainer.fit()
    assert read_metrics(str(tmp_path)) == [record]
    assert record["steps"] == len(seen) == 5
    sums = {}
    for state, rng, x in seen:
        trainer.vae.load_state_dict(state)
        torch.set_rng_state(rng)
        comps = trainer.elbo.loss_components(trainer.vae.model, trainer.vae.guide, x, dataset_size=40)
        for key, value in comps.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    for key in ("reconstruction", "kl", "other_kl", "divergence"):
        assert record[key] == pytest.approx(sums[key] / 5, rel=1e-12, abs=1e-12), key
    # the training loss is the mean of the steps' losses, and the per-step losses are kept for the curves
    assert len(record["step_loss"]) == 5
    assert record["loss"] == pytest.approx(sum(record["step_loss"]) / 5, rel=1e-12)
    # the components' own loss agrees with the steps' loss up to Monte Carlo noise of the same size
    assert record["loss"] == pytest.approx(sums["loss"] / 5, rel=0.2)
    assert "last_batch_loss" not in record


def test_a_record_of_an_epoch_resumed_mid_way_equals_the_uninterrupted_one(tmp_path):
    whole = _trainer(tiny(epochs=2), None)
    whole_records = whole.fit()
    trainer = _trainer(tiny(epochs=2), str(tmp_path))
    trainer.elbo = _InterruptAt(trainer.elbo, at=7)  # epoch 2, step 2
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    again = _trainer(tiny(epochs=2), str(tmp_path))
    again.restore()
    again.fit()
    records = read_metrics(str(tmp_path))
    for got, want in zip(records, whole_records):
        got.pop("seconds"), want.pop("seconds")
        assert got == want

"""Callbacks of the training loop: TensorBoard logging, early stopping, and stopping a run cleanly."""

import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from tiny import tiny as tiny_run

from pyro_decomp.callbacks import EarlyStopping, TensorBoardCallback
from pyro_decomp.config import RunConfig
from pyro_decomp.runs import load_checkpoint, read_metrics
from pyro_decomp.training import resume, train


def tiny(**changes) -> RunConfig:
    """The shared tiny pinwheel run, 3 epochs with held-out numbers every epoch."""
    return tiny_run(**{"epochs": 3, "eval_every": 1, **changes})


def fake_trainer(is_main: bool = True) -> SimpleNamespace:
    return SimpleNamespace(context=SimpleNamespace(is_main=is_main), should_stop=False)


def read_events(log_dir: str):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(log_dir, size_guidance={accumulator.IMAGES: 0})
    events.Reload()
    return events


class StopAfter:
    def __init__(self, epoch: int):
        self.epoch = epoch
        self.ended = 0

    def on_epoch_end(self, trainer, record):
        if record["epoch"] >= self.epoch:
            trainer.should_stop = True

    def on_train_end(self, trainer):
        self.ended += 1


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    torch.set_num_threads(1)
    run_dir = str(tmp_path_factory.mktemp("tb") / "run")
    log_dir = os.path.join(run_dir, "tensorboard")
    run = train(tiny(), run_dir, progress=False, callbacks=[TensorBoardCallback(log_dir)])
    return run, run_dir, log_dir, torch.get_rng_state()


def test_scalars_read_back_as_in_metrics_and_figures_are_images(logged_run):
    run, run_dir, log_dir, _ = logged_run
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    events = read_events(log_dir)
    scalars = events.Tags()["scalars"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    for event, record in zip(loss, records):
        assert event.value == pytest.approx(record["loss"], rel=1e-6)
    heldout = events.Scalars("heldout/loss")
    assert [e.step for e in heldout] == [1, 2, 3]
    assert [e.value for e in heldout] == pytest.approx([r["heldout_loss"] for r in records], rel=1e-6)
    for tag in ("train/kl", "train/reconstruction", "train/divergence", "heldout/kl"):
        assert tag in scalars
    assert not any(tag.endswith(("epoch", "global_step", "seconds", "best", "steps")) for tag in scalars)
    # the components are epoch means, like the loss
    kl = events.Scalars("train/kl")
    assert [e.value for e in kl] == pytest.approx([r["kl"] for r in records], rel=1e-6)
    images = events.Tags()["images"]
    assert set(images) == {"figures/training_curves", "figures/aggregate_posterior"}
    for tag in images:
        (image,) = events.Images(tag)
        assert image.step == 3 and image.width > 100 and image.height > 100
        assert image.encoded_image_string.startswith(b"\x89PNG")


def test_callback_leaves_training_bitwise_unchanged(logged_run, tmp_path):
    run, _, _, rng_with = logged_run
    with_callback = {k: v.detach().clone() for k, v in run.vae.state_dict().items()}
    plain = train(tiny(), str(tmp_path / "plain"), progress=False)
    rng_without = torch.get_rng_state()
    without = plain.vae.state_dict()
    assert with_callback.keys() == without.keys()
    for key in without:
        assert torch.equal(with_callback[key], without[key]), key
    assert torch.equal(rng_with, rng_without)


def test_missing_tensorboard_raises_one_line_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError) as info:
        TensorBoardCallback(str(tmp_path / "tb"))
    message = str(info.value)
    assert "\n" not in message
    assert 'pip install "pyro-decomp[tensorboard]"' in message
    assert not (tmp_path / "tb").exists()


def test_only_the_main_process_writes(tmp_path):
    pytest.importorskip("tensorboard")
    callback = TensorBoardCallback(str(tmp_path / "tb"))
    trainer = fake_trainer(is_main=False)
    callback.on_epoch_end(trainer, {"epoch": 1, "loss": 1.0})
    callback.on_train_end(trainer)
    assert not (tmp_path / "tb").exists()


def test_a_resumed_log_replaces_the_epochs_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    log_dir = str(tmp_path / "tb")
    trainer = fake_trainer()
    first = TensorBoardCallback(log_dir, figures=False)
    for epoch in (1, 2, 3):
        first.on_epoch_end(trainer, {"epoch": epoch, "loss": float(epoch), "best": True, "seconds": 0.1})
    first.on_train_end(trainer)
    again = TensorBoardCallback(log_dir, figures=False)  # resumed from the checkpoint of epoch 2
    again.on_epoch_end(trainer, {"epoch": 3, "loss": 30.0, "heldout_loss": 31.0})
    again.on_train_end(trainer)
    events = read_events(log_dir)
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [(e.step, e.value) for e in events.Scalars("heldout/loss")] == [(3, 31.0)]
    assert events.Tags()["images"] == []


def test_should_stop_leaves_a_checkpoint_that_resumes(tmp_path):
    torch.set_num_threads(1)
    run_dir = str(tmp_path / "run")
    stop = StopAfter(3)
    run = train(tiny(epochs=6), run_dir, progress=False, callbacks=[stop])
    assert run.epoch == 3 and stop.ended == 1
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"] == 3
    resumed = resume(run_dir, epochs=6, progress=False)
    assert resumed.epoch == 6
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"] == 6


def test_early_stopping_counts_evaluations_without_improvement():
    trainer = fake_trainer()
    early = EarlyStopping(patience=2)
    losses = [3.0, 2.0, None, 2.5, None, 2.0, None, 1.9, 2.2, 2.1]
    stopped_at = None
    for epoch, loss in enumerate(losses, 1):
        record = {"epoch": epoch, "loss": 1.0}
        if loss is not None:
            record["heldout_loss"] = loss
        early.on_epoch_end(trainer, record)
        if trainer.should_stop:
            stopped_at = epoch
            break
    # 2.0 at epoch 2 is the best until 1.9 at epoch 8; 2.5 and 2.0 (no improvement) stop it at epoch 6
    assert stopped_at == 6 and early.best == 2.0


def test_early_stopping_ignores_non_finite_values_and_checks_its_arguments():
    trainer = fake_trainer()
    early = EarlyStopping(patience=1, key="loss")
    early.on_epoch_end(trainer, {"epoch": 1, "loss": 1.0})
    early.on_epoch_end(trainer, {"epoch": 2, "loss": 0.5})
    assert not trainer.should_stop
    early.on_epoch_end(trainer, {"epoch": 3, "loss": math.nan})
    assert trainer.should_stop and early.best == 0.5
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="patience"):
            EarlyStopping(bad)


def test_early_stopping_ends_a_run(tmp_path):
    torch.set_num_threads(1)
    run_dir = str(tmp_path / "run")

    class Worse:
        def on_epoch_end(self, trainer, record):
            record["heldout_loss"] = float(record["epoch"])

    run = train(tiny(epochs=6), run_dir, progress=False, callbacks=[Worse(), EarlyStopping(patience=2)])
    assert run.epoch == 3
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"] == 3

"""The run directory: checkpoint format and integrity, RNG state, metrics, lock, clean-up."""

import multiprocessing
import os
import pickle
import random
import time

import numpy as np
import pytest
import torch
from tiny import tiny

from pyro_decomp import runs
from pyro_decomp.build import build
from pyro_decomp.runs import CheckpointError, load_checkpoint, save_checkpoint
from pyro_decomp.training import Trainer


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    state = runs.get_rng_state()
    save_checkpoint(state, str(tmp_path / "rng.pt"))
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    first = (torch.rand(3), random.random(), np.random.rand())
    runs.set_rng_state(loaded)
    second = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_checkpoint_write_is_atomic(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"format": runs.CHECKPOINT_FORMAT, "x": torch.ones(3)}, path)
    before = open(path, "rb").read()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"x": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert open(path, "rb").read() == before  # the old file survives a write that fails half-way
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # and no temporary file is left behind


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
    torch.save({"format": runs.CHECKPOINT_FORMAT, "format_version": 1, "model": _WritesMarker(marker)}, path)
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


# ------------------------------------------------------------------ a run directory that never loses work
def test_a_run_without_a_checkpoint_is_restarted_not_resumed(tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    runs.save_config(tiny(), run)
    with pytest.raises(ValueError, match="before its first checkpoint") as info:
        runs.check_run_dir(run)
    assert runs.restart_command(run) in str(info.value) and "--resume" not in str(info.value)
    runs.check_run_dir(run, overwrite=True)
    save_checkpoint(runs.checkpoint_state(epoch=1), os.path.join(run, "checkpoint.pt"))
    with pytest.raises(ValueError, match=f"--resume {run}"):
        runs.check_run_dir(run)


def test_a_checkpoint_of_another_model_is_a_checkpoint_error(short_run, tmp_path):
    state = load_checkpoint(os.path.join(short_run[0], "checkpoint.pt"))
    config = tiny(latent_dim=3, prior="gaussian")
    vae, elbo, train_set, _ = build(config)
    trainer = Trainer(vae, elbo, train_set, config, progress=False)
    with pytest.raises(CheckpointError, match="does not fit"):
        trainer.load_state_dict(state)


def _hold_lock(run_dir, locked):
    with runs.lock_run(run_dir):
        locked.set()
        time.sleep(60)


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    run = str(tmp_path / "run")
    fork = multiprocessing.get_context("fork")
    locked = fork.Event()
    holder = fork.Process(target=_hold_lock, args=(run, locked), daemon=True)
    holder.start()
    try:
        assert locked.wait(30)
        with pytest.raises(runs.RunLocked, match=f"pid {holder.pid}"):
            with runs.lock_run(run):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.join(30)
    assert open(os.path.join(run, ".lock")).read().strip() == str(holder.pid)
    with runs.lock_run(run):  # the kernel released the killed process's lock
        assert open(os.path.join(run, ".lock")).read().strip() == str(os.getpid())


def test_test_data_is_one_way_for_every_data_set():
    from pyro_decomp.config import RunConfig
    from pyro_decomp.runs import Run

    config = tiny()
    _, _, _, test_set = build(config)
    run = Run(vae=None, config=config, elbo=None, test_set=test_set)
    x, y = run.test_data()
    assert torch.equal(x, test_set.tensors[0]) and torch.equal(y, test_set.tensors[1])
    x5, y5 = run.test_data(5, seed=1)
    rows = [int((test_set.tensors[0] == r).all(1).nonzero()) for r in x5]
    assert len(set(rows)) == 5 and rows == sorted(rows) and torch.equal(y5, test_set.tensors[1][rows])
    # a ground-truth image set, which has no .tensors: its images and factor indices
    shapes = RunConfig(
        dataset="shapes",
        data_options={
            "subsample": {"scale": 6, "orientation": 40, "position_x": 16, "position_y": 16},
            "cache": False,
        },
    )
    _, _, _, grid = build(shapes)
    x, factors = Run(vae=None, config=shapes, elbo=None, test_set=grid).test_data(4)
    assert x.shape == (4, 1, 64, 64) and factors.shape == (4, 5)
    assert torch.equal(x, grid.images_at(torch.tensor([int(i) for i in grid.index_from_factors(factors)])))

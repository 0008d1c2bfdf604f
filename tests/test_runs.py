"""The run directory: checkpoint format and integrity, RNG state, metrics, lock, clean-up."""

import json
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
from pyro_decomp.training import Trainer, resume, train


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


# ---------------------------------------------------------- nothing outside the run, nothing not its own
def test_a_symlinked_lock_is_refused_and_its_target_left_unchanged(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim, run / ".lock")
    with pytest.raises(runs.UnsafePathError, match="symbolic link") as info:
        with runs.lock_run(str(run)):
            pass
    assert str(run / ".lock") in str(info.value) and "\n" not in str(info.value)
    assert victim.read_text() == "precious\n"
    os.remove(run / ".lock")
    os.mkfifo(run / ".lock")  # nor a FIFO (or any file that is not a regular one)
    with pytest.raises(runs.UnsafePathError, match="not a regular file"):
        with runs.lock_run(str(run)):
            pass


def test_atomic_writes_refuse_a_link_or_a_directory_at_the_target(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    os.symlink(victim, tmp_path / "evaluation.json")
    with pytest.raises(runs.UnsafePathError, match="symbolic link"):
        runs.write_json(str(tmp_path / "evaluation.json"), {"x": 1})
    assert victim.read_text() == "{}" and os.path.islink(tmp_path / "evaluation.json")
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(runs.UnsafePathError, match="a directory"):
        save_checkpoint(runs.checkpoint_state(epoch=1), str(tmp_path / "checkpoint.pt"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "evaluation.json", "victim.json"]  # no temp file


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from pyro_decomp import _atomic
    from pyro_decomp.cli.flags import one_line

    path = str(tmp_path / "evaluation.json")
    runs.write_json(path, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_atomic.os, "fsync", full)
    with pytest.raises(OSError) as info:
        runs.write_json(path, {"new": True})
    assert one_line(info.value) == f"No space left on device: {path}"
    assert json.load(open(path)) == {"old": True}
    assert os.listdir(tmp_path) == ["evaluation.json"]


def test_clean_up_removes_only_the_runs_own_temporary_files(tmp_path):
    mine = tmp_path / ".checkpoint.pt.0123456789ab.tmp"
    mine.write_bytes(b"partial")
    (tmp_path / ".notes.tmp").write_text("the user's")
    (tmp_path / ".data.tmp").mkdir()
    (tmp_path / ".config.json.0123456789ab.tmp").mkdir()  # a directory of that name is not a temp file
    assert runs.clean_temporary_files(str(tmp_path)) == [mine.name]
    assert sorted(os.listdir(tmp_path)) == [".config.json.0123456789ab.tmp", ".data.tmp", ".notes.tmp"]


def test_a_directory_that_holds_no_run_is_refused_and_left_alone(tmp_path):
    project = tmp_path / "project"
    (project / "figures").mkdir(parents=True)
    (project / "figures" / "training_curves.png").write_bytes(b"the user's figure")
    (project / "metrics.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(ValueError, match="not empty and holds no run") as info:
        train(tiny(epochs=1), str(project), progress=False)
    assert "\n" not in str(info.value)
    assert (project / "figures" / "training_curves.png").read_bytes() == b"the user's figure"
    assert (project / "metrics.jsonl").read_text() == '{"mine": 1}\n'
    assert sorted(os.listdir(project)) == ["figures", "metrics.jsonl"]  # not even a lock file
    empty = tmp_path / "empty"
    empty.mkdir()
    runs.check_run_dir(str(empty))  # an empty directory is fine


def test_overwrite_replaces_only_the_runs_own_files(tmp_path):
    run = tmp_path / "run"
    train(tiny(epochs=1), str(run), progress=False)
    (run / "figures").mkdir()
    (run / "figures" / "samples.png").write_bytes(b"drawn by the run")
    (run / "figures" / "mine.png").write_bytes(b"the user's")
    (run / "notes.txt").write_text("the user's")
    train(tiny(epochs=1, seed=3), str(run), progress=False, overwrite=True)
    assert (run / "figures" / "mine.png").read_bytes() == b"the user's"
    assert (run / "notes.txt").read_text() == "the user's"
    assert not (run / "figures" / "samples.png").exists()  # the old run's figure went with it
    assert runs.load_config(str(run)).seed == 3 and not (run / runs.ASIDE_NAME).exists()


class _FailsAtFirstEpoch:
    def on_epoch_end(self, trainer, record):
        raise RuntimeError("the new run failed")


def test_a_failed_overwrite_keeps_the_old_run(tmp_path):
    run = tmp_path / "run"
    train(tiny(epochs=2), str(run), progress=False)
    names = ("config.json", "checkpoint.pt", "best.pt", "metrics.jsonl")
    before = {name: (run / name).read_bytes() for name in names}
    with pytest.raises(RuntimeError, match="the new run failed"):
        train(
            tiny(epochs=3, seed=5), str(run), progress=False, overwrite=True, callbacks=[_FailsAtFirstEpoch()]
        )
    assert {name: (run / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(run)) == [".lock", "best.pt", "checkpoint.pt", "config.json", "metrics.jsonl"]


def test_an_overwrite_cut_short_by_a_kill_is_settled_by_the_next_command(tmp_path):
    run = str(tmp_path / "run")
    train(tiny(epochs=1), run, progress=False)
    old = open(os.path.join(run, "checkpoint.pt"), "rb").read()
    with runs.lock_run(run):  # what a killed --overwrite leaves: the old run aside, the new one's config
        runs.set_aside(run)
        runs.save_config(tiny(epochs=1, seed=9), run)
    resumed = resume(run, epochs=2, progress=False)  # the old run is back, and resumes
    assert resumed.config.seed == 0 and resumed.epoch == 2
    assert not os.path.exists(os.path.join(run, runs.ASIDE_NAME))
    with runs.lock_run(run):  # with the new run's checkpoint written, the old run is dropped
        runs.set_aside(run)
        save_checkpoint({"new": torch.ones(1)}, os.path.join(run, "checkpoint.pt"))
        assert runs.settle_overwrite(run) == "dropped"
    assert old != open(os.path.join(run, "checkpoint.pt"), "rb").read()
    assert not os.path.exists(os.path.join(run, runs.ASIDE_NAME))


# ------------------------------------------------------------------ checkpoints checked by meaning
def _mutations():
    def drop(key):
        return lambda s: s.pop(key)

    def put(key, value):
        return lambda s: s.__setitem__(key, value)

    return {
        "no optimizer": (drop("optimizer"), "no 'optimizer' entry"),
        "no rng": (drop("rng"), "no 'rng' entry"),
        "model a list": (put("model", [1, 2]), "'model' entry is a list"),
        "epoch -5": (put("epoch", -5), "'epoch' is -5"),
        "epoch twenty": (put("epoch", "twenty"), "'epoch' is 'twenty'"),
        "epoch past the run": (put("epoch", 25), "epoch 25 is past the run's 2 epochs"),
        "rng without numpy": (lambda s: s["rng"].pop("numpy"), "generator states"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_a_checkpoint_wrong_in_meaning_is_damaged_in_one_line(short_run, tmp_path, case):
    mutate, message = _mutations()[case]
    state = load_checkpoint(os.path.join(short_run[0], "checkpoint.pt"))
    mutate(state)
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"checkpoint {path} is damaged: ") and message in text and "\n" not in text


def test_a_checkpoint_that_is_a_directory_is_named_as_such(tmp_path):
    (tmp_path / "checkpoint.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file") as info:
        load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert "checkpoint.pt/checkpoint.pt" not in str(info.value)


def test_hints_are_shell_quoted():
    assert runs.restart_command("my runs/a b") == (
        "pyro-decomp train --config 'my runs/a b/config.json' --run-dir 'my runs/a b' --overwrite"
    )


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

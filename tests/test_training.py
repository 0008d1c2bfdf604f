"""train and resume: the files of a run, and a resumed run equal to one that never stopped."""

import json
import os

import numpy as np
import pytest
import torch
from tiny import assert_bitwise_equal, params, tiny

from pyro_decomp.config import RunConfig
from pyro_decomp.runs import read_metrics
from pyro_decomp.training import resume, train
from pyro_decomp.version import __version__


def test_run_files_are_plain_and_complete(short_run):
    run_dir, final = short_run
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["epochs"] == 2 and config["pyro_decomp_version"] == __version__
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"loss", "reconstruction", "kl", "divergence"} <= set(r) and np.isfinite(r["loss"])
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0 and state["global_step"] == 10
    assert_bitwise_equal(state["model"], final)
    assert state["optimizer"] and all("state" in s for s in state["optimizer"].values())
    assert {"torch", "python", "numpy"} <= set(state["rng"])


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
    assert resumed.epoch == 4 and resumed.trained_epochs == 2 and whole.trained_epochs == 4
    assert_bitwise_equal(params(resumed.vae), params(whole.vae))
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for name in a["optimizer"]:
        for key, value in a["optimizer"][name]["state"][0].items():
            assert torch.equal(value, b["optimizer"][name]["state"][0][key]), (name, key)
    losses = [[r["loss"] for r in read_metrics(str(tmp_path / d))] for d in ("whole", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert json.load(open(tmp_path / "split" / "config.json"))["epochs"] == 4


# ------------------------------------------------------------------ refused before any work
class _Waits:
    """Holds the training at the end of its first epoch until ``release`` is set."""

    def __init__(self):
        import threading

        self.started, self.release = threading.Event(), threading.Event()

    def on_epoch_end(self, trainer, record):
        self.started.set()
        assert self.release.wait(60)


def test_a_second_training_in_another_thread_is_refused_and_neither_is_damaged(tmp_path):
    import threading

    from pyro_decomp.training import TrainingBusy

    waits, outcome = _Waits(), {}

    def first():
        outcome["run"] = train(tiny(epochs=2), str(tmp_path / "a"), progress=False, callbacks=[waits])

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert waits.started.wait(60)
        with pytest.raises(TrainingBusy, match="one training per process at a time") as info:
            train(tiny(epochs=1), str(tmp_path / "b"), progress=False)
        assert "\n" not in str(info.value) and not os.path.exists(tmp_path / "b")
        with pytest.raises(TrainingBusy):
            resume(str(tmp_path / "a"), epochs=3, progress=False)
    finally:
        waits.release.set()
        thread.join(60)
    assert outcome["run"].epoch == 2 and [r["epoch"] for r in read_metrics(str(tmp_path / "a"))] == [1, 2]
    assert train(tiny(epochs=1), str(tmp_path / "b"), progress=False).epoch == 1  # free again


@pytest.mark.parametrize("latent_dim", [10**6, 10**9])
def test_a_model_too_large_for_memory_fails_before_any_directory_is_made(tmp_path, latent_dim):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="GiB .* more than the .* GiB") as info:
        # the paper's pinwheel setting but for D: batches of 400 make (400, 400, D) divergence tables
        train(RunConfig(latent_dim=latent_dim, prior="gaussian", device="cpu"), str(run), progress=False)
    assert "--latent-dim" in str(info.value) and "\n" not in str(info.value)
    assert not run.exists()


def test_resume_of_a_file_or_a_dangling_link_names_it(tmp_path):
    (tmp_path / "file").write_text("{}")
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        resume(str(tmp_path / "file"), progress=False)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with pytest.raises(ValueError, match="symbolic link to nothing"):
        train(tiny(epochs=1), str(tmp_path / "dangling"), progress=False)
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(ValueError, match="symbolic link to nothing"):
        train(tiny(epochs=1), str(tmp_path / "loop"), progress=False)

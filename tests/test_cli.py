"""The ``pyro-decomp`` command line end to end: train, evaluate, resume after a kill, Ctrl-C, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_decomp.cli import build_parser, main
from pyro_decomp.config import RunConfig
from pyro_decomp.runs import load_checkpoint, load_config, read_metrics
from pyro_decomp.training import train

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--data-option", "num_per_class=10", "--batch-size", "8", "--no-progress"]
SHAPES = ["--dataset", "shapes", "--data-option", "cache=false", "--data-option", "progress=false"]
SHAPES += ["--data-option", 'subsample={"scale": 6, "orientation": 40, "position_x": 16, "position_y": 16}']


def assert_png(path):
    data = open(path, "rb").read()
    assert data.startswith(PNG) and len(data) > 1000, path


def cli(*args, **kwargs):
    """Run ``python -m pyro_decomp`` in a subprocess (one thread, like the in-process tests)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_decomp", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def wait_for(path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_train_then_evaluate_writes_well_formed_files(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "3", "--run-dir", run]) == 0
    out = capsys.readouterr().out
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl"):
        assert os.path.join(run, name) in out
    config = json.load(open(os.path.join(run, "config.json")))
    assert RunConfig.from_dict(config) == load_config(run) and config["epochs"] == 3
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["epoch"] == 3
    for name in ("aggregate_posterior", "training_curves"):
        assert_png(os.path.join(run, "figures", name + ".png"))

    assert main(["evaluate", run, "--iwae-samples", "5", "--max-points", "40"]) == 0
    result = json.load(open(os.path.join(run, "evaluation.json")))
    assert result["epoch"] == 3 and result["test_points"] == 40
    for key in (
        "reconstruction",
        "kl",
        "divergence",
        "loss",
        "reconstruction_squared_error",
        "hoyer_sparsity",
    ):
        assert isinstance(result[key], float), key
    assert result["iwae_log_likelihood"]["num_samples"] == 5
    assert 0 <= result["overlap"]["mutual_information"] <= result["overlap"]["upper_bound"] + 1e-6
    assert result["alignment"]["divergence"] == "inclusive-kl"
    assert "disentanglement" not in result  # pinwheel has no ground-truth factors
    for path in result["figures"].values():
        assert_png(path)
    assert {"reconstructions", "samples", "latent_magnitude"} <= set(result["figures"])


def test_ground_truth_run_gets_disentanglement_and_mig(tmp_path):
    run = str(tmp_path / "shapes")
    assert (
        main(["train", *SHAPES, "--epochs", "1", "--batch-size", "6", "--run-dir", run, "--no-progress"]) == 0
    )
    argv = ["evaluate", run, "--iwae-samples", "2", "--num-votes", "200", "--votes-size", "4"]
    assert main(argv) == 0
    result = json.load(open(os.path.join(run, "evaluation.json")))
    assert result["factor_points"] == 12
    assert 0.0 <= result["disentanglement"] <= 1.0 and 0.0 <= result["mig"] <= 1.0
    assert {"reconstructions", "samples", "traversals", "latent_magnitude"} <= set(result["figures"])
    for path in result["figures"].values():
        assert_png(path)


def test_no_arguments_mean_the_papers_pinwheel_setting():
    from pyro_decomp.cli import _config_from_args

    args = build_parser().parse_args(["train"])
    assert _config_from_args(args) == RunConfig()
    paper = RunConfig()
    assert (paper.prior, paper.beta, paper.alpha, paper.divergence) == ("pinwheel", 0.0, 1.0, "inclusive-kl")
    assert (paper.latent_dim, paper.batch_size, paper.lr, paper.epochs) == (2, 400, 1e-3, 500)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: per data set -- pinwheel: 500;" in text  # --epochs
    assert "(default: pinwheel)" in text  # --dataset
    for option in (
        "--beta",
        "--alpha",
        "--divergence",
        "--resume",
        "--checkpoint-every",
        "--global-divergence",
    ):
        assert option in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "(default: 100)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--beta", "-1"], "beta must be >= 0.0"),
        (["train", "--alpha", "-2"], "alpha must be >= 0.0"),
        (["train", "--epochs", "0"], "epochs must be > 0"),
        (["train", "--epochs", "two"], "epochs must be an integer"),
        (["train", "--batch-size", "1"], "batch-size must be > 1"),
        (["train", "--lr", "-0.1"], "lr must be > 0.0"),
        (["train", "--num-particles", "0"], "num-particles must be > 0"),
        (["train", "--device", "tpu"], "unknown device 'tpu'"),
        (["train", "--prior", "laplace"], "invalid choice: 'laplace'"),
        (["train", "--prior-option", "novalue"], "expected KEY=VALUE"),
        (["evaluate", "somewhere", "--iwae-samples", "0"], "iwae-samples must be > 0"),
    ],
)
def test_bad_values_are_argparse_errors_that_name_them(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_errors_found_while_building_name_the_value(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--data-option", "num_per_class=-1", "--run-dir", run, "--no-progress"]) == 2
    assert "num_per_class" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--device", "cuda", "--run-dir", run]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_resume_keeps_the_runs_settings_and_refuses_others(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", run, "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", run, "--beta", "1"]) == 2
    assert "--beta cannot be changed when resuming" in capsys.readouterr().err
    assert main(["train", *TINY, "--run-dir", run]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run configuration" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--epochs", "2", "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert load_config(run).epochs == 2


def test_run_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    proc = cli(
        "train", *TINY, "--epochs", "100000", "--checkpoint-every", "3", "--run-dir", run, "--no-figures"
    )
    wait_for(os.path.join(run, "checkpoint.pt"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))  # whatever moment the kill came, it loads
    epoch = state["epoch"]
    assert epoch >= 3 and epoch % 3 == 0 and state["step"] == 0
    total = epoch + 2
    assert main(["train", "--resume", run, "--epochs", str(total), "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, total + 1))
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    # the resumed run is the run that was never killed
    reference = train(load_config(run), str(tmp_path / "reference"), progress=False)
    resumed = load_checkpoint(os.path.join(run, "checkpoint.pt"))["model"]
    for k, t in reference.vae.state_dict().items():
        assert torch.equal(t, resumed[k]), k


def test_ctrl_c_writes_a_checkpoint_and_exits_130(tmp_path):
    run = str(tmp_path / "run")
    proc = cli(
        "train", *TINY, "--epochs", "100000", "--checkpoint-every", "1000", "--run-dir", run, "--no-figures"
    )
    wait_for(os.path.join(run, "metrics.jsonl"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "training interrupted" in err and f"--resume {run}" in err
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert state["epoch"] >= 1 and state["global_step"] == 5 * state["epoch"] + state["step"]
    total = state["epoch"] + 1
    assert main(["train", "--resume", run, "--epochs", str(total), "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, total + 1))


@pytest.mark.slow
def test_pyro_decomp_train_without_arguments_finishes_in_a_minute(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_decomp", "train", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, elapsed
    (run,) = os.listdir(tmp_path / "runs")
    run = tmp_path / "runs" / run
    assert f"checkpoint:  {os.path.join('runs', run.name, 'checkpoint.pt')}" in proc.stdout
    assert load_checkpoint(str(run / "checkpoint.pt"))["epoch"] == 500
    assert len(read_metrics(str(run))) == 500
    assert_png(run / "figures" / "aggregate_posterior.png")


def test_reproduce_parser():
    parser = build_parser()
    args = parser.parse_args(["reproduce", "all", "--scale", "cpu", "--out", "d", "--seeds", "0", "2"])
    assert (args.experiment, args.scale, args.out, args.seeds, args.data_root) == (
        "all",
        "cpu",
        "d",
        [0, 2],
        None,
    )
    assert callable(args.func) and args.subparser is not None
    args = parser.parse_args(["reproduce", "clustering", "--scale", "smoke", "--out", "d", "--seeds", "-1"])
    assert args.func(args, args.subparser) == 2  # a bad value is a one-line error that names it
    for bad in (
        ["reproduce", "nothing", "--scale", "cpu", "--out", "d"],
        ["reproduce", "all", "--scale", "tiny", "--out", "d"],
        ["reproduce", "all", "--out", "d"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# ------------------------------------------------------------------------------------------- one config path
def _train_flags():
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    return {a.dest: a for a in train_parser._actions if a.option_strings and a.dest != "help"}


def test_the_train_flags_are_exactly_the_run_config_fields():
    import dataclasses

    from pyro_decomp.cli import _RUN_FLAGS, config_flag

    flags = _train_flags()
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(flags) - set(_RUN_FLAGS) == fields  # one flag per field, and no other setting
    for name in fields:
        assert config_flag(name) == "--" + name.replace("_", "-") in flags[name].option_strings
        assert flags[name].help  # the field's metadata


def test_config_file_with_an_overriding_flag(tmp_path):
    base = RunConfig(data_options={"num_per_class": 10}, batch_size=8, epochs=2, beta=0.25, seed=5)
    path = tmp_path / "base.json"
    path.write_text(base.to_json())
    run = str(tmp_path / "run")
    argv = [
        "train",
        "--config",
        str(path),
        "--beta",
        "0.75",
        "--run-dir",
        run,
        "--no-progress",
        "--no-figures",
    ]
    assert main(argv) == 0
    assert load_config(run) == base.replace(beta=0.75)


def test_resume_honours_its_flags_and_reports_the_epochs_it_trained(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "2", "--run-dir", run, "--no-figures"]) == 0
    capsys.readouterr()
    argv = ["train", "--resume", run, "--epochs", "5", "--checkpoint-every", "7", "--num-threads", "2"]
    assert main([*argv, "--no-progress", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "trained 3 epochs" in out and "epoch 5 of 5" in out
    saved = load_config(run)
    assert (saved.epochs, saved.checkpoint_every, saved.num_threads) == (5, 7, 2)
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["config"]["checkpoint_every"] == 7
    assert main(["train", "--resume", run, "--beta", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--beta" in err and len(err.strip().splitlines()) == 1

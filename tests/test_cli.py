"""The ``pyro-decomp`` command line end to end: train, evaluate, resume after a kill, Ctrl-C, errors."""

import ctypes
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from launch import torchrun_train

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
    from pyro_decomp.cli.flags import config_from_args

    args = build_parser().parse_args(["train"])
    assert config_from_args(args) == RunConfig()
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
    assert args.workers == 2  # two runs at a time by default, one per core of a 2-core CPU
    assert (args.experiment, args.scale, args.out, args.seeds, args.data_root) == (
        "all",
        "cpu",
        "d",
        [0, 2],
        None,
    )
    assert callable(args.func) and args.subparser is not None
    assert args.report is None  # OUT/report.md
    assert (
        parser.parse_args(["reproduce", "all", "--scale", "cpu", "--out", "d", "--report", "r.md"]).report
        == "r.md"
    )
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

    from pyro_decomp.cli.flags import RUN_FLAGS, config_flag
    from pyro_decomp.config import RECORDS

    flags = _train_flags()
    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(RECORDS)  # records are written, not set
    assert set(flags) - set(RUN_FLAGS) == fields  # one flag per field, and no other setting
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


# ------------------------------------------------------------------ a run directory that never loses work
QUICK = [*TINY, "--no-figures"]
LONG = [*QUICK, "--epochs", "100000", "--checkpoint-every", "1000"]


def one_error_line(err):
    """The stderr of a failed command: exactly one line, ``pyro-decomp: error: ...``, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-decomp: error: "), err
    assert "Traceback" not in err
    return lines[0]


def first_to_exit(procs, timeout=60.0):
    """Wait until one of ``procs`` exits; returns it (the others are left running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.05)
    for proc in procs:
        proc.kill()
    raise AssertionError(f"none of the commands ended in {timeout} s")


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    return proc.communicate(timeout=60)


def test_a_failed_overwrite_keeps_the_old_run_and_a_good_one_leaves_none_of_its_files(tmp_path, capsys):
    run = str(tmp_path / "V")
    assert main(["train", *TINY, "--run-dir", run, "--epochs", "50"]) == 0
    with open(os.path.join(run, "evaluation.json"), "w") as f:
        json.dump({"epoch": 50}, f)
    assert os.listdir(os.path.join(run, "figures"))
    kept = {name: open(os.path.join(run, name), "rb").read() for name in ("checkpoint.pt", "metrics.jsonl")}
    capsys.readouterr()
    argv = ["train", *QUICK, "--run-dir", run, "--overwrite", "--prior", "student-t"]
    assert main([*argv, "--prior-option", "dff=3", "--epochs", "2"]) != 0
    assert "dff" in one_error_line(capsys.readouterr().err)
    for name, data in kept.items():  # the new run was validated before anything was removed
        assert open(os.path.join(run, name), "rb").read() == data, name
    assert main(["train", *QUICK, "--run-dir", run, "--overwrite", "--epochs", "2"]) == 0
    assert not os.path.exists(os.path.join(run, "figures"))
    assert not os.path.exists(os.path.join(run, "evaluation.json"))
    if os.path.exists(os.path.join(run, "best.pt")):  # the new run's own best
        assert load_checkpoint(os.path.join(run, "best.pt"))["epoch"] <= 2
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["epoch"] == 2


def _main_to_file(argv, err_path):
    with open(err_path, "w") as err, open(os.devnull, "w") as out:
        os.dup2(err.fileno(), 2)
        os.dup2(out.fileno(), 1)
        sys.stderr, sys.stdout = err, out
        code = main(list(argv))
        err.flush()
    os._exit(code)


class Forked:
    """``main(argv)`` in a forked copy of this process: a real process of its own that starts at once (an
    interpreter started afresh spends seconds importing torch, too long to start two at the same moment)."""

    def __init__(self, *argv):
        fd, self.err_path = tempfile.mkstemp(suffix=".err")
        os.close(fd)
        self.process = multiprocessing.get_context("fork").Process(
            target=_main_to_file, args=(argv, self.err_path), daemon=True
        )
        self.process.start()
        self.pid = self.process.pid
        self.argv = argv

    def poll(self):
        return self.process.exitcode

    @property
    def stderr(self):
        return open(self.err_path)

    def communicate(self, timeout=60):
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            raise AssertionError(f"{self.argv} did not end in {timeout} s")
        self.returncode = self.process.exitcode
        err = open(self.err_path).read()
        os.remove(self.err_path)
        return "", err

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def kill(self):
        self.process.kill()


def _started_together(*commands):
    """Start the commands at the same moment; exactly one keeps running and the others are refused with one
    line naming its pid. Returns the one that runs."""
    procs = [Forked(*command) for command in commands]
    refused = first_to_exit(procs)
    running = [p for p in procs if p is not refused]
    assert len(running) == len(procs) - 1
    holder = running[0]
    for proc in [refused] + running[1:]:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert f"pid {holder.pid}" in one_error_line(err)
    assert holder.poll() is None
    return holder


def test_two_trainings_started_together_one_runs_and_evaluate_waits_for_it(tmp_path, capsys):
    run = str(tmp_path / "C")
    holder = _started_together(*[("train", *LONG, "--run-dir", run, "--seed", seed) for seed in ("1", "2")])
    wait_for(os.path.join(run, "metrics.jsonl"), holder)
    seed = holder.argv[holder.argv.index("--seed") + 1]
    assert load_config(run).seed == int(seed)  # the run of the process that holds the directory
    assert main(["evaluate", run, "--no-progress"]) != 0
    assert f"pid {holder.pid}" in one_error_line(capsys.readouterr().err)
    _, err = stop(holder)
    assert holder.returncode == 128 + signal.SIGTERM, err
    assert load_config(run).seed == int(seed)


def test_two_resumes_started_together_one_runs_and_a_killed_ones_lock_never_blocks(tmp_path):
    run = str(tmp_path / "C")
    assert main(["train", *QUICK, "--run-dir", run, "--epochs", "1"]) == 0
    resume = ("train", "--resume", run, "--epochs", "100000", "--no-progress", "--no-figures")
    holder = _started_together(resume, resume)
    while load_config(run).epochs != 100000:  # the holder is training
        assert holder.poll() is None
        time.sleep(0.05)
    stop(holder, signal.SIGKILL)
    assert holder.returncode == -signal.SIGKILL
    assert open(os.path.join(run, ".lock")).read().strip() == str(holder.pid)  # left by the killed process
    assert main(["train", "--resume", run, "--epochs", "2", "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_a_damaged_metrics_line_costs_no_other_record(tmp_path, capsys):
    run = str(tmp_path / "M")
    assert main(["train", *QUICK, "--run-dir", run, "--epochs", "10"]) == 0
    path = os.path.join(run, "metrics.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    lines[2] = lines[2][:25] + "\x00garbage\n"
    open(path, "w").write("".join(lines))
    capsys.readouterr()
    assert main(["train", "--resume", run, "--epochs", "12", "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, *range(4, 13)]
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "metrics.jsonl" in line]  # one line, no source dump
    assert warning.startswith("pyro-decomp: warning:") and "Traceback" not in err
    assert re.search(r"\b3\b", warning.split("metrics.jsonl")[-1]), warning


def test_resume_refuses_a_config_edited_by_hand_naming_the_setting(tmp_path, capsys):
    run = str(tmp_path / "E")
    assert main(["train", *QUICK, "--run-dir", run, "--epochs", "2"]) == 0
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    config["beta"] = config["beta"] + 0.5
    json.dump(config, open(path, "w"))
    capsys.readouterr()
    assert main(["train", "--resume", run, "--epochs", "3", "--no-progress", "--no-figures"]) != 0
    assert "beta" in one_error_line(capsys.readouterr().err)
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["epoch"] == 2


def test_sigterm_checkpoints_the_current_step_exits_143_and_resumes_as_if_never_stopped(tmp_path):
    run = str(tmp_path / "S")
    proc = cli("train", *LONG, "--run-dir", run)
    wait_for(os.path.join(run, "metrics.jsonl"), proc)
    _, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and f"--resume {run}" in err
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    epoch, step = state["epoch"], state["step"]
    assert epoch >= 1 and state["global_step"] == 5 * epoch + step  # 40 points in batches of 8
    assert read_metrics(run)[-1]["epoch"] == epoch
    total = epoch + 2
    assert main(["train", "--resume", run, "--epochs", str(total), "--no-progress", "--no-figures"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, total + 1))
    reference = train(load_config(run), str(tmp_path / "reference"), progress=False)
    resumed = load_checkpoint(os.path.join(run, "checkpoint.pt"))["model"]
    for k, t in reference.vae.state_dict().items():
        assert torch.equal(t, resumed[k]), k


def _torchrun(*args):
    result = torchrun_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]


def _same(a, b) -> bool:
    """Nested containers of tensors and plain values, equal bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.slow
def test_torchrun_resume_is_bit_for_bit_the_run_that_never_stopped(tmp_path):
    straight, halves = str(tmp_path / "straight"), str(tmp_path / "halves")
    _torchrun(*QUICK, "--epochs", "20", "--run-dir", straight)
    _torchrun(*QUICK, "--epochs", "10", "--run-dir", halves)
    _torchrun("--resume", halves, "--epochs", "20", "--no-progress", "--no-figures")
    a = load_checkpoint(os.path.join(straight, "checkpoint.pt"))
    b = load_checkpoint(os.path.join(halves, "checkpoint.pt"))
    assert a["epoch"] == b["epoch"] == 20 and a["global_step"] == b["global_step"]
    assert len(b["rng_ranks"]) == 2  # every rank's generators
    assert not torch.equal(b["rng_ranks"][0]["torch"], b["rng_ranks"][1]["torch"])
    for k, t in a["model"].items():
        assert torch.equal(t, b["model"][k]), k
    assert _same(a["optimizer"], b["optimizer"])  # the Adam moments too
    assert [r["epoch"] for r in read_metrics(halves)] == list(range(1, 21))


def _flip_bytes_inside_the_largest_weight(path, count=8):
    model = load_checkpoint(path)["model"]
    weight = max(model.values(), key=lambda t: t.numel())
    data = bytearray(open(path, "rb").read())
    raw = weight.numpy().tobytes()
    assert data.count(raw) == 1
    start = data.find(raw) + len(raw) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_flipped_bytes_in_a_weight_are_reported_as_damaged(tmp_path, capsys):
    run = str(tmp_path / "K")
    assert main(["train", *QUICK, "--run-dir", run, "--epochs", "2"]) == 0
    path = os.path.join(run, "checkpoint.pt")
    _flip_bytes_inside_the_largest_weight(path)
    capsys.readouterr()
    for argv in (
        ["train", "--resume", run, "--epochs", "3", "--no-progress"],
        ["evaluate", run, "--no-progress"],
    ):
        assert main(argv) != 0
        line = one_error_line(capsys.readouterr().err)
        assert path in line and "damaged" in line and "CRC" in line, line
    assert not os.path.exists(os.path.join(run, "evaluation.json"))


def test_user_errors_are_one_line_never_a_traceback(tmp_path, capsys):
    def error(*argv):
        capsys.readouterr()
        assert main(list(argv)) != 0
        return one_error_line(capsys.readouterr().err)

    assert "foo" in error("train", *QUICK, "--data-option", "foo=1", "--run-dir", str(tmp_path / "foo"))
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    assert str(afile) in error("train", *QUICK, "--run-dir", str(afile / "below"))
    assert str(afile) in error("train", *QUICK, "--run-dir", str(afile))

    base = str(tmp_path / "base")
    argv = ["train", *QUICK, "--prior", "gaussian", "--latent-dim", "3", "--epochs", "1", "--run-dir", base]
    assert main(argv) == 0

    def copy(name):
        return shutil.copytree(base, str(tmp_path / name))

    run = copy("config-is-a-directory")
    os.remove(os.path.join(run, "config.json"))
    os.mkdir(os.path.join(run, "config.json"))
    assert "config.json" in error("train", "--resume", run, "--no-progress")
    assert "config.json" in error("evaluate", run, "--no-progress")

    run = copy("latent-dim-edited")
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    config["latent_dim"] = 4
    json.dump(config, open(path, "w"))
    assert "config.json" in error("evaluate", run, "--no-progress")
    assert "latent_dim" in error("train", "--resume", run, "--no-progress")

    run = copy("empty-checkpoint")
    open(os.path.join(run, "checkpoint.pt"), "wb").close()
    for argv in (["train", "--resume", run, "--no-progress"], ["evaluate", run, "--no-progress"]):
        line = error(*argv)
        assert os.path.join(run, "checkpoint.pt") in line and "damaged" in line

    root = tmp_path / "dsprites"
    root.mkdir()
    (root / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz").write_bytes(b"not the dSprites release" * 100)
    argv = ["--batch-size", "8", "--no-progress", "--run-dir", str(tmp_path / "d")]
    line = error("train", "--dataset", "dsprites", "--data-root", str(root), *argv)
    assert "dsprites_ndarray" in line


def _without_root_privileges():
    """A preexec_fn that takes away root's right to ignore file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)
    from the child; None when not root."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def drop():
        for cap in (cap_dac_override, cap_dac_read_search):
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                os._exit(99)

    return drop


def test_unwritable_run_directories_are_one_line_errors_before_any_work(tmp_path):
    preexec = _without_root_privileges()
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    run = str(tmp_path / "run")
    try:
        probe = subprocess.run(["touch", str(locked / "x")], preexec_fn=preexec, capture_output=True)
        if probe.returncode == 0:
            pytest.skip("this process may write into a read-only directory (root with CAP_DAC_OVERRIDE kept)")
        assert main(["train", *QUICK, "--run-dir", run, "--epochs", "1"]) == 0
        os.chmod(run, 0o555)
        commands = [
            ["train", *QUICK, "--run-dir", str(locked / "run")],
            ["evaluate", run, "--no-progress"],
        ]
        # one interpreter runs both commands (an import of torch and Pyro is most of the time)
        script = "import sys\nfrom pyro_decomp.cli import main\n"
        script += f"for argv in {commands!r}:\n    print(main(argv), file=sys.stderr, flush=True)\n"
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=preexec,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 4, proc.stderr
        for message, code in (lines[0:2], lines[2:4]):
            assert int(code) != 0 and "cannot write" in one_error_line(message)
        assert not os.path.exists(os.path.join(run, "evaluation.json"))
    finally:
        locked.chmod(0o755)
        if os.path.exists(run):
            os.chmod(run, 0o755)


def test_a_nan_loss_stops_with_a_few_lines_naming_where(tmp_path, capsys):
    run = str(tmp_path / "N")
    assert main(["train", "--lr", "1e10", "--epochs", "200", "--run-dir", run, "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) < 5, err
    assert "epoch" in err and "step" in err and "loss" in err
    assert "tensor(" not in err and "Traceback" not in err


def test_messages_after_damage_or_an_early_kill_lead_somewhere(tmp_path, capsys):
    base = str(tmp_path / "base")
    assert main(["train", *QUICK, "--run-dir", base, "--epochs", "1"]) == 0
    with open(os.path.join(base, "checkpoint.pt"), "wb") as f:
        f.write(random.Random(0).randbytes(20000))
    capsys.readouterr()
    for argv in (["train", "--resume", base, "--no-progress"], ["evaluate", base, "--no-progress"]):
        assert main(argv) != 0
        out, err = capsys.readouterr()
        assert "damaged" in one_error_line(err) and "weights_only" not in out + err

    # killed before its first checkpoint: neither command sends the user to the other
    run = str(tmp_path / "K")
    proc = Forked("train", *QUICK, "--epochs", "100000", "--checkpoint-every", "100000", "--run-dir", run)
    wait_for(os.path.join(run, "metrics.jsonl"), proc)
    stop(proc, signal.SIGKILL)
    assert not os.path.exists(os.path.join(run, "checkpoint.pt"))
    assert main(["train", *QUICK, "--run-dir", run, "--epochs", "2"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "--resume" not in line and "--overwrite" in line
    assert main(["train", "--resume", run, "--epochs", "2", "--no-progress"]) != 0
    line = one_error_line(capsys.readouterr().err)
    command = line[line.index("pyro-decomp train ") :].split()
    assert "--overwrite" in command and "--resume" not in command
    assert main([*command[1:], "--epochs", "2", "--no-progress", "--no-figures"]) == 0  # as the message says

    # temporary files of writes cut short by a kill are gone after a resume
    for name in (
        ".config.json.0123456789ab.tmp",
        ".metrics.jsonl.0123456789ab.tmp",
        ".best.pt.0123456789ab.tmp",
    ):
        open(os.path.join(run, name), "wb").close()
    assert main(["train", "--resume", run, "--epochs", "3", "--no-progress", "--no-figures"]) == 0
    assert not [n for n in os.listdir(run) if n.startswith(".") and n.endswith(".tmp")]


# ------------------------------------------------------------------ the run directory's last holes
def test_sighup_writes_a_checkpoint_and_exits_129(tmp_path):
    run = str(tmp_path / "run")
    proc = cli(
        "train", *TINY, "--epochs", "100000", "--checkpoint-every", "1000", "--run-dir", run, "--no-figures"
    )
    wait_for(os.path.join(run, "metrics.jsonl"), proc)
    proc.send_signal(signal.SIGHUP)  # the SSH session closed
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "interrupted by SIGHUP" in err and f"--resume {run}" in err
    assert load_checkpoint(os.path.join(run, "checkpoint.pt"))["epoch"] >= 1


def test_evaluate_refuses_a_symlinked_lock_in_one_line_and_leaves_its_target(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    from pyro_decomp.config import RunConfig
    from pyro_decomp.runs import save_config

    save_config(RunConfig(), str(run))  # a run directory, into which a link was planted
    os.symlink(victim, run / ".lock")
    assert main(["evaluate", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and str(run / ".lock") in err
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--seed", "99999999999999999999"], "seed must be <= 4294967295"),
        (["train", "--seed", "4294967296"], "seed must be <= 4294967295"),
        (["train", "--lr", "1e400"], "lr must be a finite number"),
        (["evaluate", "run", "--seed", "4294967296"], "seed must be <= 4294967295"),
        (["reproduce", "clustering", "--scale", "smoke", "--out", "o", "--seeds", "1e3"], "seeds must be an"),
    ],
)
def test_numbers_out_of_range_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_numbers_out_of_range_in_a_config_file_name_the_setting(tmp_path, capsys):
    path = tmp_path / "config.json"
    for text, message in [
        ('{"epochs": 1e400}', "epochs must be a finite number"),
        ('{"seed": 4294967296}', "seed"),
    ]:
        path.write_text(text)
        assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not os.path.exists(tmp_path / "run")


def test_figures_are_drawn_under_the_lock_and_hints_are_shell_quoted(tmp_path, capsys, monkeypatch):
    import pyro_decomp.cli.run_commands as cli_module
    from pyro_decomp.runs import RunLocked, lock_run

    draw, held = cli_module.write_figures, []

    def checked(vae, config, dataset, directory, **kwargs):
        with pytest.raises(RunLocked):  # no other command can start in the run directory meanwhile
            with lock_run(os.path.dirname(directory)):
                pass
        held.append(directory)
        return draw(vae, config, dataset, directory, **kwargs)

    monkeypatch.setattr(cli_module, "write_figures", checked)
    run = str(tmp_path / "my runs" / "a b")
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", run]) == 0
    out = capsys.readouterr().out
    assert held == [os.path.join(run, "figures")]
    assert f"pyro-decomp evaluate '{run}'" in out
    assert_png(os.path.join(run, "figures", "training_curves.png"))


def test_resume_of_a_regular_file_names_it(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path / "config.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a run directory" in err and "JSON" not in err


# ------------------------------------------------------------------ syntax and wording
def test_a_malformed_dict_option_exits_2_with_one_line(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "pyro_decomp",
        "train",
        *SHAPES,
        "--data-options",
        "subsample=orientation:10",
    ]
    proc = subprocess.run([*argv, "--run-dir", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "--data-options subsample=orientation:10" in line and """'subsample={"orientation": 10}'""" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["subsample=10", "num_per_class={5", "num_per_class=[1, 2"])
def test_other_values_that_are_not_the_json_they_look_like_are_one_line(value, capsys):
    assert main(["train", "--data-options", value, "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--data-options" in line and "JSON" in line


def test_help_shows_the_dict_syntax_and_defaults_without_rst(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert """'subsample={"orientation": 10}'""" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    assert "thread (default: 2)" in " ".join(capsys.readouterr().out.split())


def test_one_epoch_is_singular(tmp_path, capsys):
    assert main(["train", *TINY, "--epochs", "1", "--no-figures", "--run-dir", str(tmp_path / "r")]) == 0
    assert "trained 1 epoch in" in capsys.readouterr().out


def test_the_readmes_shapes_command_is_the_quick_subsampled_one():
    import pathlib
    import shlex

    from pyro_decomp.cli.flags import config_from_args

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
    line = next(t for t in readme.splitlines() if t.startswith("pyro-decomp train --dataset shapes"))
    argv = shlex.split(line.split("#")[0])[1:]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.data_options["subsample"] == {"orientation": 10, "position_x": 4, "position_y": 4}
    assert "about 5 minutes" in line and "30 hours" in readme and "for a GPU" in readme

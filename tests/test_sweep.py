"""Sweeps: the grid, idempotent runs, the summary, the backends, surviving kills of workers and coordinator.

The reference is a sweep run one run after the other in this process; every other way of running the same
sweep (worker processes, Dask, submitit, killed and resumed) must give bitwise the same final metrics.
"""

import json
import math
import os
import pickle
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny

from pyro_decomp.cli import main
from pyro_decomp.config import RunConfig
from pyro_decomp.runs import read_metrics
from pyro_decomp.sweeps import Local, RunFailed, parse_grid, parse_seeds, plan, sweep
from pyro_decomp.training import train

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the processes in /proc")
GRID = {"beta": [0.5, 2.0]}
SEEDS = [0, 1]
MEASURE = {"max_points": 40, "iwae_samples": 10}


def base(**changes):
    return tiny(**changes).to_dict()


def here():
    """The runs one after the other in this process."""
    return Local(workers=1, in_process=True)


def metrics_of(summary):
    return {r["name"]: r["metrics"] for r in summary["runs"]}


def checkpoint_times(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in Path(out, "runs").glob("*/checkpoint.pt")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 2 β × 2 seeds smoke sweep, one run after the other in this process."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    summary = sweep(base(), GRID, SEEDS, out, executor=here(), measure=MEASURE, log=None)
    return out, summary


# ---------------------------------------------------------------------------------------------- the grid
def test_dry_run_lists_exactly_the_grid(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--grid", "beta=1,2,4", "--grid", "prior=gaussian,student-t"]
    assert main(argv + ["--seeds", "0-1", "--dataset", "shapes", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = [
        f"beta={b}_prior={p}_seed={s}" for b in (1, 2, 4) for p in ("gaussian", "student-t") for s in (0, 1)
    ]
    assert lines[-1] == f"{len(expected)} runs"
    assert [line.split("\t") for line in lines[:-1]] == [[n, str(out / "runs" / n)] for n in expected]
    assert not out.exists()  # a dry run writes nothing


def test_plan_builds_each_config_from_the_base_and_the_grid(tmp_path):
    tasks = plan({"dataset": "pinwheel", "epochs": 3}, {"beta": [1, 4], "alpha": [0.5]}, [3, 7], tmp_path)
    assert [(t.values["beta"], t.values["alpha"], t.values["seed"]) for t in tasks] == [
        (1, 0.5, 3),
        (1, 0.5, 7),
        (4, 0.5, 3),
        (4, 0.5, 7),
    ]
    for t in tasks:
        assert (t.config["beta"], t.config["alpha"], t.config["seed"]) == (
            t.values["beta"],
            t.values["alpha"],
            t.values["seed"],
        )
        assert t.config["epochs"] == 3  # from the base
    assert len({t.run_dir for t in tasks}) == len(tasks)
    # a field the base leaves out takes each data set's own default
    tasks = plan({"epochs": 3}, {"dataset": ["pinwheel", "shapes"]}, [0], tmp_path)
    for t in tasks:
        assert t.config["prior"] == RunConfig(dataset=t.values["dataset"]).prior
    assert tasks[0].config["prior"] != tasks[1].config["prior"]


def test_parse_seeds_and_grid():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7-8") == [0, 3, 7, 8]
    assert parse_grid(["beta=1,2.5", "prior=gaussian,student-t", "analytic-kl=true,false"]) == {
        "beta": [1, 2.5],
        "prior": ["gaussian", "student-t"],
        "analytic_kl": [True, False],
    }


@pytest.mark.parametrize(
    "args, named",
    [
        (["--grid", "bta=1,2"], "'bta' is not a run setting"),
        (["--grid", "beta"], "expected FIELD=VALUE"),
        (["--grid", "beta=1,1"], "a value is given twice"),
        (["--grid", "beta=1", "--grid", "beta=2"], "beta is given twice"),
        (["--grid", "seed=1,2"], "--seeds"),
        (["--grid", "prior_options=1"], "cannot be swept"),
        (["--grid", "beta=-1"], "run beta=-1_seed=0: beta must be a finite number >= 0.0, got -1"),
        (["--grid", "prior=nonsense"], "unknown prior 'nonsense'"),
        (["--seeds", "4-2"], "--seeds '4-2'"),
        (["--seeds", "0,0"], "a seed is given twice"),
        (["--grid", "beta=1", "--against", "alpha"], "cannot plot against 'alpha'"),
        (["--executor", "dask"], "--executor dask needs --scheduler"),
    ],
)
def test_bad_sweep_settings_are_refused_in_one_line(tmp_path, capsys, args, named):
    status = main(["sweep", "--out", str(tmp_path / "s")] + args)
    err = capsys.readouterr().err
    assert status == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s" / "runs").exists()


@pytest.mark.parametrize(
    "executor, module, extra",
    [("slurm", "submitit", "sweep-slurm"), ("dask", "dask.distributed", "sweep-dask")],
)
def test_a_missing_backend_is_one_line_naming_its_extra(
    tmp_path, capsys, monkeypatch, executor, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    argv = ["sweep", "--out", str(tmp_path / "s"), "--executor", executor, "--scheduler", "tcp://127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install 'pyro-decomp[{extra}]'" in err, err
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- the summary
def test_summary_tables_and_figure(reference):
    out, summary = reference
    names = [f"beta={b}_seed={s}" for b in GRID["beta"] for s in SEEDS]
    assert [r["name"] for r in summary["runs"]] == names
    for record in summary["runs"]:
        assert record["epoch"] == 4 and Path(record["run_dir"], "checkpoint.pt").exists()
        assert {"loss", "iwae_log_likelihood", "alignment", "train_loss"} <= set(record["metrics"])
        assert all(math.isfinite(v) for v in record["metrics"].values())
    assert json.loads((out / "summary.json").read_text())["runs"] == json.loads(json.dumps(summary["runs"]))
    # the CSV: one row per run, the numbers as written (repr round-trips floats exactly)
    rows = [line.split(",") for line in (out / "summary.csv").read_text().strip().splitlines()]
    header, rows = rows[0], rows[1:]
    assert header[:4] == ["name", "beta", "seed", "epoch"] and [r[0] for r in rows] == names
    col = header.index("iwae_log_likelihood")
    assert [float(r[col]) for r in rows] == [r["metrics"]["iwae_log_likelihood"] for r in summary["runs"]]
    # the markdown: one row per β, mean ± sample sd over the two seeds, checked with the statistics module
    table = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:2] == ["beta", "seeds"] and len(table) == 1 + len(GRID["beta"])
    for beta, line in zip(GRID["beta"], table[1:]):
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        values = [r["metrics"]["loss"] for r in summary["runs"] if r["values"]["beta"] == beta]
        assert cells["beta"] == str(beta) and cells["seeds"] == "2"
        assert cells["loss"] == f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"
    figure = Path(summary["files"]["figure"])
    assert figure.name == "summary_iwae_log_likelihood_vs_beta.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_call_retrains_nothing_and_gives_the_same_summary(reference):
    out, summary = reference
    before = checkpoint_times(out)
    again = sweep(base(), GRID, SEEDS, out, executor=here(), measure=MEASURE, log=None)
    assert checkpoint_times(out) == before and len(before) == 4
    assert metrics_of(again) == metrics_of(summary)


def test_a_run_directory_of_another_configuration_is_refused(reference, tmp_path):
    out, _ = reference
    other = tmp_path / "other"
    shutil.copytree(out / "runs" / "beta=0.5_seed=0", other / "runs" / "beta=0.5_seed=0")
    with pytest.raises(
        RunFailed, match="beta=0.5_seed=0 failed: .* holds a run of another configuration .*lr"
    ) as raised:
        sweep(base(lr=0.5), {"beta": [0.5]}, [0], other, executor=Local(1, in_process=True), log=None)
    # the error crosses process boundaries intact (worker processes, Dask and submitit pickle it)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is RunFailed and str(copy) == str(raised.value)


# ---------------------------------------------------------------------------------------------- kills
def descendants(pid: int):
    """The pids of every living process below ``pid`` (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":  # a zombie has exited
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids):
    living = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.append(pid)
    return living


def wait_gone(pids, timeout=30.0):
    """Wait until none of ``pids`` lives; returns those still living after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


def _kill_when(predicate, pid_of, timeout=300.0):
    """A thread that waits for ``predicate()``, then SIGKILLs ``pid_of()``; returns (thread, killed list)."""
    killed = []

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                pid = pid_of()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


@LINUX
def test_a_killed_coordinator_rerun_retrains_nothing_finished(reference, tmp_path):
    """``pyro-decomp sweep`` is SIGKILLed once its first run has a result; its worker dies with it, and the
    same sweep run again trains only the unfinished runs (the finished runs' checkpoints keep their
    modification times) and ends with every run's metrics equal to the uninterrupted sweep's."""
    _, uninterrupted = reference
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pyro_decomp", "sweep", "--out", str(out), "--grid", "beta=0.5,2.0"]
    command += ["--seeds", "0-1", "--workers", "1", "--eval-points", "40", "--iwae-samples", "10"]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in [("epochs", 4), ("batch_size", 8), ("beta", 0.5)]]
    command += ["--alpha=1.0", "--divergence=inclusive-kl", "--checkpoint-every=1", "--device=cpu"]
    command += ["--data-option", "num_per_class=10", "--network-option", "hidden=[16]"]
    coordinator = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results"
    first = results / "beta=0.5_seed=0.json"
    deadline = time.monotonic() + 300
    while not first.exists() and coordinator.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = descendants(coordinator.pid)
    coordinator.kill()
    coordinator.wait()
    assert first.exists(), coordinator.stderr.read().decode()[-2000:]
    assert workers and not wait_gone(workers)  # the worker (and the resource tracker) die with it
    finished = {p.stem for p in results.glob("*.json")}
    assert len(finished) < 4  # killed mid-sweep
    times = checkpoint_times(out)
    summary = sweep(base(), GRID, SEEDS, out, executor=here(), measure=MEASURE, log=None)
    after = checkpoint_times(out)
    assert all(after[name] == times[name] for name in finished)  # not retrained
    assert json.loads((out / "summary.json").read_text())["runs"] == json.loads(json.dumps(summary["runs"]))
    assert metrics_of(summary) == metrics_of(uninterrupted)


LONG = {"epochs": 40, "data_options": {"num_per_class": 40}}  # 20 steps an epoch: a run lasts seconds


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("long_reference")
    return sweep(base(**LONG), GRID, SEEDS, out, executor=here(), measure=MEASURE, log=None)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_resumes(long_reference, tmp_path):
    """SIGKILL of the worker process training a run, once the run has checkpointed and before it ends: the
    pool is replaced (one retry), the run resumes from its checkpoint, and every run's final metrics equal
    the uninterrupted sweep's bitwise."""
    out = tmp_path / "sweep"
    run_dir = out / "runs" / "beta=0.5_seed=1"

    def mid_run():
        try:
            epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
        except OSError:
            return False
        return 2 <= epochs < LONG["epochs"] - 5 and (run_dir / "checkpoint.pt").exists()

    def holder():
        text = (run_dir / ".lock").read_text().strip()
        return int(text) if text.isdigit() else None

    watcher, killed = _kill_when(mid_run, holder)
    lines = []
    summary = sweep(
        base(**LONG), GRID, SEEDS, out, executor=Local(workers=2, log=lines.append), measure=MEASURE, log=None
    )
    watcher.join(1)
    assert killed, "the run finished before it could be killed"
    assert any("a worker process died" in line and "retry 1 of 2" in line for line in lines), lines
    assert metrics_of(summary) == metrics_of(long_reference)


# ---------------------------------------------------------------------------------------------- backends
class StopAfter:
    """Ends training after ``epoch`` epochs, with a checkpoint (as a pre-empted job leaves a run)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        trainer.should_stop = trainer.epoch >= self.epoch


def test_submitits_checkpoint_hook_resubmits_the_task_which_resumes(reference, tmp_path):
    """What submitit requeues after a pre-emption or time-out (``checkpoint``'s DelayedSubmission) resumes
    the run from its checkpoint and measures what the uninterrupted sweep measured."""
    pytest.importorskip("submitit")
    from pyro_decomp.sweeps.executors import ResumableTask
    from pyro_decomp.sweeps.tasks import run_task

    _, expected = reference
    (task,) = plan(base(), {"beta": [0.5]}, [1], tmp_path, MEASURE)
    train(RunConfig.from_dict(task.config), task.run_dir, progress=False, callbacks=[StopAfter(2)])
    assert len(read_metrics(task.run_dir)) == 2  # stopped half-way
    delayed = ResumableTask(run_task).checkpoint(task)
    assert isinstance(delayed.function, ResumableTask) and delayed.args == (task,)
    record = delayed.result()  # what the requeued job runs
    assert len(read_metrics(task.run_dir)) == 4
    assert record["metrics"] == metrics_of(expected)["beta=0.5_seed=1"]


@pytest.mark.slow
def test_local_processes_dask_and_submitit_give_bitwise_the_same_metrics(reference, tmp_path):
    _, expected = reference
    local = sweep(
        base(), GRID, SEEDS, tmp_path / "local", executor=Local(workers=2), measure=MEASURE, log=None
    )
    assert metrics_of(local) == metrics_of(expected)

    distributed = pytest.importorskip("dask.distributed")
    from pyro_decomp.sweeps import Dask

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_dask = sweep(
            base(), GRID, SEEDS, tmp_path / "dask", executor=Dask(client), measure=MEASURE, log=None
        )
    assert metrics_of(on_dask) == metrics_of(expected)

    pytest.importorskip("submitit")
    from pyro_decomp.sweeps import Submitit

    executor = Submitit(tmp_path / "submitit", cluster="local", timeout_min=10, poll_seconds=0.5)
    on_submitit = sweep(base(), GRID, SEEDS, tmp_path / "slurm", executor=executor, measure=MEASURE, log=None)
    assert metrics_of(on_submitit) == metrics_of(expected)


@pytest.mark.slow
def test_a_dask_worker_killed_mid_run_is_rescheduled_and_resumes(long_reference, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    from pyro_decomp.sweeps import Dask

    out = tmp_path / "sweep"
    run_dir = out / "runs" / "beta=2.0_seed=0"

    def mid_run():
        try:
            epochs = len((run_dir / "metrics.jsonl").read_text().splitlines())
        except OSError:
            return False
        return 2 <= epochs < LONG["epochs"] - 5 and (run_dir / "checkpoint.pt").exists()

    def holder():
        text = (run_dir / ".lock").read_text().strip()
        return int(text) if text.isdigit() else None

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        watcher, killed = _kill_when(mid_run, holder)
        summary = sweep(base(**LONG), GRID, SEEDS, out, executor=Dask(client), measure=MEASURE, log=None)
        watcher.join(1)
    assert killed, "the run finished before it could be killed"
    assert metrics_of(summary) == metrics_of(long_reference)

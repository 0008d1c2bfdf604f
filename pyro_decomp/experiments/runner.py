"""Running the paper's experiments: every arm with every seed, measured, judged and written as a report.

The runs of an experiment are independent tasks, run by the sweeps' executors
(:mod:`pyro_decomp.sweeps.executors`): by default :func:`run_experiment` measures ``workers`` of them at a
time, each in a local process of its own with one torch thread, which dies with this process however it
dies; a SLURM (submitit) or Dask executor may be passed instead. A task trains, measures and draws one run
with :func:`~pyro_decomp.experiments.measure.measure_run`, exactly as one process does with ``workers=1``,
and hands back its record; the results do not depend on the number of workers (with one thread per run),
and a task killed and tried again resumes from its checkpoint. As with any ``spawn`` pool, a script that
calls :func:`reproduce` or :func:`run_experiment` with ``workers > 1`` must do so under
``if __name__ == "__main__":`` (each worker imports the script's main module).

Ctrl-C at a terminal reaches every worker: each trainer finishes its step and writes a checkpoint, runs
being measured finish, no further run starts, and :class:`~pyro_decomp.training.TrainingInterrupted` is
raised. The same call resumes.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from pyro_decomp.experiments.configs import EXPERIMENTS, Arm, ExperimentConfig, experiment_config
from pyro_decomp.experiments.measure import measure_run
from pyro_decomp.experiments.report import command, summary_figures, write_report
from pyro_decomp.experiments.verdicts import CLAIMS, VERDICTS
from pyro_decomp.sweeps.executors import Local
from pyro_decomp.training import TrainingInterrupted

__all__ = ["reproduce", "run_experiment"]

#: runs measured at a time by default: one per core of a 2-core machine
WORKERS = 2

Outcome = Tuple[Dict[str, Any], Dict[str, Any], float]


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------- tasks
def _measure_task(job: Tuple[ExperimentConfig, Arm, int, str, bool]):
    """:func:`measure_run` as a task of an executor; an interruption comes back as a plain dict (the
    exception does not survive pickling)."""
    config, arm, seed, root, progress = job
    try:
        return measure_run(config, arm, seed, Path(root), progress)
    except TrainingInterrupted as e:
        return {
            "interrupted": str(e),
            "checkpoint": e.checkpoint,
            "epoch": e.epoch,
            "step": e.step,
            "signal": e.signal,
        }


def _measure_all(
    config: ExperimentConfig,
    root: Path,
    jobs: Sequence[Tuple[Arm, int]],
    progress: bool,
    executor,
    done: Callable[[Tuple[str, int], Outcome], None],
) -> None:
    """Measure ``jobs`` with ``executor``, calling ``done(key, outcome)`` in this process as each finishes
    (in the order they finish). An interrupted run stops the rest from starting; the runs in progress
    checkpoint (or finish) and are kept, and :class:`TrainingInterrupted` is raised."""
    interrupted: List[Dict[str, Any]] = []

    def finished(i: int, outcome) -> bool:
        if isinstance(outcome, dict):
            interrupted.append(outcome)
            return True
        arm, seed = jobs[i]
        done((arm.name, seed), outcome)
        return False

    try:
        executor.run(
            _measure_task, [(config, arm, seed, str(root), progress) for arm, seed in jobs], finished
        )
    except KeyboardInterrupt:
        interrupted.append({"interrupted": "interrupted", "signal": int(signal.SIGINT)})
    first = next((i for i in interrupted if i.get("checkpoint")), interrupted[0]) if interrupted else None
    if first is not None:
        stopped = [i for i in interrupted if "checkpoint" in i]
        raise TrainingInterrupted(
            f"{config.name}: {first['interrupted']}; {len(stopped)} run(s) interrupted with a checkpoint",
            checkpoint=first.get("checkpoint"),
            epoch=int(first.get("epoch", 0)),
            step=int(first.get("step", 0)),
            signal=int(first.get("signal", signal.SIGINT)),
        )


# ---------------------------------------------------------------------------------------------- experiments
def run_experiment(
    config: ExperimentConfig,
    out,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = print,
    workers: int = WORKERS,
    executor=None,
) -> Dict[str, Any]:
    """Train every arm of ``config`` with every seed and measure it; figures and run directories go under
    ``out/<experiment>/``. A run whose checkpoint of the same configuration is already there is resumed
    (or, when finished, only evaluated).

    :param progress: show the trainer's progress bars.
    :param log: called with one line per finished run (``None``: silent).
    :param workers: runs measured at a time, each in a process of its own with one torch thread; ``1``
        measures them one after the other in this process (with this process's torch threads).
    :param executor: where the runs go instead (:mod:`pyro_decomp.sweeps`: ``Local``, ``Submitit``, ``Dask``);
        ``workers`` is then not used.
    :returns: a plain (JSON-serialisable) dict: settings, arms, per-run metrics, figures and the verdict on
        the paper's claim.
    """

    config.validate()
    workers = _check_count("workers", workers)
    log = log or (lambda line: None)
    root = Path(out) / config.name
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {
        "experiment": config.name,
        "scale": config.scale,
        "claim": CLAIMS[config.name],
        "stand_in": config.stand_in,
        "settings": config.settings(),
        "arms": [
            {
                **dataclasses.asdict(arm),
                "prior_options": dict(arm.prior_options),
                "network_options": dict(arm.network_options),
                "label": arm.label or arm.name,
            }
            for arm in config.arms
        ],
        "runs": [],
    }
    labels = {arm.name: arm.label or arm.name for arm in config.arms}
    start = time.perf_counter()
    jobs = [(arm, seed) for arm in config.arms for seed in config.seeds]
    outcomes: Dict[Tuple[str, int], Outcome] = {}

    def done(key: Tuple[str, int], outcome: Outcome) -> None:
        outcomes[key] = outcome
        record, _, wall = outcome
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
        log(
            f"[{config.name}] {labels[key[0]]}, seed {key[1]}: trained in {wall:.1f} s, "
            f"evaluated in {record['eval_seconds']:.1f} s; {shown}"
        )

    if executor is None:  # local processes; one run, or one worker: in this process
        executor = Local(workers=min(workers, len(jobs)), in_process=True, log=log)
    _measure_all(config, root, jobs, progress, executor, done)
    result["runs"] = [outcomes[(arm.name, seed)][0] for arm, seed in jobs]
    kept = {arm.name: outcomes[(arm.name, config.seeds[0])][1] for arm in config.arms}
    result["seconds"] = time.perf_counter() - start
    result["workers"] = min(executor.workers, len(jobs)) if isinstance(executor, Local) else None
    result["figures"] = summary_figures(config, result, figures, kept)
    try:
        result["verdict"] = VERDICTS[config.name](result)
    except (StopIteration, ValueError):  # an arm that the comparison needs is not in this configuration
        result["verdict"] = {
            "status": "not assessed",
            "evidence": "This configuration lacks arms that the comparison with the paper's claim needs.",
            "rule": "",
        }
    return result


def reproduce(
    experiment: str,
    scale: str,
    out,
    seeds: Optional[Sequence[int]] = None,
    data_root: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = print,
    threads: Optional[int] = None,
    workers: int = WORKERS,
    executor=None,
    report=None,
) -> str:
    """Run one of the paper's experiments (or ``"all"``) at ``scale`` and write ``out/report.md`` (or
    ``report``), after each experiment: an experiment finished before a kill stays in the report. The other
    experiments already in ``out/results.json`` at the same scale stay in it too (each row of the report's
    first table says when its experiment was measured), so one experiment can be run again on its own.

    :param experiment: one of :data:`EXPERIMENTS` or ``"all"``.
    :param scale: one of :data:`SCALES`.
    :param out: output directory: ``report.md``, ``results.json`` and per experiment ``<name>/figures/`` and
        ``<name>/runs/`` (each run's ``config.json``, ``metrics.jsonl`` and checkpoint).
    :param seeds: training seeds (default: the scale's).
    :param data_root: directory of the dSprites file and ``FashionMNIST/raw/`` (see
        :func:`experiment_config`).
    :param progress: show the trainer's progress bars.
    :param log: called with one line per finished run (``None``: silent).
    :param threads: ``torch.set_num_threads(threads)`` first (``None``: leave torch's setting). One thread is
        the robust choice on a CPU that other jobs share: oversubscribed intra-op threads slow down badly.
        Worker processes (``workers > 1``) always use one thread each.
    :param workers: runs trained and measured at a time, each in a process of its own (default 2, one per
        core of a 2-core machine); ``1``: one after the other in this process.
    :param executor: where the runs go instead of local processes (see :func:`run_experiment`).
    :param report: where the markdown report goes instead of ``out/report.md`` (its figure links are
        relative to it).
    :returns: the path of the report.
    """
    if threads is not None:
        torch.set_num_threads(_check_count("threads", threads))
    _check_count("workers", workers)
    names = EXPERIMENTS if experiment == "all" else (experiment,)
    if experiment != "all" and experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS + ('all',)}")
    configs = [experiment_config(name, scale, seeds=seeds, data_root=data_root) for name in names]
    everything = command("all", scale, out, seeds, data_root, threads, report)
    results: List[Dict[str, Any]] = []
    path = ""
    for config in configs:
        result = run_experiment(config, out, progress=progress, log=log, workers=workers, executor=executor)
        result["command"] = command(config.name, scale, out, seeds, data_root, threads, report)
        result["measured"] = time.strftime("%Y-%m-%d")
        results.append(result)
        path = write_report(results, out, command=everything, report=report)  # after each: nothing lost
    return path

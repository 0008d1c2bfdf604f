"""One run of a sweep as an idempotent task: train or resume its run directory, then measure it.

:func:`run_task` depends on nothing but its :class:`RunTask` and the files on disk, so it may run in any
process on any machine that sees the output directory, be started twice, be killed at any moment and be
tried again:

* a run with a result file (``OUT/results/NAME.json``) of the same configuration is done: nothing runs;
* a run with a checkpoint is resumed from it (the run directory's lock keeps a second copy out), or only
  measured when its checkpoint is at the last epoch;
* a run that stopped before its first checkpoint, or never started, is trained from the start;
* the measurement (:func:`~pyro_decomp.evaluation.evaluate`, seeded) writes ``evaluation.json``, then the
  result file is written atomically, last.

A run directory that holds a run of another configuration is refused, by name: the sweep replaces nothing
it did not write.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from pyro_decomp.config import RESUMABLE, RunConfig
from pyro_decomp.evaluation import evaluate
from pyro_decomp.runs import (
    CHECKPOINT_NAME,
    holds_run,
    load_checkpoint,
    load_config,
    read_metrics,
    write_json,
)
from pyro_decomp.training import TrainingInterrupted, resume, train

__all__ = ["RunFailed", "RunTask", "flatten_evaluation", "read_result", "run_task"]


class RunFailed(RuntimeError):
    """A run of a sweep failed (a non-finite loss, a damaged checkpoint, a run directory of another
    configuration...): one line that names the run. A plain exception, so that it crosses process and
    machine boundaries intact."""


# one run at a time in a process: Pyro's parameter store and torch's thread setting are per process
_ONE_RUN = threading.Lock()

#: the settings of :func:`~pyro_decomp.evaluation.evaluate` that a sweep passes on
MEASURE_DEFAULTS = {"max_points": 1000, "iwae_samples": 100, "factor_points": None, "num_votes": 20000}


@dataclass(frozen=True)
class RunTask:
    """Everything one run of a sweep needs, as plain data (it travels to other processes and machines).

    :ivar name: the run's name in the sweep, e.g. ``beta=4_prior=student-t_seed=0``.
    :ivar values: the swept settings of this run (the grid's fields and ``seed``).
    :ivar config: the run's complete :class:`~pyro_decomp.config.RunConfig`, as a dict.
    :ivar run_dir: its run directory.
    :ivar result: the path of its result file.
    :ivar measure: keyword arguments of :func:`~pyro_decomp.evaluation.evaluate`.
    :ivar threads: torch threads when the config sets none (bitwise results need the same number).
    """

    name: str
    values: Dict[str, Any]
    config: Dict[str, Any]
    run_dir: str
    result: str
    measure: Dict[str, Any] = field(default_factory=dict)
    threads: int = 1


def read_result(task: RunTask) -> Optional[Dict[str, Any]]:
    """The task's result record when its file holds one of the same configuration, else ``None``."""
    try:
        with open(task.result) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("config") != task.config or "metrics" not in record:
        return None
    return record


def flatten_evaluation(evaluation: Dict[str, Any]) -> Dict[str, float]:
    """The numbers of an ``evaluation.json`` as one flat ``{name: float}`` (nested ones as
    ``overlap_<key>``; the IWAE estimate as ``iwae_log_likelihood``; the alignment as ``alignment``)."""
    flat: Dict[str, float] = {}

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for key, value in evaluation.items():
        if key in ("epoch", "test_points", "factor_points"):
            continue  # the run's position and the sizes measured on: not metrics
        if number(value):
            flat[key] = float(value)
        elif key == "iwae_log_likelihood" and isinstance(value, dict) and number(value.get("mean")):
            flat[key] = float(value["mean"])
        elif key == "alignment" and isinstance(value, dict) and number(value.get("value")):
            flat[key] = float(value["value"])
        elif key == "overlap" and isinstance(value, dict):
            flat.update({f"overlap_{k}": float(v) for k, v in value.items() if number(v)})
    return {k: v for k, v in flat.items() if math.isfinite(v)}


def _train_or_resume(task: RunTask, config: RunConfig) -> None:
    run_dir = task.run_dir
    changes: Dict[str, Any] = {}
    if holds_run(run_dir):
        saved = load_config(run_dir)
        other = [k for k in saved.differences(config) if k not in RESUMABLE]
        if other:
            raise ValueError(
                f"{run_dir} holds a run of another configuration (it differs in {', '.join(other)}); "
                "delete it or sweep into another output directory"
            )
        changes = {k: getattr(config, k) for k in saved.differences(config)}
    checkpoint = os.path.join(run_dir, CHECKPOINT_NAME)
    if os.path.exists(checkpoint):
        epoch = int(load_checkpoint(checkpoint)["epoch"])
        if epoch > config.epochs:
            raise ValueError(
                f"{run_dir} holds a run trained for {epoch} epochs, more than the sweep's {config.epochs}; "
                "delete it or sweep into another output directory"
            )
        if epoch < config.epochs:
            resume(run_dir, changes, progress=False)
    else:  # never started, or stopped before its first checkpoint: nothing to keep
        train(config, run_dir, progress=False, overwrite=holds_run(run_dir))


def run_task(task: RunTask) -> Dict[str, Any]:
    """Train or resume ``task``'s run, measure it, write its result file; returns the result record:
    ``name``, ``values``, ``run_dir``, ``config``, ``metrics`` (the evaluation's numbers, and the last
    epoch's training loss components as ``train_<name>``), ``epoch`` and ``train_seconds``.

    A run that fails raises :class:`RunFailed`. A run stopped by SIGINT/SIGTERM comes back as
    ``{"name": ..., "interrupted": message}`` (its checkpoint written): that exception does not cross
    process boundaries.
    """
    with _ONE_RUN:
        done = read_result(task)
        if done is not None:
            return done
        config = RunConfig.from_dict(task.config)
        if config.num_threads is None:
            torch.set_num_threads(task.threads)
        try:
            _train_or_resume(task, config)
            evaluation = evaluate(task.run_dir, **{**task.measure, "figures": False})
        except TrainingInterrupted as e:
            return {"name": task.name, "interrupted": str(e)}
        except Exception as e:
            lines = str(e).strip().splitlines()
            raise RunFailed(f"run {task.name} failed: {lines[0] if lines else type(e).__name__}") from None
        log = read_metrics(task.run_dir)
        last = log[-1] if log else {}
        metrics = flatten_evaluation(evaluation)
        metrics.update(
            {
                f"train_{k}": float(v)
                for k, v in last.items()
                if k not in ("epoch", "seconds", "global_step", "best")
                and isinstance(v, (int, float))
                and math.isfinite(v)
            }
        )
        record = {
            "name": task.name,
            "values": task.values,
            "run_dir": task.run_dir,
            "config": task.config,
            "epoch": int(evaluation.get("epoch", 0)),
            "train_seconds": sum(float(r.get("seconds", 0.0)) for r in log),
            "metrics": metrics,
        }
        write_json(task.result, record)
        return record

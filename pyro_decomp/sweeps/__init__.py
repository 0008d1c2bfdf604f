"""Sweeps: grids of run settings and seeds, each run an idempotent task on local processes, SLURM
(submitit) or Dask; and their summary. See :func:`~pyro_decomp.sweeps.plan.sweep`."""

from pyro_decomp.sweeps.executors import Dask, Executor, Local, Submitit, SweepIncomplete, die_with_parent
from pyro_decomp.sweeps.plan import parse_grid, parse_seeds, plan, sweep
from pyro_decomp.sweeps.summary import METRIC_NAMES, write_summary
from pyro_decomp.sweeps.tasks import RunFailed, RunTask, run_task

__all__ = [
    "METRIC_NAMES",
    "Dask",
    "Executor",
    "Local",
    "RunFailed",
    "RunTask",
    "SweepIncomplete",
    "Submitit",
    "die_with_parent",
    "parse_grid",
    "parse_seeds",
    "plan",
    "run_task",
    "sweep",
    "write_summary",
]

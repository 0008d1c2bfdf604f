"""``pyro-decomp reproduce`` and ``pyro-decomp sweep``: many runs, on local processes, SLURM or Dask.

Both commands choose where their runs go with the same flags (:func:`add_executor_flags`), close the executor
however the command ends, and map the same failures to the same exit statuses (:func:`batch_status`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict

from pyro_decomp.cli.flags import HelpFormatter, add_config_flags, flag_settings, number, one_line
from pyro_decomp.config import SEED_MAXIMUM
from pyro_decomp.experiments import EXPERIMENTS, SCALES, reproduce
from pyro_decomp.runs import CheckpointError, RunLocked, load_config
from pyro_decomp.sweeps import (
    METRIC_NAMES,
    Dask,
    Local,
    RunFailed,
    Submitit,
    SweepIncomplete,
    parse_grid,
    parse_seeds,
)
from pyro_decomp.sweeps import plan as sweep_plan
from pyro_decomp.sweeps import sweep as run_sweep
from pyro_decomp.training import TrainingInterrupted

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    """The ``reproduce`` and ``sweep`` subcommands."""
    r = sub.add_parser(
        "reproduce",
        help="run the paper's experiments and write a markdown report",
        description="Run the paper's clustering, independence and sparsity experiments at a scale and write "
        "OUT/report.md with tables, figures and whether each claim held.",
    )
    r.add_argument("experiment", choices=EXPERIMENTS + ("all",), help="which experiment")
    r.add_argument(
        "--scale",
        choices=SCALES,
        required=True,
        help="smoke: seconds (a plumbing check); cpu: about 2 h 15 min in all on a 2-core CPU; paper: the "
        "paper's settings (for a GPU)",
    )
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument(
        "--report",
        metavar="FILE",
        help="write the markdown report to FILE instead of OUT/report.md (its figure links are relative to "
        "FILE)",
    )
    r.add_argument(
        "--seeds",
        type=number(int, "seeds", upper=SEED_MAXIMUM),
        nargs="+",
        default=None,
        help="training seeds (default: the scale's)",
    )
    r.add_argument(
        "--data-root",
        default=None,
        help="directory of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz and FashionMNIST/raw/ (without "
        "them the procedural shapes stand in)",
    )
    r.add_argument("--progress", action="store_true", help="show training progress bars")
    r.add_argument(
        "--workers",
        type=number(int, "workers", 0, strict=True),
        default=2,
        help="runs trained at a time, each in its own process on one thread (default: 2)",
    )
    r.add_argument(
        "--threads",
        type=number(int, "threads", 0, strict=True),
        default=None,
        help="torch CPU threads (default: torch's own; 1 is best on a shared CPU)",
    )
    add_executor_flags(r, workers=False)
    r.set_defaults(func=_reproduce, subparser=r)
    w = sub.add_parser(
        "sweep",
        help="train and measure a grid of settings and seeds, on local processes, SLURM or Dask",
        description="Train and measure every run of a grid of run settings times seeds, each run an "
        "idempotent task (train or resume OUT/runs/NAME, then measure it), and write OUT/summary.json, "
        "summary.csv, summary.md (mean ± sd per cell) and a figure. Killed and run again, it trains only "
        "what is unfinished, resuming from checkpoints. Each run uses one torch thread unless --num-threads "
        "says otherwise. Example: pyro-decomp sweep --out sweep --grid "
        "beta=1,2,4,8 --grid prior=gaussian,student-t --seeds 0-4 --dataset shapes",
        formatter_class=HelpFormatter,
    )
    w.add_argument("--out", required=True, help="output directory of the sweep")
    w.add_argument(
        "--grid",
        action="append",
        metavar="FIELD=V1,V2,...",
        help="a run setting and its values (repeatable; the runs are the product of all grids and seeds)",
    )
    w.add_argument("--seeds", metavar="SEEDS", help="training seeds, e.g. 0-4 or 0,2,5 (default: --seed)")
    w.add_argument("--config", metavar="FILE", help="base settings from a config file (flags apply over it)")
    w.add_argument("--dry-run", action="store_true", help="list the runs and their directories, run nothing")
    add_executor_flags(w, workers=True)
    meas = w.add_argument_group("measurement of each run (pyro-decomp evaluate's settings)")
    meas.add_argument("--eval-points", type=number(int, "eval-points", 0, strict=True), default=1000)
    meas.add_argument("--iwae-samples", type=number(int, "iwae-samples", 0, strict=True), default=100)
    meas.add_argument("--factor-points", type=number(int, "factor-points", 0, strict=True), default=None)
    meas.add_argument("--num-votes", type=number(int, "num-votes", 0, strict=True), default=20000)
    meas.add_argument(
        "--plot",
        metavar="METRIC",
        default="iwae_log_likelihood",
        choices=METRIC_NAMES,
        help="metric of the figure",
    )
    meas.add_argument(
        "--against", metavar="FIELD", help="grid field of the figure's x axis (default: the first)"
    )
    add_config_flags(w)
    w.set_defaults(func=_sweep, subparser=w)


def add_executor_flags(parser, workers: bool) -> None:
    """The flags that choose where the runs of ``sweep`` and ``reproduce`` go."""
    how = parser.add_argument_group("where the runs go")
    how.add_argument("--executor", choices=("local", "slurm", "dask"), default="local", help="the backend")
    if workers:
        how.add_argument(
            "--workers",
            type=number(int, "workers", 0, strict=True),
            default=2,
            help="local: processes at a time",
        )
    how.add_argument(
        "--retries",
        type=number(int, "retries", 0),
        default=2,
        help="local: fresh pools after a worker dies; slurm: requeues after pre-emption or time-out; dask: "
        "tries again of a task that fails",
    )
    how.add_argument("--partition", help="slurm: the partition")
    how.add_argument("--time-min", type=number(int, "time-min", 0, strict=True), help="slurm: job time limit")
    how.add_argument("--gpus-per-task", type=number(int, "gpus-per-task", 0), help="slurm: GPUs per job")
    how.add_argument("--cpus-per-task", type=number(int, "cpus-per-task", 0, strict=True), help="slurm: CPUs")
    how.add_argument(
        "--array-parallelism",
        type=number(int, "array-parallelism", 0, strict=True),
        help="slurm: jobs of the array running at a time",
    )
    how.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local"),
        default=None,
        help="slurm: submitit's cluster (default slurm; local: the jobs as local processes, a check "
        "without a cluster)",
    )
    how.add_argument("--scheduler", metavar="ADDRESS", help="dask: the scheduler, e.g. tcp://host:8786")


def make_executor(args, in_process: bool = False):
    """The executor the flags of :func:`add_executor_flags` choose."""
    if args.executor == "slurm":
        return Submitit(
            os.path.join(args.out, "submitit"),
            partition=args.partition,
            timeout_min=args.time_min,
            gpus_per_task=args.gpus_per_task,
            cpus_per_task=args.cpus_per_task,
            array_parallelism=args.array_parallelism,
            retries=args.retries,
            cluster=args.slurm_cluster or "slurm",
        )
    if args.executor == "dask":
        if not args.scheduler:
            raise ValueError("--executor dask needs --scheduler ADDRESS (e.g. tcp://host:8786)")
        return Dask(args.scheduler, retries=args.retries)
    return Local(workers=args.workers, retries=args.retries, in_process=in_process, log=print)


def batch_status(command: Callable[[], int]) -> int:
    """Run ``command`` and map how it fails to an exit status, printing one line: 128 + the signal when
    training was interrupted (the same command resumes), 1 when runs were lost or failed, 2 for a bad
    setting or a missing backend."""
    try:
        return command()
    except TrainingInterrupted as e:
        print(f"pyro-decomp: {e}; run the same command again to resume", file=sys.stderr)
        return 128 + int(e.signal)
    except SweepIncomplete as e:
        print(f"pyro-decomp: {e}", file=sys.stderr)
        return 1
    except RunFailed as e:
        print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError, CheckpointError, RunLocked) as e:
        print(f"pyro-decomp: error: {one_line(e)}", file=sys.stderr)
        return 2


def _reproduce(args, parser) -> int:
    """Exit status: 0 when the report is written, 2 for a bad setting, 130 when interrupted (finished and
    interrupted runs keep their checkpoints, and the same command resumes them)."""

    def command() -> int:
        with make_executor(args, in_process=True) as executor:
            path = reproduce(
                args.experiment,
                args.scale,
                args.out,
                seeds=args.seeds,
                data_root=args.data_root,
                progress=args.progress,
                threads=args.threads,
                workers=args.workers,
                executor=executor,
                report=args.report,
            )
        print(f"report written to {path}")
        return 0

    return batch_status(command)


def _sweep(args, parser) -> int:
    """Exit status: 0 when the summary is written (or the runs listed), 2 for a bad setting or a missing
    backend, 1 when runs were lost or failed (the same command resumes them)."""

    def command() -> int:
        base: Dict[str, Any] = {}
        if args.config:
            base = load_config(args.config).to_dict()
        for key, value in flag_settings(args).items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        grid = parse_grid(args.grid or [])
        seeds = parse_seeds(args.seeds) if args.seeds else [int(base.get("seed", 0))]
        measure = dict(
            max_points=args.eval_points,
            iwae_samples=args.iwae_samples,
            factor_points=args.factor_points,
            num_votes=args.num_votes,
        )
        if args.dry_run:
            tasks = sweep_plan(base, grid, seeds, args.out, measure)
            for task in tasks:
                print(f"{task.name}\t{task.run_dir}")
            print(f"{len(tasks)} runs")
            return 0
        with make_executor(args) as executor:
            summary = run_sweep(
                base,
                grid,
                seeds,
                args.out,
                executor=executor,
                measure=measure,
                plot=(args.plot, args.against),
            )
        for kind, path in summary["files"].items():
            print(f"summary ({kind}): {path}")
        return 0

    return batch_status(command)

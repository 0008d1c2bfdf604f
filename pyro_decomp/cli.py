"""The ``pyro-decomp`` command line: ``train``, ``evaluate`` and ``reproduce`` decomposition VAEs.

``pyro-decomp train`` with no arguments runs the pinwheel clustering experiment of Mathieu et al. (2019,
§5.2): the 4-component mixture prior, 2-D latents, β = 0 and α = 1 with the inclusive KL, 500 epochs of the
400-point pinwheel in batches of 400. Under ``torchrun --nproc_per_node=P -m pyro_decomp train ...`` it
trains data-parallel on P processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

from pyro_decomp.callbacks import TensorBoardCallback
from pyro_decomp.config import (
    DATASET_DEFAULTS,
    INT_MAXIMUM,
    OWN_DATA_DEFAULTS,
    RECORDS,
    RESUMABLE,
    SEED_MAXIMUM,
    RunConfig,
    check_device_name,
    setting_kind,
)
from pyro_decomp.data.sources import source_name
from pyro_decomp.evaluation import evaluate, write_figures
from pyro_decomp.experiments import EXPERIMENTS, SCALES, reproduce
from pyro_decomp.runs import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVALUATION_NAME,
    METRICS_NAME,
    CheckpointError,
    RunLocked,
    check_resume_dir,
    figures_dir,
    load_config,
)
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
from pyro_decomp.training import NonFiniteLossError, TrainingInterrupted, resume, train
from pyro_decomp.version import __version__

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130

# older spellings of some flags, still accepted
_ALIASES = {
    "num_threads": ("--threads",),
    "data_options": ("--data-option",),
    "prior_options": ("--prior-option",),
    "network_options": ("--network-option",),
}
# train flags that steer the command rather than set the run
_RUN_FLAGS = ("config", "run_dir", "resume", "overwrite", "no_progress", "no_figures", "tensorboard")


# ------------------------------------------------------------------------------------------- argument types
def _number(kind, name, lower=None, strict=False, upper=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        if lower is not None and (value <= lower if strict else value < lower):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if strict else '>='} {lower}, got {text}")
        if upper is not None and value > upper:
            raise argparse.ArgumentTypeError(f"{name} must be <= {upper}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _key_value(text: str):
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (numbers, true/false, lists, objects)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _device(text: str) -> str:
    try:
        return check_device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; for settings that depend on the data set, the default of each data set."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = getattr(action, "config_default", argparse.SUPPRESS)
        if action.dest in DATASET_DEFAULTS["pinwheel"]:
            groups: Dict[str, List[str]] = {}
            for dataset, values in DATASET_DEFAULTS.items():
                groups.setdefault(repr(values[action.dest]), []).append(dataset)
            own = OWN_DATA_DEFAULTS.get(action.dest, "chosen from the data")
            groups.setdefault(own if isinstance(own, str) else repr(own), []).append("own data")
            per = "; ".join(f"{'/'.join(names)}: {value}" for value, names in groups.items())
            return f"{text} (default: per data set -- {per})"
        if default is not argparse.SUPPRESS:
            return text if default in (None, {}) else f"{text} (default: {default})"
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------- parser
def config_flag(name: str) -> str:
    """The train flag of a :class:`~pyro_decomp.config.RunConfig` field: its name with dashes."""
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pyro_decomp.config.RunConfig` field, typed and checked from its metadata."""
    group = parser.add_argument_group("run settings (one per field of RunConfig)")
    for f in dataclasses.fields(RunConfig):
        if f.name in RECORDS:  # written by the run, not set
            continue
        kind, _ = setting_kind(f)
        flag = config_flag(f.name)
        meta = f.metadata
        kwargs: Dict[str, Any] = {"dest": f.name, "default": None, "help": meta.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(action="append", type=_key_value, metavar="KEY=VALUE")
            kwargs["help"] += (
                " (KEY=VALUE, VALUE as JSON, quoted for the shell, e.g. "
                + _DICT_EXAMPLE.split(" ", 1)[1]
                + "; repeatable)"
            )
        elif kind in (int, float):
            upper = meta.get("maximum") or (INT_MAXIMUM if kind is int else None)
            kwargs["type"] = _number(kind, flag[2:], meta.get("minimum"), meta.get("strict"), upper)
        elif f.name == "device":
            kwargs["type"] = _device
        elif meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        action = group.add_argument(flag, *_ALIASES.get(f.name, ()), **kwargs)
        if f.default is not dataclasses.MISSING:
            action.config_default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            action.config_default = f.default_factory()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-decomp", description=__doc__.replace("``", ""), formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pyro-decomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,reproduce,sweep}")

    t = sub.add_parser(
        "train",
        help="train a decomposition VAE (no arguments: the paper's pinwheel clustering run)",
        description="Train a decomposition VAE with the objective of Mathieu et al. (2019, eq. 7): "
        "E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z)). Settings left out take the data "
        "set's defaults (the paper's). --resume RUN_DIR continues a run with its own settings (only "
        f"{', '.join(config_flag(k) for k in RESUMABLE)} may change); --epochs is always the run's total.",
        formatter_class=_HelpFormatter,
    )
    run = t.add_argument_group("run")
    run.add_argument("--config", metavar="FILE", help="start from a config file (the format of config.json)")
    run.add_argument("--run-dir", help="where to write the run (default runs/DATASET-DATE-TIME)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --run-dir: its files are set aside once the new run is built and "
        "deleted once the new run has written its first checkpoint; the old run is put back if the new one "
        "fails before that. Only a run's own files are replaced",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-figures", action="store_true", help="draw no figures at the end")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="log scalars per epoch and the figures to RUN_DIR/tensorboard (needs pip install 'pyro-decomp"
        "[tensorboard]')",
    )
    _add_config_flags(t)
    t.set_defaults(func=_train, subparser=t)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a trained run: metrics to RUN_DIR/evaluation.json, figures to RUN_DIR/figures",
        description="Load RUN_DIR (config.json, checkpoint.pt) and write RUN_DIR/evaluation.json: the loss "
        "components and the IWAE log-likelihood on the test set, reconstruction error, Hoyer sparsity, "
        "overlap and alignment, and on ground-truth data the disentanglement score and MIG; and the figures "
        "that fit the data under RUN_DIR/figures.",
        formatter_class=_HelpFormatter,
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    e.add_argument("--device", type=_device, default="cpu", help="device to evaluate on")
    e.add_argument(
        "--max-points", type=_number(int, "max-points", 1, strict=True), default=1000, help="test points used"
    )
    e.add_argument(
        "--iwae-samples",
        type=_number(int, "iwae-samples", 0, strict=True),
        default=100,
        help="importance samples of the IWAE log-likelihood",
    )
    e.add_argument(
        "--factor-points",
        type=_number(int, "factor-points", 1, strict=True),
        help="ground-truth points for disentanglement and MIG (default: all)",
    )
    e.add_argument(
        "--num-votes",
        type=_number(int, "num-votes", 0, strict=True),
        default=20000,
        help="disentanglement votes",
    )
    e.add_argument(
        "--votes-size", type=_number(int, "votes-size", 1, strict=True), default=1000, help="codes per vote"
    )
    e.add_argument(
        "--seed",
        type=_number(int, "seed", 0, upper=SEED_MAXIMUM),
        default=0,
        help="seed of the subsets and samples",
    )
    e.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="which weights: last (checkpoint.pt, where training stopped) or best (best.pt, the epoch of "
        "lowest held-out loss)",
    )
    e.add_argument("--no-figures", action="store_true", help="write no figures")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_evaluate, subparser=e)

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
        help="smoke: seconds (a plumbing check); cpu: about 75 minutes in all on a 2-core CPU; paper: the "
        "paper's settings (for a GPU)",
    )
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument(
        "--seeds",
        type=_number(int, "seeds", upper=SEED_MAXIMUM),
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
        type=_number(int, "workers", 0, strict=True),
        default=2,
        help="runs trained at a time, each in its own process on one thread (default: 2)",
    )
    r.add_argument(
        "--threads",
        type=_number(int, "threads", 0, strict=True),
        default=None,
        help="torch CPU threads (default: torch's own; 1 is best on a shared CPU)",
    )
    _add_executor_flags(r, workers=False)
    r.set_defaults(func=_reproduce, subparser=r)
    _add_sweep_parser(sub)
    return parser


# ---------------------------------------------------------------------------------------------- train
_DICT_EXAMPLE = "--data-options 'subsample={\"orientation\": 10}'"
# options whose value must be a JSON object
_OBJECT_OPTIONS = {"data_options": ("subsample",)}
# a value that was meant as a dict or a list but is not JSON: {..., [..., or name:value
_NOT_JSON = re.compile(r"^\s*[\[{]|^\s*\w+\s*:\s*[-+.\d\[{\"']")


def _check_option(setting: str, key: str, value: Any) -> None:
    """A ValueError in one line, naming the flag, for an option value that was meant as JSON but is not."""
    flag = config_flag(setting)
    if key in _OBJECT_OPTIONS.get(setting, ()) and not isinstance(value, dict):
        raise ValueError(
            f"{flag} {key}={value}: {key} takes a JSON object, e.g. {_DICT_EXAMPLE} (quoted for the shell)"
        )
    if isinstance(value, str) and _NOT_JSON.search(value):
        raise ValueError(
            f"{flag} {key}={value}: the value is not JSON; dicts and lists are written as JSON, e.g. "
            f"{_DICT_EXAMPLE} (quoted for the shell)"
        )


def _given(args) -> Dict[str, Any]:
    """The RunConfig settings given on the command line (dict settings as dicts, their values checked)."""
    given = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in RECORDS:
            continue
        value = getattr(args, f.name)
        if value is not None:
            if setting_kind(f)[0] is dict:
                value = dict(value)
                for key, item in value.items():
                    _check_option(f.name, key, item)
            given[f.name] = value
    return given


def _config_from_args(args) -> RunConfig:
    """The run's configuration: the ``--config`` file (if any), then the flags given over it. Of the file,
    only the settings it chose are kept (not the presets of its data set, nor its data record), so a
    ``--dataset`` flag gets that data set's presets and none of the file's."""
    values: Dict[str, Any] = {}
    if args.config:
        values = load_config(args.config).given_settings()
    for key, value in _given(args).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) and key in values else value
    return RunConfig.from_dict(values)


def _default_run_dir(dataset: str) -> str:
    base = os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    return path


def _resume_changes(args, run_dir: str) -> Dict[str, Any]:
    """The settings a resume changes; a flag for any other setting that differs from the run's is an error."""
    if args.config:
        raise ValueError("--config cannot be given with --resume: a resumed run keeps its own config.json")
    check_resume_dir(run_dir)
    saved = load_config(run_dir)
    given = _given(args)
    refused = []
    for key, value in given.items():
        current = getattr(saved, key)
        if isinstance(value, dict):  # option flags add to the run's options, as they do over a --config file
            value = {**current, **value}
        if key not in RESUMABLE and value != current:
            refused.append(config_flag(key))
    if refused:
        raise ValueError(
            f"{', '.join(refused)} cannot be changed when resuming: a resumed run keeps the settings of "
            f"{os.path.join(run_dir, CONFIG_NAME)} (only {', '.join(config_flag(k) for k in RESUMABLE)} may "
            "be given)"
        )
    return {k: v for k, v in given.items() if k in RESUMABLE}


class _Figures:
    """Draws the run's figures at the end of training, while the run directory is still locked, so that
    they are the figures of this run whatever starts in the directory next."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.paths: Dict[str, str] = {}

    def on_train_end(self, trainer) -> None:
        if not trainer.writes_files:
            return
        try:
            self.paths = write_figures(
                trainer.vae,
                trainer.config,
                trainer.train_set,
                figures_dir(self.run_dir),
                metrics_path=os.path.join(self.run_dir, METRICS_NAME),
                kinds=("aggregate_posterior", "training_curves"),
                seed=trainer.config.seed,
            )
        except (ImportError, OSError, ValueError) as e:  # the run itself is complete
            print(f"pyro-decomp: no figures ({_message(e)})", file=sys.stderr)


def _callbacks(args, run_dir: str) -> list:
    callbacks: List[Any] = [] if args.no_figures else [_Figures(run_dir)]
    if args.tensorboard:
        figures_dir(run_dir, make=False, name="tensorboard")  # a link there is refused
        callbacks.append(
            TensorBoardCallback(os.path.join(run_dir, "tensorboard"), figures=not args.no_figures)
        )
    return callbacks


def _train(args, parser) -> int:
    progress = not args.no_progress
    start = time.perf_counter()
    try:
        if args.resume:
            run_dir = args.resume
            changes = _resume_changes(args, run_dir)
            callbacks = _callbacks(args, run_dir)
            result = resume(run_dir, changes, progress=progress, callbacks=callbacks)
        else:
            config = _config_from_args(args)
            run_dir = args.run_dir or _default_run_dir(source_name(config.dataset))
            callbacks = _callbacks(args, run_dir)
            result = train(config, run_dir, progress=progress, overwrite=args.overwrite, callbacks=callbacks)
    except TrainingInterrupted as e:
        print(f"pyro-decomp: {e}", file=sys.stderr)
        if e.checkpoint:
            where = shlex.quote(args.resume or run_dir)
            print(f"continue with: pyro-decomp train --resume {where}", file=sys.stderr)
        return 128 + int(e.signal)
    except (NonFiniteLossError, CheckpointError, RunLocked) as e:
        print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # a process of rank > 0 under torchrun
        return 0
    figures = next((c.paths for c in callbacks if isinstance(c, _Figures)), {})  # drawn under the lock
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"trained {result.trained_epochs} epoch{'' if result.trained_epochs == 1 else 's'} "
        f"in {time.perf_counter() - start:.1f} s "
        f"(epoch {result.epoch} of {result.config.epochs})",
        end="",
    )
    print(f"; final loss per data point {last['loss']:.4f}" if "loss" in last else "")
    print(f"run directory: {run_dir}")
    print(f"  config:      {os.path.join(run_dir, CONFIG_NAME)}")
    print(f"  checkpoint:  {os.path.join(run_dir, CHECKPOINT_NAME)}")
    print(f"  metrics:     {os.path.join(run_dir, METRICS_NAME)}")
    for name, path in figures.items():
        print(f"  figure:      {path} ({name.replace('_', ' ')})")
    print(f"evaluate it with: pyro-decomp evaluate {shlex.quote(run_dir)}")
    return 0


def _message(error: BaseException) -> str:
    """One line for an error: the message, or for an OSError its description and file."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------- evaluate
def _evaluate(args, parser) -> int:
    if not os.path.isdir(args.run_dir):
        print(f"pyro-decomp: error: RUN_DIR {args.run_dir} is not a directory", file=sys.stderr)
        return 1
    try:
        result = evaluate(
            args.run_dir,
            device=args.device,
            max_points=args.max_points,
            iwae_samples=args.iwae_samples,
            factor_points=args.factor_points,
            num_votes=args.num_votes,
            votes_size=args.votes_size,
            seed=args.seed,
            figures=not args.no_figures,
            progress=not args.no_progress,
            checkpoint=args.checkpoint,
        )
    except (CheckpointError, RunLocked, NonFiniteLossError, ValueError, OSError) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 1
    print(
        f"evaluated the {result['checkpoint']} checkpoint ({result['checkpoint_file']}, "
        f"epoch {result['epoch']}) on {result['test_points']} test points"
    )
    if result.get("collapse_warning"):
        print(f"WARNING: {result['collapse_warning']}")
    for row in result["summary"]:
        print(_summary_line(row))
    print(f"evaluation written to {os.path.join(args.run_dir, EVALUATION_NAME)}")
    for name, path in result.get("figures", {}).items():
        print(f"  figure: {path} ({name.replace('_', ' ')})")
    return 0


def _summary_line(row: Dict[str, Any]) -> str:
    """One row of :func:`~pyro_decomp.summary.summary_rows`: the name, the value, its unit, which way is
    better and, where known, what chance reaches."""
    value = row["value"]
    text = f"{row['name']:>34}: {value:.6g}" if isinstance(value, float) else f"{row['name']:>34}: {value}"
    notes = [n for n in (row["unit"], f"better: {row['better']}" if row["better"] else "") if n]
    if "chance" in row and row["chance"] is not None:
        notes.append(f"chance: {row['chance']:.3g}")
    return text + (f"  ({'; '.join(notes)})" if notes else "")


# ---------------------------------------------------------------------------------------------- reproduce
def _reproduce(args, parser) -> int:
    """Exit status: 0 when the report is written, 2 for a bad setting, 130 when interrupted (finished and
    interrupted runs keep their checkpoints, and the same command resumes them)."""
    executor = None
    try:
        executor = _sweep_executor(args, in_process=True)
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
        )
    except TrainingInterrupted as e:
        print(f"pyro-decomp: {e}; run the same command again to resume", file=sys.stderr)
        return 128 + int(e.signal)
    except SweepIncomplete as e:
        print(f"pyro-decomp: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, CheckpointError, RunLocked, ImportError) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if isinstance(executor, Dask):
            executor.close()
    print(f"report written to {path}")
    return 0


# ---------------------------------------------------------------------------------------------- sweep
def _add_sweep_parser(sub) -> None:
    w = sub.add_parser(
        "sweep",
        help="train and measure a grid of settings and seeds, on local processes, SLURM or Dask",
        description="Train and measure every run of a grid of run settings times seeds, each run an "
        "idempotent task (train or resume OUT/runs/NAME, then measure it), and write OUT/summary.json, "
        "summary.csv, summary.md (mean ± sd per cell) and a figure. Killed and run again, it trains only "
        "what is unfinished, resuming from checkpoints. Each run uses one torch thread unless --num-threads "
        "says otherwise. Example: pyro-decomp sweep --out sweep --grid "
        "beta=1,2,4,8 --grid prior=gaussian,student-t --seeds 0-4 --dataset shapes",
        formatter_class=_HelpFormatter,
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
    _add_executor_flags(w, workers=True)
    meas = w.add_argument_group("measurement of each run (pyro-decomp evaluate's settings)")
    meas.add_argument("--eval-points", type=_number(int, "eval-points", 0, strict=True), default=1000)
    meas.add_argument("--iwae-samples", type=_number(int, "iwae-samples", 0, strict=True), default=100)
    meas.add_argument("--factor-points", type=_number(int, "factor-points", 0, strict=True), default=None)
    meas.add_argument("--num-votes", type=_number(int, "num-votes", 0, strict=True), default=20000)
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
    _add_config_flags(w)
    w.set_defaults(func=_sweep, subparser=w)


def _add_executor_flags(parser, workers: bool) -> None:
    """The flags that choose where the runs of ``sweep`` and ``reproduce`` go."""
    how = parser.add_argument_group("where the runs go")
    how.add_argument("--executor", choices=("local", "slurm", "dask"), default="local", help="the backend")
    if workers:
        how.add_argument(
            "--workers",
            type=_number(int, "workers", 0, strict=True),
            default=2,
            help="local: processes at a time",
        )
    how.add_argument(
        "--retries",
        type=_number(int, "retries", 0),
        default=2,
        help="local: fresh pools after a worker dies; slurm: requeues after pre-emption or time-out; dask: "
        "tries again of a task that fails",
    )
    how.add_argument("--partition", help="slurm: the partition")
    how.add_argument(
        "--time-min", type=_number(int, "time-min", 0, strict=True), help="slurm: job time limit"
    )
    how.add_argument("--gpus-per-task", type=_number(int, "gpus-per-task", 0), help="slurm: GPUs per job")
    how.add_argument(
        "--cpus-per-task", type=_number(int, "cpus-per-task", 0, strict=True), help="slurm: CPUs"
    )
    how.add_argument(
        "--array-parallelism",
        type=_number(int, "array-parallelism", 0, strict=True),
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


def _sweep_executor(args, in_process: bool = False):
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


def _sweep(args, parser) -> int:
    """Exit status: 0 when the summary is written (or the runs listed), 2 for a bad setting or a missing
    backend, 1 when runs were lost or failed (the same command resumes them)."""
    executor = None
    try:
        base: Dict[str, Any] = {}
        if args.config:
            base = load_config(args.config).to_dict()
        for key, value in _given(args).items():
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
        executor = _sweep_executor(args)
        summary = run_sweep(
            base,
            grid,
            seeds,
            args.out,
            executor=executor,
            measure=measure,
            plot=(args.plot, args.against),
        )
    except SweepIncomplete as e:
        print(f"pyro-decomp: {e}", file=sys.stderr)
        return 1
    except RunFailed as e:
        print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError, CheckpointError, RunLocked) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        if isinstance(executor, Dask):
            executor.close()
    for kind, path in summary["files"].items():
        print(f"summary ({kind}): {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``pyro-decomp``; returns the exit status (0 ok, 1 failed, 2 usage, 130/143/129 stopped
    by SIGINT/SIGTERM/SIGHUP)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args, args.subparser)
        except KeyboardInterrupt:  # before training started or after it ended: nothing to checkpoint
            print("pyro-decomp: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, ``pyro-decomp: warning: ...`` (no source line: it is not a crash)."""
    print(
        f"pyro-decomp: warning: {_message(message) if isinstance(message, Exception) else message}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())

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
import shlex
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

from pyro_decomp.callbacks import TensorBoardCallback
from pyro_decomp.config import (
    DATASET_DEFAULTS,
    INT_MAXIMUM,
    RESUMABLE,
    SEED_MAXIMUM,
    RunConfig,
    check_device_name,
    setting_kind,
)
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
        kind, _ = setting_kind(f)
        flag = config_flag(f.name)
        meta = f.metadata
        kwargs: Dict[str, Any] = {"dest": f.name, "default": None, "help": meta.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(action="append", type=_key_value, metavar="KEY=VALUE")
            kwargs["help"] += " (KEY=VALUE, VALUE as JSON; repeatable)"
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
    parser = argparse.ArgumentParser(prog="pyro-decomp", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pyro-decomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,reproduce}")

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
        help="runs trained at a time, each in its own process on one thread",
    )
    r.add_argument(
        "--threads",
        type=_number(int, "threads", 0, strict=True),
        default=None,
        help="torch CPU threads (default: torch's own; 1 is best on a shared CPU)",
    )
    r.set_defaults(func=_reproduce, subparser=r)
    return parser


# ---------------------------------------------------------------------------------------------- train
def _given(args) -> Dict[str, Any]:
    """The RunConfig settings given on the command line (dict settings as dicts)."""
    given = {}
    for f in dataclasses.fields(RunConfig):
        value = getattr(args, f.name)
        if value is not None:
            given[f.name] = dict(value) if setting_kind(f)[0] is dict else value
    return given


def _config_from_args(args) -> RunConfig:
    """The run's configuration: the ``--config`` file (if any), then the flags given over it."""
    values: Dict[str, Any] = {}
    if args.config:
        values = load_config(args.config).to_dict()
        values.pop("pyro_decomp_version", None)
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
            run_dir = args.run_dir or _default_run_dir(config.dataset)
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
        f"trained {result.trained_epochs} epochs in {time.perf_counter() - start:.1f} s "
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
        )
    except (CheckpointError, RunLocked, NonFiniteLossError, ValueError, OSError) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 1
    for key, value in _summary(result):
        print(f"{key:>34}: {value:.6g}" if isinstance(value, float) else f"{key:>34}: {value}")
    print(f"evaluation written to {os.path.join(args.run_dir, EVALUATION_NAME)}")
    for name, path in result.get("figures", {}).items():
        print(f"  figure: {path} ({name.replace('_', ' ')})")
    return 0


def _summary(result: Dict[str, Any]):
    """The numbers of ``evaluation.json`` a reader looks at first, as (label, value) pairs."""
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value
    yield "iwae_log_likelihood", result["iwae_log_likelihood"]["mean"]
    for key, value in result.get("overlap", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"overlap: {key}", value
    alignment = result.get("alignment", {})
    if alignment.get("value") is not None:
        yield f"alignment: {alignment['divergence']}", alignment["value"]


# ---------------------------------------------------------------------------------------------- reproduce
def _reproduce(args, parser) -> int:
    """Exit status: 0 when the report is written, 2 for a bad setting, 130 when interrupted (finished and
    interrupted runs keep their checkpoints, and the same command resumes them)."""
    try:
        path = reproduce(
            args.experiment,
            args.scale,
            args.out,
            seeds=args.seeds,
            data_root=args.data_root,
            progress=args.progress,
            threads=args.threads,
            workers=args.workers,
        )
    except TrainingInterrupted as e:
        print(f"pyro-decomp: {e}; run the same command again to resume", file=sys.stderr)
        return 128 + int(e.signal)
    except (ValueError, OSError, CheckpointError, RunLocked) as e:
        print(f"pyro-decomp: error: {_message(e)}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
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

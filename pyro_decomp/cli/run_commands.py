"""``pyro-decomp train`` and ``pyro-decomp evaluate``: one run, trained (or resumed) and evaluated."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any, Dict, List

from pyro_decomp.callbacks import TensorBoardCallback
from pyro_decomp.cli.flags import (
    HelpFormatter,
    add_config_flags,
    config_flag,
    config_from_args,
    device_name,
    flag_settings,
    number,
    one_line,
)
from pyro_decomp.config import RESUMABLE, SEED_MAXIMUM
from pyro_decomp.data.sources import source_name
from pyro_decomp.evaluation import evaluate, write_figures
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

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    """The ``train`` and ``evaluate`` subcommands."""
    t = sub.add_parser(
        "train",
        help="train a decomposition VAE (no arguments: the paper's pinwheel clustering run)",
        description="Train a decomposition VAE with the objective of Mathieu et al. (2019, eq. 7): "
        "E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z)). Settings left out take the data "
        "set's defaults (the paper's). --resume RUN_DIR continues a run with its own settings (only "
        f"{', '.join(config_flag(k) for k in RESUMABLE)} may change); --epochs is always the run's total.",
        formatter_class=HelpFormatter,
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
    add_config_flags(t)
    t.set_defaults(func=_train, subparser=t)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a trained run: metrics to RUN_DIR/evaluation.json, figures to RUN_DIR/figures",
        description="Load RUN_DIR (config.json, checkpoint.pt) and write RUN_DIR/evaluation.json: the loss "
        "components and the IWAE log-likelihood on the test set, reconstruction error, Hoyer sparsity, "
        "overlap and alignment, and on ground-truth data the disentanglement score and MIG; and the figures "
        "that fit the data under RUN_DIR/figures.",
        formatter_class=HelpFormatter,
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    e.add_argument("--device", type=device_name, default="cpu", help="device to evaluate on")
    e.add_argument(
        "--max-points", type=number(int, "max-points", 1, strict=True), default=1000, help="test points used"
    )
    e.add_argument(
        "--iwae-samples",
        type=number(int, "iwae-samples", 0, strict=True),
        default=100,
        help="importance samples of the IWAE log-likelihood",
    )
    e.add_argument(
        "--factor-points",
        type=number(int, "factor-points", 1, strict=True),
        help="ground-truth points for disentanglement and MIG (default: all)",
    )
    e.add_argument(
        "--num-votes",
        type=number(int, "num-votes", 0, strict=True),
        default=20000,
        help="disentanglement votes",
    )
    e.add_argument(
        "--votes-size", type=number(int, "votes-size", 1, strict=True), default=1000, help="codes per vote"
    )
    e.add_argument(
        "--seed",
        type=number(int, "seed", 0, upper=SEED_MAXIMUM),
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
    given = flag_settings(args)
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
            print(f"pyro-decomp: no figures ({one_line(e)})", file=sys.stderr)


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
            config = config_from_args(args)
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
        print(f"pyro-decomp: error: {one_line(e)}", file=sys.stderr)
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
        print(f"pyro-decomp: error: {one_line(e)}", file=sys.stderr)
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

"""The ``pyro-decomp`` command line: ``train`` and ``evaluate`` decomposition VAEs.

``pyro-decomp train`` with no arguments runs the pinwheel clustering experiment of Mathieu et al. (2019,
§5.2): the 4-component mixture prior, 2-D latents, β = 0 and α = 1 with the inclusive KL, 500 epochs of the
400-point pinwheel in batches of 400. Under ``torchrun --nproc_per_node=P -m pyro_decomp train ...`` it
trains data-parallel on P processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

__all__ = ["build_parser", "main"]

EXIT_INTERRUPTED = 130

# options that keep their meaning when a run is resumed; every other train option comes from config.json
_RESUME_OPTIONS = ("epochs", "device", "checkpoint_every", "num_workers", "num_threads")


# ------------------------------------------------------------------------------------------- argument types
def _number(kind, name, lower=None, strict=False, upper=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}")
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
    from pyro_decomp.training import _check_device_name

    try:
        _check_device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; for settings that depend on the data set, the default of each data set."""

    def _get_help_string(self, action):
        from pyro_decomp.training import DATASET_DEFAULTS

        text = action.help or ""
        if action.default is None and action.dest in DATASET_DEFAULTS["pinwheel"]:
            groups = {}
            for dataset, values in DATASET_DEFAULTS.items():
                groups.setdefault(repr(values[action.dest]), []).append(dataset)
            per = "; ".join(f"{'/'.join(names)}: {value}" for value, names in groups.items())
            return f"{text} (default: per data set -- {per})"
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from pyro_decomp.divergences import DIVERGENCES
    from pyro_decomp.priors import PRIORS
    from pyro_decomp.training import DATASETS, NETWORKS
    from pyro_decomp.vae import LIKELIHOODS

    parser = argparse.ArgumentParser(prog="pyro-decomp", description=__doc__, formatter_class=_HelpFormatter)
    from pyro_decomp import __version__

    parser.add_argument("--version", action="version", version=f"pyro-decomp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,reproduce}")

    t = sub.add_parser(
        "train",
        help="train a decomposition VAE (no arguments: the paper's pinwheel clustering run)",
        description="Train a decomposition VAE with the objective of Mathieu et al. (2019, eq. 7): "
        "E_q[log p(x|z)] - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z)). Settings left out take the data "
        "set's defaults (the paper's). --resume RUN_DIR continues a run with its own settings; --epochs is "
        "always the run's total.",
        formatter_class=_HelpFormatter,
    )
    data = t.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="pinwheel", help="the data set")
    data.add_argument(
        "--data-root", help="directory of the data files (dSprites, Fashion-MNIST, shapes cache)"
    )
    data.add_argument(
        "--data-option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument of the data set, VALUE as JSON (repeatable), e.g. num_per_class=50, "
        "subsample='{\"orientation\": 8}', download=true",
    )
    model = t.add_argument_group("model and objective")
    model.add_argument("--prior", choices=PRIORS, help="the prior p(z)")
    model.add_argument(
        "--prior-option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument of the prior, VALUE as JSON (repeatable), e.g. scale=2.0",
    )
    model.add_argument(
        "--df", type=_number(float, "df", 0.0, strict=True), help="Student-t degrees of freedom"
    )
    model.add_argument(
        "--gamma", type=_number(float, "gamma", 0.0, upper=1.0), help="sparse prior's spike weight"
    )
    model.add_argument("--variance", choices=("iso", "pca"), help="Gaussian prior's variances")
    model.add_argument(
        "--learn-variance", action="store_true", default=None, help="learn the Gaussian prior's variances"
    )
    model.add_argument("--beta", type=_number(float, "beta", 0.0), help="weight of KL(q(z|x) || p(z)), >= 0")
    model.add_argument("--alpha", type=_number(float, "alpha", 0.0), help="weight of N D(q(z), p(z)), >= 0")
    model.add_argument("--divergence", choices=DIVERGENCES, help="the estimator of D(q(z), p(z))")
    model.add_argument(
        "--global-divergence",
        action="store_true",
        default=None,
        help="under torchrun, estimate D on the encoder samples of all processes",
    )
    model.add_argument("--latent-dim", type=_number(int, "latent-dim", 0, strict=True), help="latent size D")
    model.add_argument("--network", choices=NETWORKS, help="encoder/decoder family")
    model.add_argument("--likelihood", choices=LIKELIHOODS, help="p(x|z)")
    model.add_argument(
        "--likelihood-scale",
        type=_number(float, "likelihood-scale", 0.0, strict=True),
        help="Laplace scale / initial Normal scale",
    )
    model.add_argument(
        "--num-particles", type=_number(int, "num-particles", 0, strict=True), help="samples of z per point"
    )
    opt = t.add_argument_group("optimisation")
    opt.add_argument(
        "--epochs",
        type=_number(int, "epochs", 0, strict=True),
        help="total epochs of the run (also on resume)",
    )
    opt.add_argument(
        "--batch-size", type=_number(int, "batch-size", 1, strict=True), help="minibatch size per process"
    )
    opt.add_argument("--lr", type=_number(float, "lr", 0.0, strict=True), help="Adam (amsgrad) learning rate")
    opt.add_argument("--seed", type=_number(int, "seed", 0), help="random seed (default 0)")
    opt.add_argument(
        "--device", type=_device, help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)"
    )
    opt.add_argument(
        "--num-workers", type=_number(int, "num-workers", 0), help="DataLoader workers (default 0)"
    )
    opt.add_argument(
        "--threads",
        dest="num_threads",
        type=_number(int, "threads", 0, strict=True),
        help="torch CPU threads (None: torch's default)",
    )
    run = t.add_argument_group("run")
    run.add_argument("--run-dir", help="where to write the run (default runs/DATASET-DATE-TIME)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    run.add_argument(
        "--checkpoint-every",
        type=_number(int, "checkpoint-every", 0, strict=True),
        help="epochs between checkpoints",
    )
    run.add_argument("--overwrite", action="store_true", help="reuse a --run-dir that already holds a run")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-figures", action="store_true", help="draw no figures at the end")
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
    e.add_argument("--seed", type=_number(int, "seed", 0), default=0, help="seed of the subsets and samples")
    e.add_argument("--no-figures", action="store_true", help="write no figures")
    e.set_defaults(func=_evaluate, subparser=e)
    from pyro_decomp.experiments import add_reproduce_parser

    add_reproduce_parser(sub)
    return parser


# ---------------------------------------------------------------------------------------------- train
def _config_from_args(args):
    from pyro_decomp.training import RunConfig

    prior_options = dict(args.prior_option)
    for flag in ("df", "gamma", "variance", "learn_variance"):
        value = getattr(args, flag)
        if value is not None:
            prior_options[flag] = value
    values = dict(
        dataset=args.dataset,
        data_root=args.data_root,
        data_options=dict(args.data_option),
        prior=args.prior,
        prior_options=prior_options,
        beta=args.beta,
        alpha=args.alpha,
        divergence=args.divergence,
        global_divergence=bool(args.global_divergence),
        latent_dim=args.latent_dim,
        network=args.network,
        likelihood=args.likelihood,
        likelihood_scale=args.likelihood_scale,
        num_particles=args.num_particles,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.num_workers,
        num_threads=args.num_threads,
    )
    return RunConfig(**{k: v for k, v in values.items() if v is not None})


def _default_run_dir(dataset: str) -> str:
    base = os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    return path


def _given_with_resume(args) -> List[str]:
    """Train options given on the command line that a resumed run takes from its config.json instead."""
    ignored = set(_RESUME_OPTIONS) | {"resume", "no_progress", "no_figures", "func", "subparser", "command"}
    given = []
    for key, value in vars(args).items():
        if key in ignored:
            continue
        if key == "dataset":
            if value != "pinwheel":
                given.append("--dataset")
        elif value not in (None, [], False):
            given.append("--" + key.replace("_", "-"))
    return given


def _train(args, parser) -> int:
    import pyro_decomp.training as training
    from pyro_decomp.distributed import init_distributed, shutdown

    if args.resume:
        given = _given_with_resume(args)
        if given:
            parser.error(
                f"{', '.join(given)} cannot be changed when resuming: a resumed run keeps the settings of "
                f"{os.path.join(args.resume, training.CONFIG_NAME)} (only --epochs, --device, "
                "--checkpoint-every, --num-workers and --threads may be given)"
            )
        try:
            config = training.RunConfig.load(args.resume)
        except (FileNotFoundError, ValueError) as e:
            parser.error(f"--resume {args.resume}: {e}")
        changes = {k: getattr(args, k) for k in _RESUME_OPTIONS if getattr(args, k) is not None}
        run_dir = args.resume
        if not os.path.exists(os.path.join(run_dir, training.CHECKPOINT_NAME)):
            parser.error(f"--resume {run_dir}: no checkpoint ({training.CHECKPOINT_NAME}) in that directory")
    else:
        try:
            config = _config_from_args(args)
        except ValueError as e:
            parser.error(str(e))
        changes = {}
        run_dir = args.run_dir or _default_run_dir(config.dataset)
        if (
            not args.overwrite
            and os.path.isdir(run_dir)
            and any(
                os.path.exists(os.path.join(run_dir, name))
                for name in (training.CONFIG_NAME, training.CHECKPOINT_NAME)
            )
        ):
            parser.error(
                f"--run-dir {run_dir} already holds a run: continue it with --resume {run_dir}, "
                "or pass --overwrite, or choose another directory"
            )
    epochs = changes.pop("epochs", None)
    try:
        config = config.replace(**changes)
        device = training.resolve_device(config.device)
    except ValueError as e:
        parser.error(str(e))

    context = init_distributed(device)
    main = context.is_main
    progress = not args.no_progress
    start = time.perf_counter()
    try:
        if args.resume:
            if main:
                state = training.load_checkpoint(os.path.join(run_dir, training.CHECKPOINT_NAME))
                print(
                    f"resuming {run_dir} from epoch {state['epoch']} (step {state['step']})", file=sys.stderr
                )
            trainer = training.resume(
                run_dir, epochs, device=config.device, progress=progress, context=context
            )
        else:
            if main and args.overwrite:
                for name in (training.CHECKPOINT_NAME, training.METRICS_NAME, training.EVALUATION_NAME):
                    if os.path.exists(os.path.join(run_dir, name)):
                        os.remove(os.path.join(run_dir, name))
            trainer = training.train(config, run_dir, progress=progress, context=context)
    except training.TrainingInterrupted as e:
        if main:
            print(f"pyro-decomp: {e}", file=sys.stderr)
            if e.checkpoint:
                print(f"continue with: pyro-decomp train --resume {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (training.NonFiniteLossError, training.CheckpointError) as e:
        if main:
            print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        if main:
            print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown(context)
    if not main:
        return 0

    figures = {}
    if not args.no_figures:
        try:
            figures = training.write_figures(
                trainer.vae,
                trainer.config,
                trainer.train_set,
                os.path.join(run_dir, training.FIGURES_DIR),
                metrics_path=trainer.metrics_path,
                kinds=("aggregate_posterior", "training_curves"),
                seed=trainer.config.seed,
            )
        except ImportError as e:  # matplotlib missing: the run itself is complete
            print(f"pyro-decomp: no figures ({e})", file=sys.stderr)
    last = trainer.history[-1] if trainer.history else {}
    print(f"trained {trainer.epoch} epochs in {time.perf_counter() - start:.1f} s", end="")
    print(f"; final loss per data point {last['loss']:.4f}" if "loss" in last else "")
    print(f"run directory: {run_dir}")
    print(f"  config:      {os.path.join(run_dir, training.CONFIG_NAME)}")
    print(f"  checkpoint:  {trainer.checkpoint_path}")
    print(f"  metrics:     {trainer.metrics_path}")
    for name, path in figures.items():
        print(f"  figure:      {path} ({name.replace('_', ' ')})")
    print(f"evaluate it with: pyro-decomp evaluate {run_dir}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate
def _evaluate(args, parser) -> int:
    import pyro_decomp.training as training

    if not os.path.isdir(args.run_dir):
        parser.error(f"RUN_DIR {args.run_dir} is not a directory")
    try:
        result = training.evaluate(
            args.run_dir,
            device=args.device,
            max_points=args.max_points,
            iwae_samples=args.iwae_samples,
            factor_points=args.factor_points,
            num_votes=args.num_votes,
            votes_size=args.votes_size,
            seed=args.seed,
            figures=not args.no_figures,
        )
    except (training.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"pyro-decomp: error: {e}", file=sys.stderr)
        return 1
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key, value in shown.items():
        print(f"{key:>30}: {value:.6g}" if isinstance(value, float) else f"{key:>30}: {value}")
    print(f"{'iwae_log_likelihood':>30}: {result['iwae_log_likelihood']['mean']:.6g}")
    print(f"evaluation written to {os.path.join(args.run_dir, training.EVALUATION_NAME)}")
    for name, path in result.get("figures", {}).items():
        print(f"  figure: {path} ({name.replace('_', ' ')})")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``pyro-decomp``; returns the exit status (0 ok, 1 failed, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args, args.subparser)


if __name__ == "__main__":
    sys.exit(main())

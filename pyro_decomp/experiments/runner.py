"""Running the paper's experiments: every arm with every seed, measured, judged and written as a report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import pyro
import torch

from pyro_decomp import plots
from pyro_decomp.experiments.configs import EXPERIMENTS, ExperimentConfig, experiment_config
from pyro_decomp.experiments.measure import EVALUATORS, shapes_at_32, train_run
from pyro_decomp.experiments.report import command, summary_figures, write_report
from pyro_decomp.experiments.verdicts import CLAIMS, VERDICTS
from pyro_decomp.util import read_jsonl

__all__ = ["reproduce", "run_experiment"]


def run_experiment(
    config: ExperimentConfig, out, progress: bool = False, log: Optional[Callable[[str], None]] = print
) -> Dict[str, Any]:
    """Train every arm of ``config`` with every seed and measure it; figures and run directories go under
    ``out/<experiment>/``. A run whose checkpoint of the same configuration is already there is resumed
    (or, when finished, only evaluated).

    :param progress: show the trainer's progress bars.
    :param log: called with one line per finished run (``None``: silent).
    :returns: a plain (JSON-serialisable) dict: settings, arms, per-run metrics, figures and the verdict on
        the paper's claim.
    """

    config.validate()
    log = log or (lambda line: None)
    root = Path(out) / config.name
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    data = None
    if config.name == "sparsity" and config.stand_in:
        data = shapes_at_32(config.run)
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
                "label": arm.label or arm.name,
            }
            for arm in config.arms
        ],
        "runs": [],
    }
    start = time.perf_counter()
    kept: Dict[str, Tuple[Any, Any]] = {}
    for arm in config.arms:
        for seed in config.seeds:
            first = seed == config.seeds[0]  # per-run figures for the first seed only
            tag = f"{arm.name}_seed{seed}"
            run_dir = root / "runs" / tag
            vae, train_set, test_set, wall = train_run(config, arm, seed, run_dir, data, progress)
            # the training time of the run's epochs, from its log (also right for a resumed run)
            train_seconds = sum(r.get("seconds", 0.0) for r in read_jsonl(run_dir / "metrics.jsonl"))
            t0 = time.perf_counter()
            pyro.set_rng_seed(10_000 + seed)  # evaluation draws are reproducible, also for a resumed run
            generator = torch.Generator().manual_seed(10_000 + seed)
            metrics, paths = EVALUATORS[config.name](
                config, arm, vae, train_set, test_set, generator, figures if first else None, tag
            )
            if first:
                log_records = read_jsonl(run_dir / "metrics.jsonl")
                paths["curves"] = plots.plot_training_curves(
                    log_records,
                    figures / f"{tag}_curves.png",
                    keys=[
                        k
                        for k in ("loss", "reconstruction", "kl", "divergence")
                        if any(k in r for r in log_records)
                    ]
                    or None,
                )
                if config.name == "independence":
                    kept[arm.name] = (vae, test_set)
            record = {
                "arm": arm.name,
                "seed": seed,
                "metrics": {k: float(v) for k, v in metrics.items()},
                "train_seconds": train_seconds,
                "eval_seconds": time.perf_counter() - t0,
                "run_dir": str(run_dir),
                "figures": {k: str(v) for k, v in paths.items()},
            }
            result["runs"].append(record)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
            log(
                f"[{config.name}] {arm.label or arm.name}, seed {seed}: trained in {wall:.1f} s, "
                f"evaluated in {record['eval_seconds']:.1f} s; {shown}"
            )
    result["seconds"] = time.perf_counter() - start
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
) -> str:
    """Run one of the paper's experiments (or ``"all"``) at ``scale`` and write ``out/report.md``.

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
    :returns: the path of ``report.md``.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    names = EXPERIMENTS if experiment == "all" else (experiment,)
    if experiment != "all" and experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; expected one of {EXPERIMENTS + ('all',)}")
    configs = [experiment_config(name, scale, seeds=seeds, data_root=data_root) for name in names]
    results = []
    for config in configs:
        result = run_experiment(config, out, progress=progress, log=log)
        result["command"] = command(config.name, scale, out, seeds, data_root, threads)
        results.append(result)
    return write_report(results, out, command=command(experiment, scale, out, seeds, data_root, threads))

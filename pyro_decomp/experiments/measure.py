"""Training and measuring one run of an experiment: train-or-resume, and each experiment's measurements.

:func:`measure_run` is the whole of one run: train it (or resume it, or only load it when finished), measure
it with the experiment's evaluator (:data:`EVALUATORS`) under draws seeded by the seed alone
(``10_000 + seed``), and draw its figures. It depends on nothing but its arguments and the files of its run
directory, so runs may be measured one after the other in one process or side by side in several, with the
same results.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pyro
import torch
from torch.utils.data import TensorDataset

from pyro_decomp import metrics, plots
from pyro_decomp.build import build
from pyro_decomp.config import RESUMABLE, RunConfig
from pyro_decomp.data import SHAPE_NAMES, Shapes
from pyro_decomp.data.indexing import grid_subset, subset_index, take
from pyro_decomp.divergences import build_divergence
from pyro_decomp.evaluation import encode_in_chunks, factor_split_sizes
from pyro_decomp.experiments.configs import Arm, ExperimentConfig
from pyro_decomp.experiments.paper_beta import paper_beta_term_prior
from pyro_decomp.metrics import adjusted_rand_index
from pyro_decomp.runs import CHECKPOINT_NAME, load_checkpoint, lock_run
from pyro_decomp.training import Trainer
from pyro_decomp.util import module_device, read_jsonl

__all__ = [
    "ACTIVE_VARIANCE",
    "EVALUATORS",
    "MIN_OCCUPANCY",
    "code_variances",
    "components_used",
    "decoder_scale",
    "experiment_data",
    "measure_run",
    "shapes_at_32",
    "train_run",
]

#: a prior component counts as used when it is the nearest component of at least this fraction of the points
MIN_OCCUPANCY = 0.05

#: a latent dimension is active when the variance of its encoder mean over the data exceeds this (the "active
#: units" rule of Burda, Grosse & Salakhutdinov, 2016, §5.2); a run with no active dimension has collapsed
ACTIVE_VARIANCE = 0.01


def code_variances(codes: torch.Tensor) -> torch.Tensor:
    """Var_x(E_q[z_d|x]) per latent dimension d, ``(D,)``: the variance of the encoder means ``codes``
    ``(N, D)`` over the N points (the population variance, 1/N).

    A run has *collapsed* when its encoder means barely vary, ``code_variances(codes).max() <
    ACTIVE_VARIANCE``: no dimension of z carries information about x (a unit-variance prior dimension that
    encodes x has a variance of its means near 1, one that ignores x near 0).
    """
    if codes.dim() != 2 or len(codes) < 2:
        raise ValueError(f"codes must have shape (N, D) with N >= 2, got {tuple(codes.shape)}")
    return codes.double().var(0, unbiased=False).float()


def shapes_at_32(run) -> Tuple[Any, Any]:
    """The stand-in for Fashion-MNIST: the shapes grid of ``run.data_options`` downsampled to 32×32 by 2×2
    averaging (grey levels in {0, ¼, ½, ¾, 1}), clamped to [1e-6, 1 − 1e-6] like Fashion-MNIST, labelled by
    shape, and split at random (seed 0) into 80% training and 20% test points."""

    shapes = Shapes(root=run.data_root, **run.data_options)
    index = torch.arange(len(shapes))
    x64, factors = shapes.images_at(index), shapes.factors_from_index(index)
    x = torch.nn.functional.avg_pool2d(x64, 2).clamp(1e-6, 1 - 1e-6)
    labels = factors[:, shapes.factor_names.index("shape")]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test = perm[: max(1, len(x) // 5)]
    train = perm[len(test) :]
    return TensorDataset(x[train], labels[train]), TensorDataset(x[test], labels[test])


_DATA: Dict[Tuple[str, str], Any] = {}


def experiment_data(config: ExperimentConfig):
    """The data set that the runs of ``config`` share when :func:`~pyro_decomp.build.build` cannot make it
    from the run's settings (the 32×32 shapes that stand in for Fashion-MNIST), else ``None``; made once per
    process."""
    if not (config.name == "sparsity" and config.stand_in):
        return None
    key = (config.name, config.run.to_json())
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = shapes_at_32(config.run)
    return _DATA[key]


# ---------------------------------------------------------------------------------------------- training
def train_run(config: ExperimentConfig, arm: Arm, seed: int, run_dir: Path, data, progress: bool):
    """Build and train one run in ``run_dir`` (holding its lock); a finished or interrupted run of the same
    configuration found there (its checkpoint) is resumed instead of retrained.

    :returns: ``(vae, train_set, test_set, seconds)``.
    """
    cfg = config.run_config(arm, seed)
    pyro.set_rng_seed(cfg.seed)
    vae, elbo, train_set, test_set = build(cfg, data=data)
    if arm.beta_term == "paper":  # the same prior, with the KL against p(z)² as its β term
        vae.prior = paper_beta_term_prior(vae.prior)
    if config.subset_steps:
        train_set = test_set = grid_subset(train_set, config.subset_steps)
    with lock_run(str(run_dir)):
        trainer = Trainer(vae, elbo, train_set, cfg, str(run_dir), progress=progress)
        start = time.perf_counter()
        checkpoint = run_dir / CHECKPOINT_NAME
        if checkpoint.exists():
            state = load_checkpoint(str(checkpoint))
            saved = RunConfig.from_dict(state["config"])
            same = not [k for k in saved.differences(cfg) if k not in RESUMABLE]
            if same and int(state["epoch"]) <= cfg.epochs:  # else: a different run, trained afresh over it
                trainer.load_state_dict(state)  # the checkpoint read once
        if trainer.epoch < cfg.epochs:
            trainer.fit(cfg.epochs)
    seconds = time.perf_counter() - start
    trainer.vae.eval()
    return trainer.vae, train_set, test_set, seconds


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _reconstruction(vae, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    """E_{q(z|x)}[log p(x|z)] per point ``(B,)``, by ``num_samples`` draws of z (nats)."""
    q = vae.encoder_distribution(x)
    z = q.sample((num_samples,))
    return vae.likelihood(vae.decoder(z), x.dim() - 1).log_prob(x).mean(0)


@torch.no_grad()
def _mean_reconstruction(vae, dataset, index: torch.Tensor, chunk: int = 512) -> float:
    device, total = module_device(vae), 0.0
    for start in range(0, len(index), chunk):
        x, _ = take(dataset, index[start : start + chunk])
        total += float(_reconstruction(vae, x.to(device)).sum())
    return total / len(index)


def _mixture_locations(vae) -> torch.Tensor:
    locs = getattr(vae.prior, "locs", None)
    if locs is None:
        raise ValueError(
            "the clustering experiment needs a mixture prior with component locations (MixturePrior), got "
            f"{type(vae.prior).__name__}"
        )
    return locs.detach()


def components_used(codes: torch.Tensor, locs: torch.Tensor, min_fraction: float = MIN_OCCUPANCY) -> int:
    """How many of the prior's components the encodings use: the number of components μ_k that are the
    nearest component (Euclidean) of at least ``min_fraction`` of the points.

    :param codes: encodings ``(N, D)`` (the clustering experiment: the held-out encoder means).
    :param locs: the components' locations ``(K, D)``.
    """
    if codes.dim() != 2 or locs.dim() != 2 or codes.shape[1] != locs.shape[1] or len(codes) == 0:
        raise ValueError(
            f"codes (N, D) with N >= 1 and locs (K, D) must share D, got {tuple(codes.shape)} and "
            f"{tuple(locs.shape)}"
        )
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction!r}")
    nearest = torch.cdist(codes, locs.to(codes)).argmin(-1)
    counts = torch.bincount(nearest, minlength=len(locs))
    return int((counts >= min_fraction * len(codes)).sum())


@torch.no_grad()
def decoder_scale(vae, z: torch.Tensor) -> float:
    """The likelihood's mean scale: the mean of the decoder's predicted scale σ(z) over ``z`` when the
    decoder predicts one, else the mean of the learnt global scale exp(``log_obs_scale``) (a Normal
    likelihood) or the fixed Laplace scale.

    :raises ValueError: for a likelihood without a scale (Bernoulli, or a custom one).
    """
    if vae.likelihood_name in ("bernoulli", "custom"):
        raise ValueError(f"the likelihood {vae.likelihood_name!r} has no scale")
    if vae.decoder_scale:
        return float(vae.decoder(z)[1].mean())
    if vae.likelihood_name == "normal":
        return float(vae.log_obs_scale.exp().mean())
    return float(vae.likelihood_scale)


def _figure_title(config, arm, what: str) -> str:
    """A run's figure title: the arm, what the figure shows, and at the smoke scale that the model is barely
    trained (grey, identical traversals and shapeless samples are expected there)."""
    smoke = "\n(smoke scale: barely trained, a plumbing check; expect blurred or uniform images)"
    return f"{arm.label or arm.name}: {what}" + (smoke if config.scale == "smoke" else "")


def _evaluate_clustering(config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str):

    ev = config.evaluation
    x, y = test_set.tensors[0].to(module_device(vae)), test_set.tensors[1]
    with torch.no_grad():
        loc, scale = vae.encode(x)
        locs = _mixture_locations(vae).to(loc)
        assignment = torch.cdist(loc, locs).argmin(-1).cpu()
        codes = (loc + scale * torch.randn(loc.shape, generator=generator).to(loc)).cpu()
    n = min(ev["divergence_points"], len(x))
    results = {
        "ari": adjusted_rand_index(y, assignment),
        "inclusive_kl": metrics.alignment(vae, x, "inclusive-kl", num_samples=n, generator=generator),
        "mmd": metrics.alignment(vae, x, "mmd", num_samples=n, generator=generator),
        "mutual_information": metrics.overlap(vae, x, num_samples=n, generator=generator)[
            "mutual_information"
        ],
        "reconstruction": float(_reconstruction(vae, x, num_samples=10).mean()),
        "components_used": float(components_used(loc, locs)),
        "decoder_scale": decoder_scale(vae, loc),
    }
    if figures is None:
        return results, {}, {}
    prior = copy.deepcopy(vae.prior).cpu()() if vae.prior is not None else vae.prior_distribution()
    paths = {
        "density": plots.plot_aggregate_posterior(
            codes,
            prior,
            figures / f"{tag}_density.png",
            title=_figure_title(config, arm, "held-out q(z) against p(z)"),
        ),
        "reconstructions": plots.plot_reconstructions(
            x.cpu(),
            vae.reconstruct(x).cpu(),
            figures / f"{tag}_reconstructions.png",
            title=_figure_title(config, arm, "held-out points and their reconstructions"),
        ),
    }
    return results, paths, {"encodings": loc.cpu(), "prior": prior}


def _evaluate_independence(
    config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str
):

    ev = config.evaluation
    index = subset_index(len(test_set), ev["eval_points"], generator)
    codes, factors = encode_in_chunks(vae, test_set, index)
    votes = {"num_votes": ev["num_votes"], "votes_size": ev["votes_size"]}
    if arm.prior == "student-t":
        # as the paper: each coordinate through the prior's CDF and the normal quantile before scoring
        transform = metrics.prior_cdf_transform(vae.prior_distribution())
        mapped = transform(codes.to(module_device(vae))).cpu()
        results = {
            "disentanglement": metrics.disentanglement_score(mapped, factors, generator=generator, **votes),
            "disentanglement_untransformed": metrics.disentanglement_score(
                codes, factors, generator=generator, **votes
            ),
        }
    else:
        results = {
            "disentanglement": metrics.disentanglement_score(codes, factors, generator=generator, **votes)
        }
    results["mig"] = metrics.mig(codes, factors, bins=ev["mig_bins"])
    # DCI and SAP on disentanglement_lib's split of the same codes, with draws of their own
    split = dict(zip(("num_train", "num_test"), factor_split_sizes(len(codes))))
    split_seed = generator.initial_seed()
    results["dci"] = metrics.dci(
        codes, factors, generator=torch.Generator().manual_seed(split_seed), **split
    )["disentanglement"]
    results["sap"] = metrics.sap(codes, factors, generator=torch.Generator().manual_seed(split_seed), **split)
    variances = code_variances(codes)
    results["max_code_variance"] = float(variances.max())  # collapsed below ACTIVE_VARIANCE
    results["active_dimensions"] = float((variances > ACTIVE_VARIANCE).sum())
    recon_index = subset_index(len(test_set), ev["recon_points"], generator)
    results["reconstruction_error"] = -_mean_reconstruction(vae, test_set, recon_index)
    if figures is None:
        return results, {}, {}
    # traversals around the mean code of 1,000 points (the report shows each prior's best β)
    index = subset_index(len(test_set), 1000, torch.Generator().manual_seed(0))
    base = encode_in_chunks(vae, test_set, index)[0].mean(0)
    values = torch.linspace(-3.0, 3.0, 9)
    path = plots.plot_traversals(
        plots.latent_traversal(vae, z=base, values=values),
        figures / f"{tag}_traversals.png",
        values=values,
        title=_figure_title(config, arm, "traversals around the mean code"),
    )
    return results, {"traversals": path}, {}


def _evaluate_sparsity(config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str):

    ev = config.evaluation
    n = len(test_set)
    index = subset_index(n, ev["eval_points"], generator)
    codes, labels = encode_in_chunks(vae, test_set, index)
    results = {"hoyer": metrics.hoyer_sparsity(codes)}
    results["reconstruction"] = _mean_reconstruction(
        vae, test_set, subset_index(n, ev["recon_points"], generator)
    )
    device = module_device(vae)
    x_iwae, _ = take(test_set, subset_index(n, ev["iwae_points"], generator))
    with torch.no_grad():
        iwae = metrics.iwae_log_likelihood(
            vae, x_iwae.to(device), num_samples=ev["iwae_samples"], batch_size=max(ev["iwae_samples"], 2000)
        )
    results["iwae"] = float(iwae.mean())
    x_div, _ = take(test_set, subset_index(n, ev["divergence_points"], generator))
    results["divergence"] = metrics.alignment(
        vae,
        x_div.to(device),
        build_divergence(arm.divergence),
        num_samples=len(x_div),
        batch_size=ev["divergence_batch"],
        generator=generator,
    )
    names = getattr(test_set, "classes", None)
    if names is None and config.stand_in:
        names = SHAPE_NAMES
    if figures is None:
        return results, {}, {}
    paths = {
        "magnitude": plots.plot_latent_magnitude(
            codes,
            labels,
            figures / f"{tag}_magnitude.png",
            class_names=names,
            title=_figure_title(config, arm, "mean latent magnitude per class"),
        ),
    }
    return results, paths, {}


# Each evaluator returns ``(metrics, figures, kept)``: the run's measurements (numbers), the paths of the
# figures it drew (only when given a figure folder: the first seed), and what the experiment's summary figures
# need of the run then (small tensors, a prior), else empty.
EVALUATORS = {
    "clustering": _evaluate_clustering,
    "independence": _evaluate_independence,
    "sparsity": _evaluate_sparsity,
}


# ---------------------------------------------------------------------------------------------- one run
def measure_run(config: ExperimentConfig, arm: Arm, seed: int, root: Path, progress: bool = False):
    """Train (or resume, or load when finished) the run of ``arm`` with ``seed`` in
    ``root/runs/<arm>_seed<seed>/`` and measure it; the first seed also draws its figures in
    ``root/figures/``.

    The measurements draw from generators seeded by ``10_000 + seed`` alone, so a resumed run, and a run
    measured in another process, measure the same.

    :returns: ``(record, kept, seconds)``: the run's record in the results (arm, seed, metrics, training
        and evaluation seconds, run directory, figures), what the summary figures need of it (the
        evaluator's ``kept``) and the wall time of this call's training.
    """
    root = Path(root)
    first = seed == config.seeds[0]  # per-run figures for the first seed only
    figures = root / "figures" if first else None
    tag = f"{arm.name}_seed{seed}"
    run_dir = root / "runs" / tag
    vae, train_set, test_set, wall = train_run(config, arm, seed, run_dir, experiment_data(config), progress)
    # the training time of the run's epochs, from its log (also right for a resumed run)
    log_records = read_jsonl(run_dir / "metrics.jsonl")
    train_seconds = sum(r.get("seconds", 0.0) for r in log_records)
    start = time.perf_counter()
    pyro.set_rng_seed(10_000 + seed)  # evaluation draws are reproducible, also for a resumed run
    generator = torch.Generator().manual_seed(10_000 + seed)
    metrics, paths, kept = EVALUATORS[config.name](
        config, arm, vae, train_set, test_set, generator, figures, tag
    )
    if first:
        keys = [k for k in ("loss", "reconstruction", "kl", "divergence") if any(k in r for r in log_records)]
        paths["curves"] = plots.plot_training_curves(
            log_records, figures / f"{tag}_curves.png", keys=keys or None
        )
    record = {
        "arm": arm.name,
        "seed": seed,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "run_dir": str(run_dir),
        "figures": {k: str(v) for k, v in paths.items()},
    }
    return record, kept, wall

"""Training and measuring one run of an experiment: train-or-resume, and each experiment's measurements."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Optional, Tuple

import pyro
import torch
from torch.utils.data import TensorDataset

from pyro_decomp import metrics, plots
from pyro_decomp.build import build
from pyro_decomp.config import RESUMABLE, RunConfig
from pyro_decomp.data import SHAPE_NAMES, Shapes
from pyro_decomp.data.indexing import grid_subset, subset_index, take
from pyro_decomp.divergences import build_divergence
from pyro_decomp.experiments.configs import Arm, ExperimentConfig
from pyro_decomp.metrics import adjusted_rand_index
from pyro_decomp.runs import CHECKPOINT_NAME, load_checkpoint, lock_run
from pyro_decomp.training import Trainer
from pyro_decomp.util import module_device

__all__ = ["EVALUATORS", "encode_in_chunks", "shapes_at_32", "train_run"]


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


# ---------------------------------------------------------------------------------------------- training
def train_run(config: ExperimentConfig, arm: Arm, seed: int, run_dir: Path, data, progress: bool):
    """Build and train one run in ``run_dir`` (holding its lock); a finished or interrupted run of the same
    configuration found there (its checkpoint) is resumed instead of retrained.

    :returns: ``(vae, train_set, test_set, seconds)``.
    """
    cfg = config.run_config(arm, seed)
    pyro.set_rng_seed(cfg.seed)
    vae, elbo, train_set, test_set = build(cfg, data=data)
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
                trainer.restore()
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
def encode_in_chunks(vae, dataset, index: torch.Tensor, chunk: int = 1024):
    """Encoder means of the points ``index`` and their labels or factors, in chunks (bounded memory)."""
    device, locs, labels = module_device(vae), [], []
    for start in range(0, len(index), chunk):
        x, y = take(dataset, index[start : start + chunk])
        locs.append(vae.encoder(x.to(device))[0].cpu())
        labels.append(y)
    return torch.cat(locs), torch.cat(labels)


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


def _evaluate_clustering(config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str):

    ev = config.evaluation
    x, y = test_set.tensors[0].to(module_device(vae)), test_set.tensors[1]
    with torch.no_grad():
        loc, scale = vae.encode(x)
        assignment = torch.cdist(loc, _mixture_locations(vae).to(loc)).argmin(-1).cpu()
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
    }
    if figures is None:
        return results, {}
    prior = copy.deepcopy(vae.prior).cpu()() if vae.prior is not None else vae.prior_distribution()
    paths = {
        "density": plots.plot_aggregate_posterior(codes, prior, figures / f"{tag}_density.png"),
        "reconstructions": plots.plot_reconstructions(
            x.cpu(), vae.reconstruct(x).cpu(), figures / f"{tag}_reconstructions.png"
        ),
    }
    return results, paths


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
    recon_index = subset_index(len(test_set), ev["recon_points"], generator)
    results["reconstruction_error"] = -_mean_reconstruction(vae, test_set, recon_index)
    return results, {}


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
        return results, {}
    paths = {
        "magnitude": plots.plot_latent_magnitude(
            codes, labels, figures / f"{tag}_magnitude.png", class_names=names
        ),
    }
    return results, paths


EVALUATORS = {
    "clustering": _evaluate_clustering,
    "independence": _evaluate_independence,
    "sparsity": _evaluate_sparsity,
}

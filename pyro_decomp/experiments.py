"""The paper's three experiments (Mathieu et al., 2019, §5) as configurations, runs and a results report.

Each experiment is a grid of *arms* (a prior and the weights β, α of the decomposition objective
L_{α,β} = E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)) − α D(q(z), p(z)), eq. 7) trained over one or more seeds with
the package's own :func:`~pyro_decomp.training.build` and :class:`~pyro_decomp.training.Trainer`, then judged
with :mod:`pyro_decomp.metrics` and drawn with :mod:`pyro_decomp.plots`:

``clustering`` (§5.2)
    pinwheel data, the 4-component mixture prior at (±1, 0), (0, ±1) with variance 0.03, 2-D latents, an MLP
    with 100 hidden units and a Normal likelihood; (β=1, α=0) against (β=0, α=1, inclusive KL). Claim: the
    α term, not β, makes the aggregate encoding q(z) cluster like the prior. Measured on a held-out pinwheel
    draw: the adjusted Rand index (:func:`adjusted_rand_index`) between the arm of each point and the prior
    component nearest its encoder mean, D(q(z), p(z)), the mutual information I(x; z) and the reconstruction.
``independence`` (§5.1)
    dSprites (or the procedural :class:`~pyro_decomp.data.Shapes` on the same factor grid), 10-D latents,
    64×64 convolutional networks, a Bernoulli likelihood; priors {isotropic Gaussian, anisotropic Gaussian
    from the data's principal variances, the same with learnt variances, Student-t ν=9} × a β sweep. Claim:
    breaking the isotropic prior's rotation symmetry improves axis-aligned disentanglement at little cost in
    reconstruction. Measured: the Kim & Mnih disentanglement score (Student-t codes mapped through the prior's
    CDF first, as the paper does), MIG and the reconstruction error.
``sparsity`` (§5.3)
    Fashion-MNIST at 32×32 (or the shapes resized to 32×32, class = shape, when the files are absent),
    50-D latents, DCGAN networks, a Laplace likelihood of scale 0.1, the spike-and-slab prior with
    γ ∈ {0, 0.8} and the per-dimension IMQ MMD with α ∈ {0, 100, ...}. Claim: the sparse prior *with*
    α > 0 gives sparser codes than either alone, at a modest cost in likelihood. Measured on the test
    split: the normalised Hoyer sparsity of the encoder means, the reconstruction and IWAE
    log-likelihoods, and D̂.

Every experiment comes at three scales (:data:`SCALES`): ``smoke`` (seconds, for tests), ``cpu`` and
``paper`` (the paper's settings, for a GPU). :func:`reproduce` runs one experiment or all of them and writes
``report.md`` with tables (mean ± standard deviation over seeds), figures, whether each claim held at that
scale, and the command that regenerates it.

The ``cpu`` scale is the largest that finishes in under an hour per experiment on one core of a 2-core
CPU (``--threads 1``; times measured on such a machine):

* clustering: the paper's settings (500 epochs of the 400-point draw, one batch of 400 each) × 10 seeds;
  about 6 minutes;
* independence: the shapes grid at every 2nd scale, 4th orientation and 4th x and y position (5,760
  images), 4 epochs (360 steps of 64) per run, 4 priors × β ∈ {1, 2, 4, 8}, three seeds; the metrics on
  all 5,760 images (800 votes of 100 points); about 35 minutes;
* sparsity: γ ∈ {0, 0.8} × α ∈ {0, 100}, three seeds, DCGAN width 32; Fashion-MNIST for 3 epochs (360
  steps of 500) or, without it, the shapes at 32×32 (23,040 images, 18,432 for training) for 10 epochs
  (370 steps); the metrics on 2,000 test images (IWAE on 200 images × 100 samples); about 40 minutes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "EXPERIMENTS",
    "SCALES",
    "Arm",
    "ExperimentConfig",
    "adjusted_rand_index",
    "experiment_config",
    "run_experiment",
    "write_report",
    "reproduce",
    "add_reproduce_parser",
]

EXPERIMENTS = ("clustering", "independence", "sparsity")
SCALES = ("smoke", "cpu", "paper")


# ---------------------------------------------------------------------------------------------- metric
def adjusted_rand_index(labels_true, labels_pred) -> float:
    r"""The adjusted Rand index (Hubert & Arabie, 1985) between two partitions of the same N points.

    With the contingency table n_{ij} (points in class i of the first partition and cluster j of the second),
    row sums a_i, column sums b_j and C(m) = m(m − 1)/2 the number of pairs among m points,

    .. math::

        \mathrm{ARI} = \frac{\sum_{ij} C(n_{ij}) - E}{\tfrac12 [\sum_i C(a_i) + \sum_j C(b_j)] - E},
        \qquad E = \frac{\sum_i C(a_i) \sum_j C(b_j)}{C(N)},

    the Rand index corrected for chance: 1 for identical partitions (up to relabelling), about 0 for
    independent ones, and negative for less agreement than chance. When both partitions are the trivial one
    (one cluster, or all singletons) the denominator is 0 and the value is 1.

    :param labels_true: integer labels ``(N,)`` (any values; only equality matters).
    :param labels_pred: integer labels ``(N,)``.
    :returns: the index as a float.
    """
    a = torch.as_tensor(labels_true)
    b = torch.as_tensor(labels_pred)
    for name, t in (("labels_true", a), ("labels_pred", b)):
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"labels_true and labels_pred must have the same length, got {len(a)} and {len(b)}")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"the adjusted Rand index needs at least 2 points, got {n}")
    _, ai = torch.unique(a, return_inverse=True)
    _, bi = torch.unique(b, return_inverse=True)
    na, nb = int(ai.max()) + 1, int(bi.max()) + 1
    table = torch.bincount(ai * nb + bi, minlength=na * nb).reshape(na, nb).double()

    def pairs(m: torch.Tensor) -> torch.Tensor:
        return (m * (m - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if float(maximum - expected) == 0.0:
        return 1.0
    return float((index - expected) / (maximum - expected))


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Arm:
    """One setting of an experiment: a prior (a name of :data:`pyro_decomp.priors.PRIORS` and its options)
    and the objective's β (overlap), α (alignment) and divergence D.

    :param name: identifier used for run directories and file names (letters, digits, ``._-``).
    :param label: how tables and figures name it.
    :param group: arms that share a prior share a group (independence: one group per prior, across β).
    """

    name: str
    prior: str
    beta: float
    alpha: float
    divergence: str
    prior_options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    group: str = ""


# Evaluation options and what they mean; every experiment takes a subset (see ``_EVALUATION_KEYS``).
_EVALUATION_DOC = {
    "eval_points": "points encoded for the metrics (None: the whole evaluation set)",
    "recon_points": "points on which the reconstruction log-likelihood is averaged",
    "num_votes": "Kim & Mnih disentanglement: number of votes",
    "votes_size": "Kim & Mnih disentanglement: points per vote",
    "mig_bins": "MIG: bins per code dimension",
    "iwae_points": "test points of the IWAE log-likelihood",
    "iwae_samples": "importance samples per point of the IWAE log-likelihood",
    "divergence_points": "held-out points of D(q(z), p(z))",
    "divergence_batch": "points per batch of the held-out D(q(z), p(z)) (None: one batch)",
}
_EVALUATION_KEYS = {
    "clustering": ("divergence_points",),
    "independence": ("eval_points", "recon_points", "num_votes", "votes_size", "mig_bins"),
    "sparsity": (
        "eval_points",
        "recon_points",
        "iwae_points",
        "iwae_samples",
        "divergence_points",
        "divergence_batch",
    ),
}


@dataclass
class ExperimentConfig:
    """An experiment at one scale: the settings shared by its runs, its arms, seeds and evaluation.

    :param name: one of :data:`EXPERIMENTS`.
    :param scale: one of :data:`SCALES`.
    :param run: the :class:`~pyro_decomp.training.RunConfig` shared by every run (data, networks, likelihood,
        epochs, batch size, learning rate); each arm sets its prior, β, α and divergence, each seed its seed.
    :param arms: the settings compared.
    :param seeds: training seeds; every arm is trained once per seed.
    :param evaluation: options of the measurements (see ``_EVALUATION_DOC``).
    :param stand_in: a short description of the data used instead of the paper's, or ``""``.
    :param subset_steps: ground-truth data only: keep every k-th value of each factor (a smaller complete
        grid) when the data set itself cannot subsample (the dSprites file).
    """

    name: str
    scale: str
    run: Any
    arms: Tuple[Arm, ...]
    seeds: Tuple[int, ...]
    evaluation: Dict[str, Any]
    stand_in: str = ""
    subset_steps: Optional[Dict[str, int]] = None

    def validate(self) -> ExperimentConfig:
        """Check every setting; :class:`ValueError` names the first bad one. Returns ``self``."""
        from pyro_decomp.priors import PRIORS
        from pyro_decomp.training import RunConfig

        if self.name not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {self.name!r}; expected one of {EXPERIMENTS}")
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; expected one of {SCALES}")
        if not isinstance(self.run, RunConfig):
            raise ValueError(f"run must be a RunConfig, got {type(self.run).__name__}")
        if not self.arms:
            raise ValueError(f"experiment {self.name!r} needs at least one arm, got none")
        names = [arm.name for arm in self.arms]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"arm names must be unique, got {duplicated} more than once")
        for arm in self.arms:
            if not arm.name or not all(c.isalnum() or c in "._-" for c in arm.name):
                raise ValueError(f"arm name {arm.name!r} must be non-empty letters, digits, '.', '_' or '-'")
            if arm.prior not in PRIORS:
                raise ValueError(f"arm {arm.name!r}: unknown prior {arm.prior!r}; expected one of {PRIORS}")
            self.run_config(arm, self.seeds[0] if self.seeds else 0)  # RunConfig checks β, α, divergence...
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed, got none")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        allowed = _EVALUATION_KEYS[self.name]
        unknown = sorted(set(self.evaluation) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown evaluation options {unknown} for experiment {self.name!r}; "
                f"expected some of {allowed}"
            )
        for key, value in self.evaluation.items():
            if value is None and key in ("eval_points", "divergence_batch"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"evaluation option {key} must be a positive integer, got {value!r}")
        if self.subset_steps is not None:
            for key, step in self.subset_steps.items():
                if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                    raise ValueError(
                        f"subset step for factor {key!r} must be a positive integer, got {step!r}"
                    )
        return self

    def run_config(self, arm: Arm, seed: int):
        """The :class:`~pyro_decomp.training.RunConfig` of ``arm`` trained with ``seed``."""
        return self.run.replace(
            prior=arm.prior,
            prior_options=dict(arm.prior_options),
            beta=float(arm.beta),
            alpha=float(arm.alpha),
            divergence=arm.divergence,
            seed=int(seed),
        )

    def settings(self) -> Dict[str, Any]:
        """The settings shared by the runs, as plain values (for the report)."""
        run = self.run.resolved()
        keep = (
            "dataset",
            "data_options",
            "latent_dim",
            "network",
            "network_options",
            "likelihood",
            "likelihood_scale",
            "epochs",
            "batch_size",
            "lr",
            "num_particles",
            "analytic_kl",
        )
        values = {k: getattr(run, k) for k in keep}
        values["seeds"] = list(self.seeds)
        values["evaluation"] = dict(self.evaluation)
        if self.subset_steps:
            values["subset_steps"] = dict(self.subset_steps)
        return values


# Every k-th value of (shape, scale, orientation, position_x, position_y) for the shapes grid per scale.
_SHAPES_SUBSAMPLE = {
    "smoke": {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8},  # 3·2·2·4·4 = 192 images
    "cpu": {"scale": 2, "orientation": 4, "position_x": 4, "position_y": 4},  # 3·3·10·8·8 = 5,760 images
    "paper": {},  # the whole grid, 737,280 images
}
# the stand-in for Fashion-MNIST: shapes at 32×32, class = shape
_STAND_IN_SUBSAMPLE = {
    "smoke": {"scale": 3, "orientation": 20, "position_x": 8, "position_y": 8},
    "cpu": {"scale": 2, "orientation": 4, "position_x": 2, "position_y": 2},  # 23,040 images
    "paper": {"orientation": 4, "position_x": 2, "position_y": 2},  # 46,080 images
}

# Scale-dependent settings of each experiment (the rest are the paper's and fixed).
_SCALE_SETTINGS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "clustering": {
        "smoke": {"epochs": 10, "num_per_class": 25, "seeds": (0,), "divergence_points": 100},
        "cpu": {"epochs": 500, "num_per_class": 100, "seeds": tuple(range(10)), "divergence_points": 400},
        "paper": {"epochs": 500, "num_per_class": 100, "seeds": tuple(range(10)), "divergence_points": 400},
    },
    "independence": {
        "smoke": {
            "epochs": 1,
            "betas": (1.0, 4.0),
            "seeds": (0,),
            "network_options": {"hidden": 32},
            "evaluation": {
                "eval_points": None,
                "recon_points": 128,
                "num_votes": 100,
                "votes_size": 20,
                "mig_bins": 10,
            },
        },
        "cpu": {
            "epochs": 4,
            "betas": (1.0, 2.0, 4.0, 8.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "evaluation": {
                "eval_points": None,
                "recon_points": 2000,
                "num_votes": 800,
                "votes_size": 100,
                "mig_bins": 20,
            },
        },
        "paper": {
            "epochs": 20,
            "betas": (1.0, 2.0, 4.0, 8.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "evaluation": {
                "eval_points": None,
                "recon_points": 10000,
                "num_votes": 800,
                "votes_size": 1000,
                "mig_bins": 20,
            },
        },
    },
    "sparsity": {
        "smoke": {
            "epochs": {"fashion-mnist": 1, "shapes": 1},  # by data source
            "alphas": (0.0, 100.0),
            "seeds": (0,),
            "network_options": {"width": 8},
            "batch_size": 100,
            "evaluation": {
                "eval_points": None,
                "recon_points": 64,
                "iwae_points": 16,
                "iwae_samples": 8,
                "divergence_points": 64,
                "divergence_batch": None,
            },
        },
        "cpu": {
            "epochs": {"fashion-mnist": 3, "shapes": 10},  # by data source
            "alphas": (0.0, 100.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "batch_size": 500,
            "evaluation": {
                "eval_points": 2000,
                "recon_points": 2000,
                "iwae_points": 200,
                "iwae_samples": 100,
                "divergence_points": 2000,
                "divergence_batch": 500,
            },
        },
        "paper": {
            "epochs": {"fashion-mnist": 80, "shapes": 80},  # by data source
            "alphas": (0.0, 10.0, 100.0, 1000.0),
            "seeds": (0, 1, 2),
            "network_options": {},
            "batch_size": 500,
            "evaluation": {
                "eval_points": None,
                "recon_points": 10000,
                "iwae_points": 10000,
                "iwae_samples": 1000,
                "divergence_points": 10000,
                "divergence_batch": 500,
            },
        },
    },
}

_INDEPENDENCE_PRIORS = (
    ("iso", "isotropic Gaussian", "gaussian", {"variance": "iso"}),
    ("pca", "anisotropic Gaussian (PCA)", "gaussian", {"variance": "pca"}),
    ("learnt", "anisotropic Gaussian (learnt)", "gaussian", {"variance": "pca", "learn_variance": True}),
    ("student-t", "Student-t ν=9", "student-t", {"df": 9.0}),
)


def _fashion_mnist_present(data_root: Optional[str]) -> bool:
    if data_root is None:
        return False
    from pyro_decomp.data.fashion_mnist import FASHION_MNIST_FILES

    raw = Path(data_root).expanduser() / "FashionMNIST" / "raw"
    return all((raw / n).exists() or (raw / (n + ".gz")).exists() for n in FASHION_MNIST_FILES)


def _dsprites_present(data_root: Optional[str]) -> bool:
    if data_root is None:
        return False
    from pyro_decomp.data import DSPRITES_FILENAME

    return (Path(data_root).expanduser() / DSPRITES_FILENAME).exists()


def _fmt_number(value: float) -> str:
    return f"{value:g}"


def experiment_config(
    name: str,
    scale: str = "smoke",
    seeds: Optional[Sequence[int]] = None,
    data_root: Optional[str] = None,
) -> ExperimentConfig:
    """The configuration of experiment ``name`` at ``scale``.

    :param name: one of :data:`EXPERIMENTS`.
    :param scale: one of :data:`SCALES`.
    :param seeds: training seeds (default: the scale's, see ``_SCALE_SETTINGS``).
    :param data_root: directory of the data files. ``independence`` uses the dSprites file there when present
        (else the procedural shapes, rendered in memory for small grids or cached there); ``sparsity`` uses
        Fashion-MNIST there (``FashionMNIST/raw/``) when present, else the shapes at 32×32.
    :raises ValueError: for an unknown name or scale, or bad seeds.
    """
    from pyro_decomp.training import RunConfig

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {EXPERIMENTS}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    s = _SCALE_SETTINGS[name][scale]
    seeds = tuple(s["seeds"]) if seeds is None else tuple(seeds)
    stand_in, subset_steps = "", None
    if name == "clustering":
        run = RunConfig(
            dataset="pinwheel",
            data_options={"num_per_class": s["num_per_class"], "seed": 0, "test_seed": 1},
            latent_dim=2,
            network="mlp",
            network_options={"hidden": [100]},
            likelihood="normal",
            likelihood_scale=0.1,
            epochs=s["epochs"],
            batch_size=400,
            lr=1e-3,
            checkpoint_every=s["epochs"],
            device="auto",
        )
        arms = (
            Arm("beta1_alpha0", "pinwheel", 1.0, 0.0, "inclusive-kl", label="β=1, α=0", group="beta"),
            Arm(
                "beta0_alpha1",
                "pinwheel",
                0.0,
                1.0,
                "inclusive-kl",
                label="β=0, α=1 (inclusive KL)",
                group="alpha",
            ),
        )
        evaluation = {"divergence_points": s["divergence_points"]}
    elif name == "independence":
        if _dsprites_present(data_root):
            dataset, data_options = "dsprites", {"progress": scale == "paper"}
            subset_steps = dict(_SHAPES_SUBSAMPLE[scale]) or None
        else:
            dataset = "shapes"
            data_options = {"subsample": dict(_SHAPES_SUBSAMPLE[scale]), "progress": scale == "paper"}
            stand_in = (
                "the procedural shapes of `pyro_decomp.data.Shapes` (the dSprites factor grid, not "
                "pixel-identical to DeepMind's file), because the dSprites file was not found"
                + (f" in {data_root}" if data_root else " (no --data-root given)")
            )
        run = RunConfig(
            dataset=dataset,
            data_root=data_root,
            data_options=data_options,
            latent_dim=10,
            network="conv64",
            network_options=dict(s["network_options"]),
            likelihood="bernoulli",
            epochs=s["epochs"],
            batch_size=64,
            lr=5e-4,
            checkpoint_every=1,
            device="auto",
            num_workers=4 if scale == "paper" else 0,
        )
        arms = tuple(
            Arm(
                f"{key}_beta{_fmt_number(beta)}",
                prior,
                beta,
                0.0,
                "mmd",
                dict(options),
                label=f"{label}, β={_fmt_number(beta)}",
                group=key,
            )
            for key, label, prior, options in _INDEPENDENCE_PRIORS
            for beta in s["betas"]
        )
        evaluation = dict(s["evaluation"])
    else:
        if scale != "smoke" and _fashion_mnist_present(data_root):
            dataset, data_options = "fashion-mnist", {}
        else:
            dataset = "shapes"
            data_options = {"subsample": dict(_STAND_IN_SUBSAMPLE[scale]), "progress": False}
            if scale == "smoke":
                why = "which the smoke scale always uses"
            else:
                where = f"in {data_root}/FashionMNIST/raw" if data_root else "(no --data-root given)"
                why = f"because Fashion-MNIST was not found {where}"
            stand_in = (
                "the procedural shapes resized to 32×32 (class = shape: square, ellipse, heart; a random "
                f"80/20 train/test split), {why}"
            )
        run = RunConfig(
            dataset=dataset,
            data_root=data_root,
            data_options=data_options,
            latent_dim=50,
            network="dcgan32",
            network_options=dict(s["network_options"]),
            likelihood="laplace",
            likelihood_scale=0.1,
            epochs=s["epochs"][dataset],
            batch_size=s["batch_size"],
            lr=5e-4,
            checkpoint_every=1,
            device="auto",
            num_workers=4 if scale == "paper" and dataset == "fashion-mnist" else 0,
        )
        arms = tuple(
            Arm(
                f"gamma{_fmt_number(gamma)}_alpha{_fmt_number(alpha)}",
                "sparse",
                1.0,
                alpha,
                "mmd",
                {"gamma": gamma},
                label=f"γ={_fmt_number(gamma)}, α={_fmt_number(alpha)}",
                group=f"gamma{_fmt_number(gamma)}",
            )
            for gamma in (0.0, 0.8)
            for alpha in s["alphas"]
        )
        evaluation = dict(s["evaluation"])
    return ExperimentConfig(name, scale, run, arms, seeds, evaluation, stand_in, subset_steps).validate()


# ---------------------------------------------------------------------------------------------- data
def _take(dataset, index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels (or ground-truth factor indices) of the points ``index`` (1-D) of a data set."""
    from torch.utils.data import Subset, TensorDataset

    from pyro_decomp.data import FashionMNIST32, GroundTruthData

    index = torch.as_tensor(index, dtype=torch.long)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0][index], dataset.tensors[1][index]
    if isinstance(dataset, Subset):
        return _take(dataset.dataset, torch.as_tensor(dataset.indices, dtype=torch.long)[index])
    if isinstance(dataset, GroundTruthData):
        return dataset.images_at(index), dataset.factors_from_index(index)
    if isinstance(dataset, FashionMNIST32):
        return dataset.transform(dataset.images[index]), dataset.targets[index]
    items = [dataset[int(i)] for i in index]
    return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.stack(
        [torch.as_tensor(b) for _, b in items]
    )


def _grid_subset(dataset, steps: Mapping[str, int]):
    """The points of a ground-truth data set whose factor indices are multiples of ``steps`` (a smaller
    complete grid), as a ``Subset`` whose items keep the full grid's factor indices."""
    from torch.utils.data import Subset

    unknown = sorted(set(steps) - set(dataset.factor_names))
    if unknown:
        raise ValueError(
            f"subset steps name unknown factors {unknown}; the factors are {dataset.factor_names}"
        )
    axes = [
        torch.arange(0, n, int(steps.get(name, 1)))
        for name, n in zip(dataset.factor_names, dataset.factor_sizes)
    ]
    grid = torch.cartesian_prod(*axes).reshape(-1, len(axes))
    return Subset(dataset, dataset.index_from_factors(grid).tolist())


def _shapes_at_32(run) -> Tuple[Any, Any]:
    """The stand-in for Fashion-MNIST: the shapes grid of ``run.data_options`` downsampled to 32×32 by 2×2
    averaging (grey levels in {0, ¼, ½, ¾, 1}), clamped to [1e-6, 1 − 1e-6] like Fashion-MNIST, labelled by
    shape, and split at random (seed 0) into 80% training and 20% test points."""
    from torch.utils.data import TensorDataset

    from pyro_decomp.data import Shapes

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
_RESUME_IGNORED = ("epochs", "device", "num_workers")


def _train_run(config: ExperimentConfig, arm: Arm, seed: int, run_dir: Path, data, progress: bool):
    """Build and train one run in ``run_dir``; a finished or interrupted run of the same configuration
    found there (its checkpoint) is resumed instead of retrained.

    :returns: ``(vae, train_set, test_set, seconds)``.
    """
    import pyro

    from pyro_decomp import training

    cfg = config.run_config(arm, seed).resolved()
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae, elbo, train_set, test_set = training.build(cfg, data=data)
    if config.subset_steps:
        train_set = test_set = _grid_subset(train_set, config.subset_steps)
    trainer = training.Trainer(vae, elbo, train_set, cfg, str(run_dir), progress=progress)
    start = time.perf_counter()
    checkpoint = run_dir / training.CHECKPOINT_NAME
    if checkpoint.exists():
        state = training.load_checkpoint(str(checkpoint))
        saved, now = state.get("config", {}), cfg.to_dict()
        same = {k: v for k, v in saved.items() if k not in _RESUME_IGNORED} == {
            k: v for k, v in now.items() if k not in _RESUME_IGNORED
        }
        if same and int(state["epoch"]) <= cfg.epochs:  # else: a different run, trained afresh over it
            trainer.restore()
    if trainer.epoch < cfg.epochs:
        trainer.fit(cfg.epochs)
    seconds = time.perf_counter() - start
    trainer.vae.eval()
    return trainer.vae, train_set, test_set, seconds


# ---------------------------------------------------------------------------------------------- evaluation
def _device(vae) -> torch.device:
    return next((p.device for p in vae.parameters()), torch.device("cpu"))


@torch.no_grad()
def _reconstruction(vae, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    """E_{q(z|x)}[log p(x|z)] per point ``(B,)``, by ``num_samples`` draws of z (nats)."""
    q = vae.encoder_distribution(x)
    z = q.sample((num_samples,))
    return vae.likelihood(vae.decoder(z), x.dim() - 1).log_prob(x).mean(0)


@torch.no_grad()
def _encode_in_chunks(vae, dataset, index: torch.Tensor, chunk: int = 1024):
    """Encoder means of the points ``index`` and their labels or factors, in chunks (bounded memory)."""
    device, locs, labels = _device(vae), [], []
    for start in range(0, len(index), chunk):
        x, y = _take(dataset, index[start : start + chunk])
        locs.append(vae.encoder(x.to(device))[0].cpu())
        labels.append(y)
    return torch.cat(locs), torch.cat(labels)


@torch.no_grad()
def _mean_reconstruction(vae, dataset, index: torch.Tensor, chunk: int = 512) -> float:
    device, total = _device(vae), 0.0
    for start in range(0, len(index), chunk):
        x, _ = _take(dataset, index[start : start + chunk])
        total += float(_reconstruction(vae, x.to(device)).sum())
    return total / len(index)


def _subset_index(n: int, size: Optional[int], generator: torch.Generator) -> torch.Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:size].sort().values


def _mixture_locations(vae) -> torch.Tensor:
    locs = getattr(vae.prior, "locs", None)
    if locs is None:
        raise ValueError(
            "the clustering experiment needs a mixture prior with component locations (MixturePrior), got "
            f"{type(vae.prior).__name__}"
        )
    return locs.detach()


def _evaluate_clustering(config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str):
    from pyro_decomp import metrics, plots

    ev = config.evaluation
    x, y = test_set.tensors[0].to(_device(vae)), test_set.tensors[1]
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
    from pyro_decomp import metrics

    ev = config.evaluation
    index = _subset_index(len(test_set), ev["eval_points"], generator)
    codes, factors = _encode_in_chunks(vae, test_set, index)
    votes = {"num_votes": ev["num_votes"], "votes_size": ev["votes_size"]}
    if arm.prior == "student-t":
        # as the paper: each coordinate through the prior's CDF and the normal quantile before scoring
        transform = metrics.prior_cdf_transform(vae.prior_distribution())
        mapped = transform(codes.to(_device(vae))).cpu()
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
    recon_index = _subset_index(len(test_set), ev["recon_points"], generator)
    results["reconstruction_error"] = -_mean_reconstruction(vae, test_set, recon_index)
    return results, {}


def _evaluate_sparsity(config, arm, vae, train_set, test_set, generator, figures: Optional[Path], tag: str):
    from pyro_decomp import metrics, plots
    from pyro_decomp.divergences import build_divergence

    ev = config.evaluation
    n = len(test_set)
    index = _subset_index(n, ev["eval_points"], generator)
    codes, labels = _encode_in_chunks(vae, test_set, index)
    results = {"hoyer": metrics.hoyer_sparsity(codes)}
    results["reconstruction"] = _mean_reconstruction(
        vae, test_set, _subset_index(n, ev["recon_points"], generator)
    )
    device = _device(vae)
    x_iwae, _ = _take(test_set, _subset_index(n, ev["iwae_points"], generator))
    with torch.no_grad():
        iwae = metrics.iwae_log_likelihood(
            vae, x_iwae.to(device), num_samples=ev["iwae_samples"], batch_size=max(ev["iwae_samples"], 2000)
        )
    results["iwae"] = float(iwae.mean())
    x_div, _ = _take(test_set, _subset_index(n, ev["divergence_points"], generator))
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
        from pyro_decomp.data import SHAPE_NAMES

        names = SHAPE_NAMES
    if figures is None:
        return results, {}
    paths = {
        "magnitude": plots.plot_latent_magnitude(
            codes, labels, figures / f"{tag}_magnitude.png", class_names=names
        ),
    }
    return results, paths


_EVALUATORS = {
    "clustering": _evaluate_clustering,
    "independence": _evaluate_independence,
    "sparsity": _evaluate_sparsity,
}

# Table columns per experiment: (metric key, header, format, direction of "better").
_COLUMNS = {
    "clustering": (
        ("ari", "ARI (clusters vs arms) ↑", "{:.3f}"),
        ("inclusive_kl", "held-out KL(p‖q) ↓", "{:.3f}"),
        ("mmd", "held-out MMD ↓", "{:.4f}"),
        ("mutual_information", "I(x; z) (nats)", "{:.2f}"),
        ("reconstruction", "E log p(x|z) ↑", "{:.3f}"),
    ),
    "independence": (
        ("disentanglement", "disentanglement ↑", "{:.3f}"),
        ("mig", "MIG ↑", "{:.3f}"),
        ("reconstruction_error", "−E log p(x|z) (nats/image) ↓", "{:.1f}"),
    ),
    "sparsity": (
        ("hoyer", "Hoyer sparsity ↑", "{:.3f}"),
        ("reconstruction", "E log p(x|z) (nats/image) ↑", "{:.1f}"),
        ("iwae", "IWAE log p(x) ↑", "{:.1f}"),
        ("divergence", "held-out MMD D̂ ↓", "{:.4f}"),
    ),
}

_CLAIMS = {
    "clustering": (
        "With the 4-component mixture prior, the α term (inclusive KL, β = 0) — not the β term alone — makes "
        "the aggregate encoding q(z) cluster by pinwheel arm (Mathieu et al., 2019, §5.2, Fig. 4)."
    ),
    "independence": (
        "Breaking the rotation symmetry of the isotropic Gaussian prior — an anisotropic Gaussian or a "
        "Student-t — improves axis-aligned disentanglement at little cost in reconstruction (§5.1, Fig. 3)."
    ),
    "sparsity": (
        "A sparse (spike-and-slab, γ = 0.8) prior with α > 0 gives sparser codes than the sparse prior alone "
        "(α = 0) or α alone (γ = 0), at a modest cost in likelihood (§5.3, Fig. 5)."
    ),
}


# ---------------------------------------------------------------------------------------------- summaries
def _values(result: Dict[str, Any], arm: str, key: str) -> List[float]:
    return [r["metrics"][key] for r in result["runs"] if r["arm"] == arm and key in r["metrics"]]


def _mean_sd(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    if not values:
        raise ValueError("no values to summarise")
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(values) > 1 else None)


def _cell(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "–"
    mean, sd = _mean_sd(values)
    if not math.isfinite(mean):
        return str(mean)
    return fmt.format(mean) if sd is None else f"{fmt.format(mean)} ± {fmt.format(sd)}"


def _difference(a: Sequence[float], b: Sequence[float]) -> Tuple[float, Optional[float]]:
    """mean(a) − mean(b) and its standard error (None unless both have at least 2 values)."""
    ma, sa = _mean_sd(a)
    mb, sb = _mean_sd(b)
    if sa is None or sb is None:
        return ma - mb, None
    return ma - mb, math.sqrt(sa**2 / len(a) + sb**2 / len(b))


def _verdict_clustering(result) -> Dict[str, str]:
    alpha, beta = _values(result, "beta0_alpha1", "ari"), _values(result, "beta1_alpha0", "ari")
    diff, se = _difference(alpha, beta)
    kl_a, kl_b = (
        _values(result, "beta0_alpha1", "inclusive_kl"),
        _values(result, "beta1_alpha0", "inclusive_kl"),
    )
    text = (
        f"ARI {_mean_sd(alpha)[0]:.3f} with (β=0, α=1) against {_mean_sd(beta)[0]:.3f} with (β=1, α=0): "
        f"difference {diff:+.3f}"
        + (f" (standard error {se:.3f}, {len(alpha)} seeds)" if se is not None else "")
        + f"; held-out KL(p‖q) {_mean_sd(kl_a)[0]:.3f} against {_mean_sd(kl_b)[0]:.3f}."
    )
    if se is None:
        status = "held (one seed: no spread)" if diff > 0 else "did not hold"
    else:
        status = "held" if diff > 2 * se else "did not hold"
    rule = (
        "Rule: the (β=0, α=1) arm clusters better, with an ARI higher by more than 2 standard errors of the "
        "difference (by any margin with one seed)."
    )
    return {"status": status, "evidence": text, "rule": rule}


def _verdict_independence(result) -> Dict[str, str]:
    arms = {a["name"]: a for a in result["arms"]}
    betas = sorted({a["beta"] for a in arms.values()})
    groups = [g for g in dict.fromkeys(a["group"] for a in arms.values()) if g != "iso"]

    def arm_name(group, beta):
        return next(n for n, a in arms.items() if a["group"] == group and a["beta"] == beta)

    lines, best = [], None
    for group in groups:
        wins, costs = 0, []
        for beta in betas:
            score = _mean_sd(_values(result, arm_name(group, beta), "disentanglement"))[0]
            iso = _mean_sd(_values(result, arm_name("iso", beta), "disentanglement"))[0]
            wins += score > iso
            err = _mean_sd(_values(result, arm_name(group, beta), "reconstruction_error"))[0]
            iso_err = _mean_sd(_values(result, arm_name("iso", beta), "reconstruction_error"))[0]
            costs.append((err - iso_err) / abs(iso_err))
        cost = sum(costs) / len(costs)
        lines.append(
            f"{group}: higher disentanglement than isotropic at {wins}/{len(betas)} β values, "
            f"reconstruction error {100 * cost:+.1f}% on average"
        )
        if wins * 2 > len(betas) and (best is None or cost < best[1]):
            best = (group, cost)
    if best is None:
        status = "did not hold"
    elif best[1] <= 0.10:
        status = "held"
    else:
        status = "partly held (better disentanglement, but more than 10% worse reconstruction)"
    rule = (
        "Rule: some non-isotropic prior scores higher mean disentanglement than the isotropic prior at the "
        "same β for a majority of the β values, with a mean reconstruction error no more than 10% higher."
    )
    return {"status": status, "evidence": "; ".join(lines) + ".", "rule": rule}


def _verdict_sparsity(result) -> Dict[str, str]:
    arms = {a["name"]: a for a in result["arms"]}

    def hoyer(name):
        return _mean_sd(_values(result, name, "hoyer"))[0]

    sparse = [n for n, a in arms.items() if a["prior_options"].get("gamma") == 0.8]
    dense = [n for n, a in arms.items() if a["prior_options"].get("gamma") == 0.0]
    sparse_alpha = [n for n in sparse if arms[n]["alpha"] > 0]
    sparse_zero = [n for n in sparse if arms[n]["alpha"] == 0]
    best = max(sparse_alpha, key=hoyer)
    rivals = sparse_zero + dense
    rival = max(rivals, key=hoyer)
    baseline = next(n for n in dense if arms[n]["alpha"] == 0)
    cost = _mean_sd(_values(result, best, "iwae"))[0] - _mean_sd(_values(result, baseline, "iwae"))[0]
    text = (
        f"Hoyer sparsity {hoyer(best):.3f} with {arms[best]['label']} against at most {hoyer(rival):.3f} "
        f"among the sparse prior alone and α alone (best of those: {arms[rival]['label']}); IWAE "
        f"log-likelihood {cost:+.1f} nats per image against {arms[baseline]['label']}."
    )
    status = "held" if hoyer(best) > hoyer(rival) else "did not hold"
    rule = (
        "Rule: the best γ=0.8, α>0 arm has a higher mean Hoyer sparsity than every γ=0.8, α=0 and every "
        "γ=0 arm (the likelihood cost is reported, not judged)."
    )
    return {"status": status, "evidence": text, "rule": rule}


_VERDICTS = {
    "clustering": _verdict_clustering,
    "independence": _verdict_independence,
    "sparsity": _verdict_sparsity,
}


# ---------------------------------------------------------------------------------------------- runs
def _summary_figures(
    config: ExperimentConfig, result: Dict[str, Any], figures: Path, kept: Mapping[str, Tuple[Any, Any]]
) -> List[Dict[str, str]]:
    """The experiment's summary figures and the per-run figures the report shows (first seed). ``kept``:
    the first seed's ``(vae, evaluation set)`` of each arm, for the figures drawn only now (traversals)."""
    from pyro_decomp import plots

    arms = {a["name"]: a for a in result["arms"]}
    out = []
    if config.name == "independence":
        points = []
        for arm in result["arms"]:
            dis, err = (
                _values(result, arm["name"], "disentanglement"),
                _values(result, arm["name"], "reconstruction_error"),
            )
            points.append(
                {
                    "prior": arm["group"],
                    "beta": _fmt_number(arm["beta"]),
                    "reconstruction error": _mean_sd(err)[0],
                    "disentanglement": _mean_sd(dis)[0],
                }
            )
        path = plots.plot_disentanglement_vs_reconstruction(
            points, figures / "disentanglement_vs_reconstruction.png", x="reconstruction error"
        )
        out.append(
            {"path": str(path), "caption": "disentanglement against reconstruction error (means over seeds)"}
        )
    elif config.name == "sparsity":
        points = []
        for arm in result["arms"]:
            points.append(
                {
                    "gamma": _fmt_number(arm["prior_options"]["gamma"]),
                    "alpha": _fmt_number(arm["alpha"]),
                    "IWAE log p(x)": _mean_sd(_values(result, arm["name"], "iwae"))[0],
                    "Hoyer sparsity": _mean_sd(_values(result, arm["name"], "hoyer"))[0],
                }
            )
        path = plots.plot_disentanglement_vs_reconstruction(
            points,
            figures / "sparsity_vs_likelihood.png",
            x="IWAE log p(x)",
            y="Hoyer sparsity",
            group="gamma",
            label="alpha",
        )
        out.append(
            {"path": str(path), "caption": "Hoyer sparsity against IWAE log-likelihood (means over seeds)"}
        )
    first = config.seeds[0]
    by_run = {(r["arm"], r["seed"]): r for r in result["runs"]}
    if config.name == "independence":
        shown = []
        for group in dict.fromkeys(a["group"] for a in arms.values()):
            members = [n for n, a in arms.items() if a["group"] == group]
            shown.append(max(members, key=lambda n: _mean_sd(_values(result, n, "disentanglement"))[0]))
        kinds = ("traversals",)
        values = torch.linspace(-3.0, 3.0, 9)
        for name in shown:
            vae, data = kept[name]
            index = _subset_index(len(data), 1000, torch.Generator().manual_seed(0))
            base = _encode_in_chunks(vae, data, index)[0].mean(0)  # traverse around the mean code
            path = plots.plot_traversals(
                plots.latent_traversal(vae, z=base, values=values),
                figures / f"{name}_seed{first}_traversals.png",
                values=values,
            )
            by_run[(name, first)]["figures"]["traversals"] = str(path)
    else:
        shown, kinds = list(arms), ("density", "reconstructions", "magnitude")
    for name in shown:
        for kind in kinds:
            path = by_run[(name, first)]["figures"].get(kind)
            if path is not None:
                what = {
                    "density": "q(z) against p(z)",
                    "reconstructions": "held-out points and reconstructions",
                    "magnitude": "mean |z_d| per class",
                    "traversals": "latent traversals",
                }[kind]
                best = " (its best β)" if config.name == "independence" else ""
                out.append({"path": path, "caption": f"{arms[name]['label']}{best}, seed {first}: {what}"})
    return out


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
    import pyro

    from pyro_decomp import plots

    config.validate()
    log = log or (lambda line: None)
    root = Path(out) / config.name
    figures = root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    data = None
    if config.name == "sparsity" and config.stand_in:
        data = _shapes_at_32(config.run.resolved())
    result: Dict[str, Any] = {
        "experiment": config.name,
        "scale": config.scale,
        "claim": _CLAIMS[config.name],
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
            vae, train_set, test_set, wall = _train_run(config, arm, seed, run_dir, data, progress)
            # the training time of the run's epochs, from its log (also right for a resumed run)
            train_seconds = sum(r.get("seconds", 0.0) for r in _read_jsonl(run_dir / "metrics.jsonl"))
            t0 = time.perf_counter()
            pyro.set_rng_seed(10_000 + seed)  # evaluation draws are reproducible, also for a resumed run
            generator = torch.Generator().manual_seed(10_000 + seed)
            metrics, paths = _EVALUATORS[config.name](
                config, arm, vae, train_set, test_set, generator, figures if first else None, tag
            )
            if first:
                log_records = _read_jsonl(run_dir / "metrics.jsonl")
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
    result["figures"] = _summary_figures(config, result, figures, kept)
    try:
        result["verdict"] = _VERDICTS[config.name](result)
    except (StopIteration, ValueError):  # an arm that the comparison needs is not in this configuration
        result["verdict"] = {
            "status": "not assessed",
            "evidence": "This configuration lacks arms that the comparison with the paper's claim needs.",
            "rule": "",
        }
    return result


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- report
def _command(experiment: str, scale: str, out, seeds, data_root, threads=None) -> str:
    parts = ["pyro-decomp", "reproduce", experiment, "--scale", scale, "--out", str(out)]
    if seeds is not None:
        parts += ["--seeds", *[str(s) for s in seeds]]
    if data_root is not None:
        parts += ["--data-root", str(data_root)]
    if threads is not None:
        parts += ["--threads", str(threads)]
    return " ".join(shlex.quote(p) for p in parts)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """The GitHub-style anchor of a markdown heading."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


_TITLES = {
    "clustering": "Clustering: pinwheel with a mixture prior",
    "independence": "Independence: axis-aligned disentanglement on the dSprites grid",
    "sparsity": "Sparsity: a spike-and-slab prior",
}


def _section(result: Dict[str, Any], out: Path) -> str:
    name = result["experiment"]
    settings = result["settings"]
    lines = [f"## {_TITLES[name]}", "", f"**The paper's claim.** {result['claim']}", ""]
    verdict = result["verdict"]
    lines += [
        f"**At the `{result['scale']}` scale: {verdict['status']}.** {verdict['evidence']} {verdict['rule']}",
        "",
    ]
    if result["scale"] == "smoke":
        lines += [
            "The `smoke` scale checks that everything runs; its numbers are not evidence either way.",
            "",
        ]
    data = settings["dataset"]
    if result["stand_in"]:
        lines += [f"**Data.** Not the paper's: {result['stand_in']}.", ""]
    else:
        lines += [f"**Data.** `{data}` with options `{json.dumps(settings['data_options'])}`.", ""]
    shared = [
        ("data set", f"`{data}` {json.dumps(settings['data_options'])}"),
        ("latent dimensions", settings["latent_dim"]),
        ("networks", f"`{settings['network']}` {json.dumps(settings['network_options'])}"),
        ("likelihood", f"{settings['likelihood']} (scale {settings['likelihood_scale']})"),
        (
            "epochs / batch size / learning rate",
            f"{settings['epochs']} / {settings['batch_size']} / {settings['lr']} (Adam, amsgrad)",
        ),
        ("seeds", ", ".join(str(s) for s in settings["seeds"])),
        ("evaluation", json.dumps(settings["evaluation"])),
    ]
    if "subset_steps" in settings:
        shared.append(("factor grid subset (every k-th value)", json.dumps(settings["subset_steps"])))
    lines += [_markdown_table(["setting", "value"], shared), ""]
    columns = _COLUMNS[name]
    header = ["arm", "prior", "β", "α", "D"] + [c[1] for c in columns] + ["train s / run"]
    rows = []
    for arm in result["arms"]:
        options = ", ".join(f"{k}={v}" for k, v in arm["prior_options"].items())
        seconds = [r["train_seconds"] for r in result["runs"] if r["arm"] == arm["name"]]
        rows.append(
            [
                arm["label"],
                f"{arm['prior']}" + (f" ({options})" if options else ""),
                _fmt_number(arm["beta"]),
                _fmt_number(arm["alpha"]),
                arm["divergence"] if arm["alpha"] > 0 else "–",
            ]
            + [_cell(_values(result, arm["name"], key), fmt) for key, _, fmt in columns]
            + [f"{sum(seconds) / len(seconds):.1f}"]
        )
    lines += [
        f"Mean ± standard deviation over {len(settings['seeds'])} seed(s) (a single value: one seed).",
        "",
        _markdown_table(header, rows),
        "",
    ]
    if name == "independence" and any(
        "disentanglement_untransformed" in r["metrics"] for r in result["runs"]
    ):
        lines += [
            "Student-t codes are scored after mapping each coordinate through the prior's CDF and the normal "
            "quantile, as the paper does; without that map: "
            + ", ".join(
                f"{a['label']} {_cell(_values(result, a['name'], 'disentanglement_untransformed'), '{:.3f}')}"
                for a in result["arms"]
                if a["prior"] == "student-t"
            )
            + ".",
            "",
        ]
    for figure in result["figures"]:
        rel = os.path.relpath(figure["path"], out)
        lines += [f"![{figure['caption']}]({rel})", f"*{figure['caption']}*", ""]
    curves = [r for r in result["runs"] if "curves" in r["figures"]]
    if curves:
        lines += [
            "Training curves: "
            + ", ".join(
                f"[{r['arm']} seed {r['seed']}]({os.path.relpath(r['figures']['curves'], out)})"
                for r in curves
            )
            + ".",
            "",
        ]
    minutes = result["seconds"] / 60
    lines += [
        f"Wall time: {minutes:.1f} minutes for {len(result['runs'])} runs (training and evaluation).",
        "",
        "Regenerate with:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_report(results: Sequence[Dict[str, Any]], out, command: Optional[str] = None) -> str:
    """Write ``out/report.md`` (and ``out/results.json``) from the results of :func:`run_experiment`.

    :param command: the command that regenerates the whole report (written at its top).
    :returns: the path of ``report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from pyro_decomp import __version__

    scales = sorted({r["scale"] for r in results})
    lines = [
        "# Disentangling Disentanglement: reproduction report",
        "",
        f"pyro_decomp {__version__}; scale {', '.join(f'`{s}`' for s in scales)}; written "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} on {torch.get_num_threads()} CPU thread(s)"
        + (f" and {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + ".",
        "",
        "Mathieu, Rainforth, Siddharth & Teh, *Disentangling Disentanglement in Variational Autoencoders*, "
        "ICML 2019, make three claims about decomposition: one experiment each below, with the settings "
        "used, the measurements, the figures and whether the claim held at this scale. The objective is "
        "L = E_q[log p(x|z)] − β KL(q(z|x) ‖ p(z)) − α D(q(z), p(z)) per data point.",
        "",
    ]
    if command:
        lines += ["Regenerate this report with:", "", "```bash", command, "```", ""]
    lines += [
        _markdown_table(
            ["experiment", "claim at this scale", "runs", "minutes"],
            [
                [
                    f"[{r['experiment']}](#{_anchor(_TITLES[r['experiment']])})",
                    r["verdict"]["status"],
                    len(r["runs"]),
                    f"{r['seconds'] / 60:.1f}",
                ]
                for r in results
            ],
        ),
        "",
    ]
    for result in results:
        lines.append(_section(result, out))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / ".gitignore").write_text(
        "# the training runs (checkpoints and logs) are large and regenerated by the command in report.md\n"
        "*/runs/\n"
    )
    (out / "results.json").write_text(json.dumps(list(results), indent=2, sort_keys=True))
    return str(path)


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
        result["command"] = _command(config.name, scale, out, seeds, data_root, threads)
        results.append(result)
    return write_report(results, out, command=_command(experiment, scale, out, seeds, data_root, threads))


# ---------------------------------------------------------------------------------------------- CLI
def _reproduce_command(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> int:
    """``pyro-decomp reproduce``. Exit status: 0 when the report is written, 2 for a bad setting (through
    ``parser.error``), 130 when interrupted (finished and interrupted runs keep their checkpoints, and the
    same command resumes them)."""
    from pyro_decomp.training import TrainingInterrupted

    try:
        path = reproduce(
            args.experiment,
            args.scale,
            args.out,
            seeds=args.seeds,
            data_root=args.data_root,
            progress=args.progress,
            threads=args.threads,
        )
    except (ValueError, FileNotFoundError) as e:
        if parser is None:
            raise
        parser.error(str(e))
    except TrainingInterrupted as e:
        print(f"{e}; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"report written to {path}")
    return 0


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to an ``argparse`` sub-parser set (the ``pyro-decomp`` command line)."""
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiments and write a markdown report",
        description="Run the paper's clustering, independence and sparsity experiments at a scale and write "
        "OUT/report.md with tables, figures and whether each claim held.",
    )
    parser.add_argument("experiment", choices=EXPERIMENTS + ("all",), help="which experiment")
    parser.add_argument(
        "--scale",
        choices=SCALES,
        required=True,
        help="smoke: seconds (a plumbing check); cpu: under an hour per experiment on one core; paper: "
        "the paper's settings (for a GPU)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="training seeds (default: the scale's)"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="directory of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz and FashionMNIST/raw/ (without "
        "them the procedural shapes stand in)",
    )
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own; 1 is best on a shared CPU)",
    )
    parser.set_defaults(func=_reproduce_command, subparser=parser)
    return parser
